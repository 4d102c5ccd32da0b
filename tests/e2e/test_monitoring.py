"""The chart's monitoring objects against real components (issue 17).

- prometheus-operator's CRDs on a real apiserver accept the chart's PrometheusRule and
  ServiceMonitor;
- a real Prometheus loads the chart's alert rules (promtool checks them and tests each alert's
  threshold in tests/e2e/test_alert_rules.py), scrapes
  a real operator process whose one ConsulDiscovery finds Consul unreachable and another a
  working Consul (the simulator), fires ConsulSDDegraded, and answers every dashboard panel's
  query with data;
- the cleanup the chart offers (its hook Job's script, run with a token of the hook's own
  ServiceAccount and rules as rendered, and the command docs/runbooks.md gives) lets a
  ConsulDiscovery whose operator is gone be deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from consul_sd.api.names import FINALIZER, GROUP, PLURAL, VERSION
from tests.chart.rendering import CHART_DIR, manifests, one
from tests.e2e.operator_harness import (
    Operator,
    Simulator,
    create_cr,
    eventually,
    get_cr,
    sample_cr,
)
from tests.e2e.test_rbac import RBAC_KINDS, apply
from tests.support.components import ControlPlane, Prometheus, free_port, http_request

pytestmark = pytest.mark.e2e

JOB = "consul-sd-operator"
MONITORING = {
    "serviceMonitor": {"enabled": True},
    # Seconds instead of minutes, so the alert fires within the test.
    "prometheusRule": {"enabled": True, "degradedFor": "10s", "job": JOB},
}


def query(prometheus: Prometheus, expr: str) -> list[dict[str, Any]]:
    answer = http_request(
        "GET", f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    )
    assert answer.status == 200, answer.text
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def firing(prometheus: Prometheus) -> list[dict[str, str]]:
    answer = http_request("GET", f"{prometheus.url}/api/v1/alerts")
    assert answer.status == 200, answer.text
    alerts = answer.json()["data"]["alerts"]
    return [dict(a["labels"]) for a in alerts if a["state"] == "firing"]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard panel, its Grafana variables filled in."""
    dashboard = json.loads((CHART_DIR / "files" / "dashboard.json").read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m")
            expr = expr.replace("$namespace", ".*").replace("$name", ".*")
            found.append((panel["title"], expr))
    return found


# ------------------------------------------------------------------------------ the objects


def test_prometheus_operators_crds_accept_the_rule_and_the_service_monitor(
    control_plane: ControlPlane, monitoring_crds: list[str], api: k8s.ApiClient, namespace: str
) -> None:
    objects = manifests(MONITORING, namespace=namespace)
    custom = k8s.CustomObjectsApi(api)
    for kind, plural in (
        ("PrometheusRule", "prometheusrules"),
        ("ServiceMonitor", "servicemonitors"),
    ):
        body = one(objects, kind)
        # Strict field validation: an unknown field would be refused, not silently dropped.
        custom.create_namespaced_custom_object(
            "monitoring.coreos.com", "v1", namespace, plural, body, field_validation="Strict"
        )
        stored = custom.get_namespaced_custom_object(
            "monitoring.coreos.com", "v1", namespace, plural, body["metadata"]["name"]
        )
        assert stored["spec"] == body["spec"]


# --------------------------------------------------------------- alerts and dashboard queries


@dataclass
class Monitored:
    prometheus: Prometheus
    operator: Operator


@pytest.fixture
def stack(
    control_plane: ControlPlane,
    consul_sd_crd: None,
    api: k8s.ApiClient,
    namespace: str,
    simulator: Callable[..., Simulator],
    tmp_path: Path,
) -> Iterator[Monitored]:
    """An operator (JSON logs) with a healthy and an unreachable ConsulDiscovery, scraped by
    Prometheus."""
    consul = simulator(services=3, instances=1, nodes=2)
    operator = Operator(
        control_plane, tmp_path, "--log-format", "json", scope=("--namespace", namespace)
    )
    rules = tmp_path / "rules.yaml"
    spec = one(manifests(MONITORING), "PrometheusRule")["spec"]
    rules.write_text(yaml.safe_dump(spec))
    prometheus = Prometheus(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "honor_labels": True,  # as the chart's ServiceMonitor
                    "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
                }
            ],
        }
    )
    try:
        create_cr(api, namespace, sample_cr("healthy", server=consul.address))
        create_cr(api, namespace, sample_cr("unreachable", server=f"127.0.0.1:{free_port()}"))
        prometheus.start(tmp_path / "prometheus")
        yield Monitored(prometheus=prometheus, operator=operator)
    finally:
        prometheus.stop()
        operator.stop()


@pytest.fixture
def monitored(stack: Monitored) -> Prometheus:
    return stack.prometheus


def test_the_degraded_alert_fires_on_the_operators_real_metrics_and_every_rule_evaluates(
    monitored: Prometheus, namespace: str
) -> None:
    def degraded() -> list[dict[str, str]]:
        return [a for a in firing(monitored) if a["alertname"] == "ConsulSDDegraded"]

    (alert,) = eventually(degraded, timeout=120, what="ConsulSDDegraded firing")
    assert (alert["namespace"], alert["name"]) == (namespace, "unreachable")
    assert alert["reason"] == "ConsulUnreachable"
    assert alert["severity"] == "warning"
    answer = http_request("GET", f"{monitored.url}/api/v1/rules")
    groups = answer.json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 5
    assert all(rule["health"] == "ok" for rule in rules), rules
    # The healthy one is not degraded, and its targets are fresh.
    assert not any(a["name"] == "healthy" for a in firing(monitored))


