"""The operator's HTTP SD endpoint on a real kube-apiserver + etcd, Consul played by the simulator.

One operator process (``--http-sd-url`` set as the chart sets it) serves, on its metrics port,
``/targets/<namespace>/<name>`` for a ConsulDiscovery that asks for HTTP SD, behind the bearer
token of a Secret in the CR's namespace, and writes the ScrapeConfig in the HTTP SD form. What a
client sees is checked over real HTTP: 200 with the discovered groups (gzip when asked), 401
without the token, 403 with another, 404 for an unknown CR and after the CR is deleted; and
prometheus-operator renders that ScrapeConfig into http_sd_configs with the Secret's token.
"""

from __future__ import annotations

import base64
import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.e2e.operator_harness import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    Simulator,
    condition,
    create_cr,
    create_prometheus_cr,
    eventually,
    get_cr,
    sample_cr,
)
from tests.support.components import ControlPlane

pytestmark = pytest.mark.e2e
BASE_URL = "http://consul-sd-operator-metrics.consul-sd.svc:9090"
TOKEN = "e2e-http-sd-token"


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane,
    consul_sd_crd: None,
    monitoring_crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    running = Operator(
        control_plane, tmp_path_factory.mktemp("operator"), "--http-sd-url", BASE_URL
    )
    yield running
    running.stop()


def fetch(
    operator: Operator, path: str, *, token: str | None = None, gzip_ok: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` on the operator's port: status, headers, body (never raises on 4xx/5xx)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if gzip_ok:
        headers["Accept-Encoding"] = "gzip"
    request = urllib.request.Request(
        f"http://127.0.0.1:{operator.metrics_port}{path}", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def create_token_secret(api: k8s.ApiClient, namespace: str) -> None:
    k8s.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "http-sd"},
            "data": {"token": base64.b64encode(TOKEN.encode()).decode()},
        },
    )


def http_sd_cr(name: str, *, server: str) -> dict[str, Any]:
    body = sample_cr(name, server=server)
    body["spec"]["output"] = {
        "httpSD": {
            "refreshInterval": "15s",
            "authorization": {"secretRef": {"name": "http-sd", "key": "token"}},
        },
        "scrapeConfig": {
            "name": name,
            "targetsFrom": "HTTPSD",
            "labels": {"prometheus": "main"},
            "scrapeInterval": "30s",
        },
    }
    return body


def served(operator: Operator, path: str) -> list[dict[str, Any]]:
    status, _, body = fetch(operator, path, token=TOKEN)
    assert status == 200, (status, body[:200])
    groups: list[dict[str, Any]] = json.loads(body)
    return groups


def test_a_cr_with_http_sd_is_served_behind_its_token_and_its_scrape_config_points_at_it(
    api: k8s.ApiClient,
    operator: Operator,
    namespace: str,
    simulator: Callable[..., Simulator],
) -> None:
    sim = simulator(services=6, instances=2)
    create_token_secret(api, namespace)
    path = f"/targets/{namespace}/fleet"
    create_cr(api, namespace, http_sd_cr("fleet", server=sim.address))
    groups = eventually(lambda: served(operator, path), timeout=60, what="the served targets")
    assert len(groups) == 12
    assert len({g["labels"]["__meta_consul_service"] for g in groups}) == 6
    assert fetch(operator, path)[0] == 401
    assert fetch(operator, path, token="not-the-token")[0] == 403
    assert fetch(operator, f"/targets/{namespace}/unknown", token=TOKEN)[0] == 404
    status, headers, body = fetch(operator, path, token=TOKEN, gzip_ok=True)
    assert (status, headers.get("Content-Encoding")) == (200, "gzip")
    assert json.loads(gzip.decompress(body)) == groups
    assert TOKEN not in operator.log_text()

    config = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        "monitoring.coreos.com", "v1alpha1", namespace, "scrapeconfigs", "fleet"
    )
    assert config["spec"] == {
        "scrapeInterval": "30s",
        "httpSDConfigs": [
            {
                "url": f"{BASE_URL}{path}",
                "refreshInterval": "15s",
                "authorization": {
                    "type": "Bearer",
                    "credentials": {"name": "http-sd", "key": "token"},
                },
            }
        ],
    }
    assert config["metadata"]["labels"]["prometheus"] == "main"
    ready = condition(get_cr(api, namespace, "fleet"), "Ready")
    assert ready["status"] == "True", ready


def test_the_listing_names_what_is_served_and_a_deleted_cr_becomes_404(
    api: k8s.ApiClient,
    operator: Operator,
    namespace: str,
    simulator: Callable[..., Simulator],
) -> None:
    sim = simulator(services=3, instances=1)
    create_token_secret(api, namespace)
    path = f"/targets/{namespace}/gone"
    create_cr(api, namespace, http_sd_cr("gone", server=sim.address))
    eventually(lambda: served(operator, path), timeout=60, what="the served targets")
    status, _, body = fetch(operator, "/targets")
    assert status == 200
    assert path in body.decode()
    k8s.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "gone"
    )
    eventually(
        lambda: fetch(operator, path, token=TOKEN)[0] == 404, timeout=60, what="404 after delete"
    )


def test_prometheus_operator_renders_the_http_sd_form_with_the_token_from_the_secret(
    api: k8s.ApiClient,
    operator: Operator,
    prometheus_operator: Any,
    namespace: str,
    simulator: Callable[..., Simulator],
) -> None:
    sim = simulator(services=4, instances=1)
    create_token_secret(api, namespace)
    create_cr(api, namespace, http_sd_cr("po", server=sim.address))
    eventually(lambda: served(operator, f"/targets/{namespace}/po"), what="the served targets")
    create_prometheus_cr(api, namespace)

    def rendered() -> dict[str, Any]:
        secret = k8s.CoreV1Api(api).read_namespaced_secret("prometheus-main", namespace)
        text = gzip.decompress(base64.b64decode(secret.data["prometheus.yaml.gz"])).decode()
        config: dict[str, Any] = yaml.safe_load(text)
        (job,) = [j for j in config.get("scrape_configs") or [] if j["job_name"].endswith("/po")]
        return dict(job)

    job = eventually(rendered, timeout=120, what="prometheus-main's rendered config")
    (http_sd,) = job["http_sd_configs"]
    assert http_sd["url"] == f"{BASE_URL}/targets/{namespace}/po"
    assert http_sd["refresh_interval"] == "15s"
    assert http_sd["authorization"] == {"type": "Bearer", "credentials": TOKEN}
    assert "static_configs" not in job
