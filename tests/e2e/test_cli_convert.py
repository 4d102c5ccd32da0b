"""``consul-sd convert``: the converted jobs give a real Prometheus the targets the originals did.

For every sample prometheus.yml (several jobs; several consul_sd_configs in one job; TLS with
client certificates and a token from a file against an ACL agent; relabelings on
``__meta_consul_*``), one Prometheus runs the original, a second one the converted jobs, fed by
the ``consul-sd discover --once`` commands the conversion printed. Each job's active targets
(final labels and scrape URL) and its count of dropped targets must be equal. Every service
address is 127.0.0.1 (closed ports) and the scrape interval an hour, so nothing leaves the host.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_cli_consul_env import ENV, TLSAgent, tls_agent  # noqa: F401 - the fixture
from tests.support.components import ConsulAgent, Prometheus

pytestmark = pytest.mark.e2e

Jobs = dict[str, tuple[list[tuple[str, str]], int]]


def register(agent: ConsulAgent, prefix: str) -> None:
    """web (2 instances, one canary), db, cache (prod, on a node with rack=r2)."""
    instances = [
        ("n1", "r1", f"{prefix}-web", ["prod"], {"team": "a"}, 1),
        ("n2", "r1", f"{prefix}-web", ["prod", "canary"], {"team": "a"}, 2),
        ("n1", "r1", f"{prefix}-db", ["prod", "sql"], {"team": "b"}, 3),
        ("n3", "r2", f"{prefix}-cache", ["prod"], {}, 4),
    ]
    for node, rack, service, tags, meta, port in instances:
        body = {
            "Node": f"{prefix}-{node}",
            "Address": "127.0.0.1",
            "NodeMeta": {"rack": rack},
            "Service": {
                "ID": f"{service}-{port}",
                "Service": service,
                "Tags": tags,
                "Meta": meta,
                "Port": port,
            },
        }
        answer = agent.request("PUT", "/v1/catalog/register", body=body)
        assert answer.status == 200, answer.text


def multi_job(server: str, p: str) -> dict[str, Any]:
    return {
        "scrape_configs": [
            {
                "job_name": "web",
                "metrics_path": "/m",
                "consul_sd_configs": [{"server": server, "services": [f"{p}-web"]}],
                "relabel_configs": [
                    {"source_labels": ["__meta_consul_node"], "target_label": "node"}
                ],
            },
            {
                "job_name": "tagged",
                "scrape_timeout": "5s",
                "consul_sd_configs": [
                    {"server": server, "tags": ["prod"], "refresh_interval": "5s"}
                ],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_consul_service"],
                        "regex": f"{p}-.*",
                        "action": "keep",
                    },
                    {"regex": "__meta_consul_service_metadata_(.+)", "action": "labelmap"},
                    {
                        "source_labels": ["__meta_consul_tags"],
                        "regex": ".*,canary,.*",
                        "action": "drop",
                    },
                ],
            },
        ]
    }


def several_in_one_job(server: str, p: str) -> dict[str, Any]:
    return {
        "scrape_configs": [
            {
                "job_name": "two",
                "consul_sd_configs": [
                    {"server": server, "services": [f"{p}-web"]},
                    {"server": server, "services": [f"{p}-db"], "tag_separator": ";"},
                ],
                "relabel_configs": [
                    {"source_labels": ["__meta_consul_tags"], "target_label": "tags"},
                    {"source_labels": ["__meta_consul_service_id"], "target_label": "sid"},
                ],
            }
        ]
    }


def tls_and_token_file(found: TLSAgent, p: str, token_file: Path) -> dict[str, Any]:
    files = found.files
    sd = {
        "server": found.https,
        "scheme": "https",
        # The read-only token may not read /v1/agent/self, where Prometheus takes the default.
        "datacenter": "dc1",
        "node_meta": {"rack": "r1"},
        "authorization": {"credentials_file": str(token_file)},
        "tls_config": {
            "ca_file": str(files["ca"]),
            "cert_file": str(files["client_cert"]),
            "key_file": str(files["client_key"]),
            "server_name": "consul.test",
        },
    }
    return {
        "scrape_configs": [
            {
                "job_name": "secure",
                "consul_sd_configs": [sd],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_consul_service"],
                        "regex": f"{p}-.*",
                        "action": "keep",
                    },
                    {"source_labels": ["__meta_consul_dc"], "target_label": "dc"},
                ],
            }
        ]
    }


def with_globals(config: dict[str, Any]) -> dict[str, Any]:
    return {"global": {"scrape_interval": "1h", "scrape_timeout": "10s"}, **config}


def jobs(prometheus: Prometheus) -> Jobs:
    """Per job: the sorted (labels, scrape URL) of its active targets, and how many it dropped."""
    active: dict[str, list[tuple[str, str]]] = {}
    for target in prometheus.targets("active"):
        labels = yaml.safe_dump(target["labels"], sort_keys=True)
        active.setdefault(target["scrapePool"], []).append((labels, target["scrapeUrl"]))
    dropped: dict[str, int] = {}
    for target in prometheus.targets("dropped"):
        pool = target["discoveredLabels"]["job"]
        dropped[pool] = dropped.get(pool, 0) + 1
    return {job: (sorted(found), dropped.get(job, 0)) for job, found in active.items()}


def convert_and_discover(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Run convert on ``config`` and every discover command it printed (with --once)."""
    source, converted = tmp_path / "prometheus.yml", tmp_path / "converted.yaml"
    source.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "consul_sd.cli", "convert", str(source)]
    command += ["--file-sd-dir", str(tmp_path / "sd"), "--spec-file", str(converted)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=60, check=True)
    converted.write_text(done.stdout)
    (tmp_path / "sd").mkdir()
    runs = [
        line[len("# run: ") :] for line in done.stdout.splitlines() if line.startswith("# run: ")
    ]
    assert runs, done.stdout
    for run in runs:
        argv = [sys.executable, "-m", "consul_sd.cli", *shlex.split(run)[1:], "--once"]
        ran = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60, check=False)
        assert ran.returncode == 0, ran.stderr
    replacement = list(yaml.safe_load_all(done.stdout))[-1]
    return with_globals(replacement)


