"""examples/: every file parses, every ConsulDiscovery is valid, and the Prometheus side matches.

Offline: each ConsulDiscovery goes through the operator's own validation
(``parse_spec(..., require_output=True)``); the Prometheus snippets are checked against the CRs
they serve (the projected shards, the file_sd glob against the keys the operator writes, the
Prometheus CR's selectors against the ScrapeConfig labels). tests/e2e/test_examples.py has the
apiserver and a real Prometheus accept them.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from consul_sd.api.spec import ConsulDiscoverySpec, parse_spec
from consul_sd.cli import build_parser
from consul_sd.cli.discover import load_spec
from consul_sd.outputs.shards import (
    config_map_shards,
    http_sd_scrape_config_spec,
    http_sd_url,
    scrape_settings,
)
from consul_sd.targets import Target

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.rglob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def discoveries() -> dict[str, tuple[dict[str, Any], ConsulDiscoverySpec]]:
    found = {}
    for path in FILES:
        for doc in documents(path):
            if doc["kind"] == "ConsulDiscovery":
                found[doc["metadata"]["name"]] = (doc, parse_spec(doc["spec"], require_output=True))
    return found


def find(kind: str, name: str) -> dict[str, Any]:
    for path in FILES:
        for doc in documents(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in examples/")


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(EXAMPLES)) for p in FILES])
def test_every_example_parses_into_kubernetes_objects(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        assert doc["metadata"]["name"]


def test_every_example_consul_discovery_passes_the_operators_validation() -> None:
    found = discoveries()
    assert len(found) >= 4
    for doc, spec in found.values():
        assert doc["apiVersion"] == "consul-sd.io/v1alpha1"
        assert spec.output is not None


def test_the_examples_cover_every_mode_and_both_outputs() -> None:
    specs = [spec for _, spec in discoveries().values()]
    assert {spec.mode for spec in specs} == {"Polling", "Blocking", "Auto"}
    assert any(s.output and s.output.config_map for s in specs)
    assert any(s.output and s.output.scrape_config for s in specs)


def test_the_statefulset_mounts_every_possible_shard_optionally() -> None:
    _, spec = discoveries()["web"]
    assert spec.output is not None
    assert spec.output.config_map is not None
    output = spec.output.config_map
    statefulset = find("StatefulSet", "prometheus")
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    sources = volumes["consul-sd"]["projected"]["sources"]
    assert sources == [
        {"configMap": {"name": f"{output.name}-{i}", "optional": True}}
        for i in range(output.max_shards)
    ]
    mounts = statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert all("subPath" not in mount for mount in mounts)


def test_the_file_sd_glob_matches_the_keys_the_operator_writes_and_no_other() -> None:
    _, spec = discoveries()["web"]
    assert spec.output is not None
    assert spec.output.config_map is not None
    config = yaml.safe_load(find("ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    (job,) = config["scrape_configs"]
    (pattern,) = job["file_sd_configs"][0]["files"]
    mount = next(
        m["mountPath"]
        for m in find("StatefulSet", "prometheus")["spec"]["template"]["spec"]["containers"][0][
            "volumeMounts"
        ]
        if m["name"] == "consul-sd"
    )
    groups = {
        f"svc-{i}": (Target.of(f"10.0.0.{i}:9100", {"__meta_consul_service": f"svc-{i}"}),)
        for i in range(50)
    }
    shards = config_map_shards(groups, output=spec.output.config_map)
    assert shards
    for shard in shards:
        assert fnmatch.fnmatch(f"{mount}/{shard.key}", pattern), (shard.key, pattern)
    assert not fnmatch.fnmatch(f"{mount}/payments-targets-0.json", pattern)


def test_the_prometheus_cr_selects_the_example_scrape_configs_in_its_own_namespace() -> None:
    prometheus = find("Prometheus", "main")["spec"]
    # null: the ScrapeConfigs of the Prometheus object's own namespace, wherever it is applied.
    assert prometheus["scrapeConfigNamespaceSelector"] is None
    wanted = prometheus["scrapeConfigSelector"]["matchLabels"]
    selected = [
        name
        for name, (_, spec) in discoveries().items()
        if spec.output is not None
        and spec.output.scrape_config is not None
        and wanted.items() <= spec.output.scrape_config.labels.items()
    ]
    assert sorted(selected) == ["edge", "fleet", "platform"]


def test_the_http_sd_example_is_one_scrape_config_served_with_a_token() -> None:
    _, spec = discoveries()["fleet"]
    assert spec.output is not None
    assert spec.output.scrape_config is not None
    assert spec.output.scrape_config.targets_from == "HTTPSD"
    assert spec.output.http_sd_settings.authorization is not None


def test_the_http_sd_prometheus_config_fetches_the_example_cr_with_its_token_secret() -> None:
    _, spec = discoveries()["fleet"]
    assert spec.output is not None
    authorization = spec.output.http_sd_settings.authorization
    assert authorization is not None
    scrape = spec.output.scrape_config
    assert scrape is not None
    config = yaml.safe_load(
        find("ConfigMap", "prometheus-http-sd-config")["data"]["prometheus.yml"]
    )
    (job,) = config["scrape_configs"]
    (http_sd,) = job["http_sd_configs"]
    assert http_sd["url"].endswith("/targets/monitoring/fleet")
    assert http_sd["refresh_interval"] == spec.output.http_sd_settings.refresh_interval
    secret = authorization.secret_ref
    assert http_sd["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"/etc/prometheus/secrets/{secret.name}/{secret.key}",
    }
    # The same relabeling as the ScrapeConfig the operator writes for prometheus-operator.
    assert [(r["source_labels"], r["target_label"]) for r in job["relabel_configs"]] == [
        (r.source_labels, r.target_label) for r in scrape.relabelings
    ]


def test_no_example_carries_a_secret_the_user_creates() -> None:
    """README step 3 creates the token Secret; applying an example must never replace it."""
    kinds = {doc["kind"] for path in FILES for doc in documents(path)}
    assert "Secret" not in kinds


def test_no_example_names_a_namespace_so_kubectl_apply_n_works_anywhere() -> None:
    for path in FILES:
        for doc in documents(path):
            assert doc["kind"] != "Namespace", path
            assert "namespace" not in doc["metadata"], (path, doc["metadata"])


def test_every_consul_discovery_example_is_a_valid_discover_spec_file() -> None:
    """``consul-sd discover --spec FILE`` takes each example file as it is."""
    files = [p for p in FILES if any(d["kind"] == "ConsulDiscovery" for d in documents(p))]
    assert len(files) >= 4
    for path in files:
        args = build_parser().parse_args(["discover", "--spec", str(path), "--once"])
        spec = load_spec(args)
        (expected,) = [d for d in documents(path) if d["kind"] == "ConsulDiscovery"]
        assert spec.consul.server == expected["spec"]["consul"]["server"]
        assert spec.mode == expected["spec"]["mode"]


def readme_yaml(section: str) -> list[Any]:
    """The YAML blocks of one README section, parsed."""
    text = (EXAMPLES.parent / "README.md").read_text()
    body = text.split(f"\n### {section}\n", 1)[1].split("\n#", 1)[0]
    return [yaml.safe_load(block.split("\n```", 1)[0]) for block in body.split("```yaml\n")[1:]]


def test_the_readmes_http_sd_scrape_config_is_what_the_operator_writes_for_its_spec() -> None:
    given, written = readme_yaml("Prometheus Operator at scale")
    spec = parse_spec({"consul": {"server": "c:8500"}, **given["spec"]}, require_output=True)
    assert spec.output is not None
    assert spec.output.scrape_config is not None
    url = http_sd_url(
        "http://consul-sd-operator-metrics.consul-sd.svc:9090",
        namespace="<namespace>",
        name="fleet",
    )
    settings = scrape_settings(spec.output.scrape_config)
    assert written["spec"] == http_sd_scrape_config_spec(
        settings, url=url, http_sd=spec.output.http_sd_settings
    )


def test_the_readmes_several_servers_job_is_the_examples() -> None:
    (readme,) = readme_yaml("One discovery for several Prometheus servers")
    config = yaml.safe_load(
        find("ConfigMap", "prometheus-http-sd-config")["data"]["prometheus.yml"]
    )
    (job,) = config["scrape_configs"]
    assert readme["scrape_configs"][0]["http_sd_configs"] == job["http_sd_configs"]