def test_every_dashboard_panel_query_returns_data_from_the_operators_metrics(
    monitored: Prometheus,
) -> None:
    # Output writes and errors are rates: they need two scrapes after the first cycles.
    eventually(
        lambda: query(monitored, 'consul_sd_degraded{name="unreachable"} == 1'),
        timeout=120,
        what="both ConsulDiscovery objects reported",
    )
    for title, expr in panel_queries():

        def answered(expr: str = expr) -> list[dict[str, Any]]:
            return query(monitored, expr)

        eventually(answered, timeout=60, what=f"data for the panel {title!r}")


def test_the_operator_logs_json_lines_naming_their_cr_and_no_probe_requests(
    stack: Monitored, namespace: str
) -> None:
    def lines() -> list[dict[str, str]]:
        text = stack.operator.log_path.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line]

    eventually(
        lambda: sum("starting discovery" in line["msg"] for line in lines()) == 2,
        timeout=60,
        what="both discoveries started",
    )
    stack.operator.stop()  # kopf's own per-object lines ("Daemon ... succeeded") come now
    logged = lines()  # every line is one JSON object (json.loads raised otherwise)
    about = [line for line in logged if line["logger"] == "kopf.objects"]
    assert len(about) >= 4
    for line in about:
        assert line["msg"].startswith((f"{namespace}/unreachable:", f"{namespace}/healthy:")), line
    # The harness polled kopf's /healthz until the operator was up: no access line of it.
    assert not [line for line in logged if line["logger"] == "aiohttp.access"]


# ------------------------------------------------------------------------------- cleanup


def stuck_cr(api: k8s.ApiClient, namespace: str, name: str) -> None:
    """A ConsulDiscovery carrying the finalizer, as a running operator leaves it."""
    body = sample_cr(name, server="127.0.0.1:1")
    body["metadata"]["finalizers"] = [FINALIZER]
    create_cr(api, namespace, body)


def delete_and_wait_gone(api: k8s.ApiClient, namespace: str, name: str, *, timeout: float) -> bool:
    custom = k8s.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get_cr(api, namespace, name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return True
            raise
        time.sleep(0.25)
    return False


def test_without_cleanup_a_deleted_cr_waits_for_the_gone_operator(
    consul_sd_crd: None, api: k8s.ApiClient, namespace: str
) -> None:
    stuck_cr(api, namespace, "orphan")
    assert not delete_and_wait_gone(api, namespace, "orphan", timeout=3)
    assert get_cr(api, namespace, "orphan")["metadata"]["deletionTimestamp"]


def test_the_charts_cleanup_job_releases_every_cr_with_its_own_rights_so_deleting_completes(
    control_plane: ControlPlane,
    consul_sd_crd: None,
    api: k8s.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    stuck_cr(api, namespace, "first")
    stuck_cr(api, namespace, "second")
    # The hook's ServiceAccount and rules as the chart renders them (release in this namespace,
    # watching it), and a kubeconfig holding a token of that ServiceAccount only.
    values = {"cleanup": {"enabled": True}, "watchNamespaces": [namespace]}
    job = next(o for o in manifests(values, namespace=namespace) if o["kind"] == "Job")
    for document in manifests(values, namespace=namespace):
        if document["kind"] in RBAC_KINDS:
            apply(control_plane, document)
    kubeconfig = control_plane.write_kubeconfig(
        tmp_path / "cleanup.kubeconfig",
        token=service_account_token(
            control_plane, namespace, job["spec"]["template"]["spec"]["serviceAccountName"]
        ),
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {
        **os.environ,
        **{item["name"]: item["value"] for item in container["env"]},
        "KUBECONFIG": str(kubeconfig),
        "PAUSE_SECONDS": "0.5",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    ran = subprocess.run(
        [sys.executable, "-c", container["command"][-1]],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert sorted(ran.stdout.split()) == sorted(
        ["released", f"{namespace}/first", "released", f"{namespace}/second"]
    )
    assert delete_and_wait_gone(api, namespace, "first", timeout=30)
    assert delete_and_wait_gone(api, namespace, "second", timeout=30)


def service_account_token(control_plane: ControlPlane, namespace: str, name: str) -> str:
    """A short-lived token of ServiceAccount ``namespace/name`` (the TokenRequest API)."""
    answer = control_plane.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"expirationSeconds": 600}},
    )  # fmt: skip
    assert answer.status == 201, answer.text
    return str(answer.json()["status"]["token"])


def test_the_runbooks_command_releases_a_cr_stuck_in_deletion(
    control_plane: ControlPlane, consul_sd_crd: None, api: k8s.ApiClient, namespace: str
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on PATH")
    stuck_cr(api, namespace, "stuck")
    assert not delete_and_wait_gone(api, namespace, "stuck", timeout=2)
    runbook = (Path(__file__).resolve().parents[2] / "docs" / "runbooks.md").read_text()
    command = runbook.split("## Deleting a ConsulDiscovery hangs", 1)[1].split("```sh\n")[1]
    command = command.split("```")[0].replace("kubectl ", f"{kubectl} ")
    # Only this test's namespace: other tests' objects are not ours to release.
    command = command.replace(" -A ", f" -n {namespace} ")
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    ran = subprocess.run(
        ["bash", "-c", command], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    eventually(lambda: not _exists(api, namespace, "stuck"), timeout=30, what="the CR gone")


def _exists(api: k8s.ApiClient, namespace: str, name: str) -> bool:
    try:
        get_cr(api, namespace, name)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True