def agree(original: Prometheus, converted: Prometheus, expected_jobs: set[str]) -> Jobs:
    """Wait (up to 60 s: discovery reaches the scrape manager every 5 s) until both agree."""
    deadline = time.monotonic() + 60
    while True:
        theirs, ours = jobs(original), jobs(converted)
        if set(theirs) == expected_jobs and theirs == ours:
            return ours
        if time.monotonic() > deadline:
            raise AssertionError(f"consul_sd: {theirs}\nconverted: {ours}")
        time.sleep(1)


@pytest.mark.parametrize("sample", [multi_job, several_in_one_job])
def test_converted_jobs_give_prometheus_the_same_targets(
    sample: Callable[[str, str], dict[str, Any]],
    consul_agent: ConsulAgent,
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    prefix = f"cv{uuid.uuid4().hex[:6]}"
    register(consul_agent, prefix)
    config = with_globals(sample(consul_agent.address, prefix))
    replacement = convert_and_discover(config, tmp_path)
    names = {job["job_name"] for job in config["scrape_configs"]}
    found = agree(prometheus_factory(config), prometheus_factory(replacement), names)
    assert all(targets for targets, _ in found.values())


def test_a_tls_job_with_a_token_file_converts_to_the_same_targets(
    tls_agent: TLSAgent,  # noqa: F811 - the imported fixture
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    prefix = f"cv{uuid.uuid4().hex[:6]}"
    register(tls_agent.agent, prefix)
    token_file = tmp_path / "token"
    token_file.write_text(tls_agent.token)
    config = with_globals(tls_and_token_file(tls_agent, prefix, token_file))
    replacement = convert_and_discover(config, tmp_path)
    found = agree(prometheus_factory(config), prometheus_factory(replacement), {"secure"})
    (targets, _) = found["secure"]
    assert len(targets) == 3  # web twice and db: rack r1 only
