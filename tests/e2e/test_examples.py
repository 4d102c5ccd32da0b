"""examples/ against the real thing: the apiserver accepts every object, Prometheus the config.

Every example object is created with server-side dry run (``dryRun=All``), in a namespace of
the test's choosing (no example names one, so ``kubectl apply -n NS`` works anywhere), on the
session kube-apiserver with the ConsulDiscovery CRD and prometheus-operator's CRDs installed,
so the structural schemas, the StatefulSet validation and the Prometheus CR schema all judge
them.
The file_sd example's prometheus.yml then runs in a real Prometheus v3, reading shard files
named and filled exactly as the operator fills its ConfigMaps; the HTTP SD example's runs
against a stand-in endpoint that answers its path and token with the operator's rendering.

Limits: dry run stores nothing, so no controller acts on the objects; the Prometheus test
rewrites only the mount path of the file_sd glob (to a temporary directory).
"""

from __future__ import annotations

import http.server
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from consul_sd.api.spec import parse_spec
from consul_sd.outputs.render import render_file_sd
from consul_sd.outputs.shards import config_map_shards
from consul_sd.targets import Target
from tests.e2e.operator_harness import CRD_FILE, eventually
from tests.support.components import ControlPlane, Prometheus, apply_crds

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# kind -> collection path (every example object is namespaced and names no namespace).
COLLECTIONS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "ConsulDiscovery": "/apis/consul-sd.io/v1alpha1/namespaces/{ns}/consuldiscoveries",
    "Prometheus": "/apis/monitoring.coreos.com/v1/namespaces/{ns}/prometheuses",
}


def example_documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(EXAMPLES.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def install_crd(control_plane: ControlPlane) -> None:
    apply_crds(control_plane, [yaml.safe_load(CRD_FILE.read_text())], field_manager="e2e-examples")


def test_the_apiserver_accepts_every_example_object_in_a_namespace_of_the_users_choice(
    control_plane: ControlPlane, monitoring_crds: list[str]
) -> None:
    install_crd(control_plane)
    namespace = f"examples-{uuid.uuid4().hex[:6]}"  # as `kubectl apply -n <namespace> -f`
    answer = control_plane.request(
        "POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}}
    )
    assert answer.status == 201, answer.text
    checked = []
    for document in example_documents():
        path = COLLECTIONS[document["kind"]].format(ns=namespace)
        answer = control_plane.request(
            "POST", f"{path}?dryRun=All&fieldValidation=Strict", body=document
        )
        assert answer.status in (200, 201), (document["kind"], answer.text)
        assert answer.json()["metadata"]["namespace"] == namespace
        checked.append(document["kind"])
    assert {"ConsulDiscovery", "StatefulSet", "Prometheus", "ConfigMap"} <= set(checked)


def test_the_example_prometheus_config_scrapes_what_the_operator_writes(
    prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> None:
    documents = example_documents()
    config_map = next(
        d
        for d in documents
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "prometheus-config"
    )
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    job = config["scrape_configs"][0]
    (pattern,) = job["file_sd_configs"][0]["files"]
    shards_dir = tmp_path / "consul-sd"
    shards_dir.mkdir()
    job["file_sd_configs"][0]["files"] = [str(shards_dir / Path(pattern).name)]
    web = next(
        d for d in documents if d["kind"] == "ConsulDiscovery" and d["metadata"]["name"] == "web"
    )
    output = parse_spec(web["spec"], require_output=True).output
    assert output is not None
    assert output.config_map is not None
    groups = {
        f"svc-{i}": (
            Target.of(
                f"127.0.0.1:{1 + i}",
                {"__meta_consul_node": "node-1", "__meta_consul_service": f"svc-{i}"},
            ),
        )
        for i in range(5)
    }
    for shard in config_map_shards(groups, output=output.config_map):
        (shards_dir / shard.key).write_bytes(shard.data)
    prometheus = prometheus_factory(config)

    def discovered() -> list[dict[str, Any]]:
        targets = [t for t in prometheus.targets() if t["scrapePool"] == job["job_name"]]
        assert len(targets) == 5, targets
        return targets

    targets = eventually(discovered, timeout=60, what="the example job's targets")
    assert {t["labels"]["service"] for t in targets} == {f"svc-{i}" for i in range(5)}
    assert {t["labels"]["node"] for t in targets} == {"node-1"}


class _HTTPSDServer:
    """A stand-in for the operator's endpoint: one path, one token, a fixed http_sd body."""

    def __init__(self, *, path: str, token: str, body: bytes) -> None:
        expected = (path, f"Bearer {token}")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = (self.path, self.headers.get("Authorization")) == expected
                self.send_response(200 if ok else 403)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body if ok else b"")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_example_http_sd_config_fetches_the_served_targets_with_its_token(
    prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> None:
    documents = example_documents()
    config_map = next(
        d
        for d in documents
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "prometheus-http-sd-config"
    )
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    job = config["scrape_configs"][0]
    (http_sd,) = job["http_sd_configs"]
    path = urllib.parse.urlsplit(http_sd["url"]).path
    token_file = tmp_path / "token"
    token_file.write_text("example-token\n")
    groups = {
        f"svc-{i}": (
            Target.of(
                f"127.0.0.1:{1 + i}",
                {"__meta_consul_node": "node-1", "__meta_consul_service": f"svc-{i}"},
            ),
        )
        for i in range(4)
    }
    server = _HTTPSDServer(path=path, token="example-token", body=render_file_sd(groups))
    try:
        # Only where the endpoint is and where the Secret is mounted change.
        http_sd["url"] = f"http://127.0.0.1:{server.port}{path}"
        http_sd["authorization"]["credentials_file"] = str(token_file)
        http_sd["refresh_interval"] = "1s"
        prometheus = prometheus_factory(config)

        def discovered() -> list[dict[str, Any]]:
            targets = [t for t in prometheus.targets() if t["scrapePool"] == job["job_name"]]
            assert len(targets) == 4, targets
            return targets

        targets = eventually(discovered, timeout=60, what="the example job's targets")
    finally:
        server.close()
    assert {t["labels"]["job"] for t in targets} == {f"svc-{i}" for i in range(4)}
    assert {t["labels"]["node"] for t in targets} == {"node-1"}
