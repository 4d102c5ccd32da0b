"""The chart under values users set on every chart, at their limits (rendered offline).

Covers: the longest names Helm allows (a 53-character release name, a 63-character
fullnameOverride) give objects whose names the apiserver accepts, and every reference to a
suffixed name (HTTP SD URL, alert job, NOTES) follows it; null and empty values that other
charts accept; pod labels that would break the Deployment's selector.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.chart.rendering import HELM_MISSING, manifests, of_kind, one, render

pytest.importorskip("helm_python", reason=HELM_MISSING)
import helm_python as helm

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
ALL_ON: dict[str, Any] = {
    "cleanup": {"enabled": True},
    "dashboard": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "networkPolicy": {"enabled": True, "allowedClients": [{}]},
}
LONG_NAMES = {
    "release-53": ({}, "r" * 53),
    "fullname-63": ({"fullnameOverride": "f" * 63}, "x"),
    "name-63": ({"nameOverride": "n" * 63}, "x"),
}


@pytest.mark.parametrize("case", sorted(LONG_NAMES))
def test_the_longest_names_give_valid_object_names_and_consistent_references(case: str) -> None:
    values, release = LONG_NAMES[case]
    objects = manifests({**ALL_ON, **values}, release=release)
    for item in objects:
        name = item["metadata"]["name"]
        assert len(name) <= 63, (item["kind"], name)
    (service,) = of_kind(objects, "Service")
    service_name = service["metadata"]["name"]
    # A Service name is a DNS-1035 label; a Job's name goes into its pods' job-name label.
    assert DNS_LABEL.match(service_name), service_name
    assert service_name.endswith("-metrics")
    assert one(objects, "Job")["metadata"]["name"].endswith("-cleanup")
    (main,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert f"--http-sd-url=http://{service_name}.consul-sd.svc:9090" in main["args"]
    rules = one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
    down = next(r for r in rules if r["alert"] == "ConsulSDOperatorDown")
    assert down["expr"] == f'absent(up{{job="{service_name}"}} == 1)'
    notes = render({**ALL_ON, **values}, release=release)
    (text,) = [t for path, t in notes.items() if path.endswith("NOTES.txt")]
    assert f"service/{service_name} " in text


def endpoint_of(values: dict[str, Any]) -> dict[str, Any]:
    monitor = one(manifests({"serviceMonitor": {"enabled": True, **values}}), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    return dict(endpoint)


def test_an_empty_scrape_interval_and_timeout_leave_prometheus_its_own() -> None:
    # kube-prometheus-stack's convention: interval "" means the Prometheus's scrape_interval.
    endpoint = endpoint_of({"interval": "", "scrapeTimeout": ""})
    assert "interval" not in endpoint
    assert "scrapeTimeout" not in endpoint
    assert endpoint_of({})["interval"] == "30s"


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe"])
def test_a_null_probe_timing_keeps_the_probe_with_kubernetes_defaults(probe: str) -> None:
    (main,) = one(manifests({probe: None}), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert main[probe] == {"httpGet": {"path": "/healthz", "port": "healthz"}}


@pytest.mark.parametrize("label", ["app.kubernetes.io/name", "app.kubernetes.io/instance"])
def test_pod_labels_that_would_break_the_selector_are_refused_naming_the_label(
    label: str,
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(f"podLabels.{label}")):
        render({"podLabels": {label: "other"}})
    labels = one(manifests({"podLabels": {"team": "obs"}}), "Deployment")["spec"]["template"][
        "metadata"
    ]["labels"]
    assert labels["team"] == "obs"


def test_the_service_monitor_and_rule_can_live_in_prometheus_namespace() -> None:
    values = {
        "serviceMonitor": {"enabled": True, "namespace": "monitoring"},
        "prometheusRule": {"enabled": True, "namespace": "monitoring"},
    }
    objects = manifests(values)
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    # It still selects the metrics Service in the release's namespace.
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["consul-sd"]}
    assert one(objects, "PrometheusRule")["metadata"]["namespace"] == "monitoring"
    defaults = manifests({key: {"enabled": True} for key in values})
    assert one(defaults, "ServiceMonitor")["metadata"]["namespace"] == "consul-sd"
    assert one(defaults, "PrometheusRule")["metadata"]["namespace"] == "consul-sd"


def test_one_port_for_liveness_and_metrics_is_refused() -> None:
    # Two listeners cannot share it, and the NetworkPolicy's open liveness rule would expose the
    # HTTP SD targets to everyone.
    with pytest.raises(helm.HelmRenderError, match="livenessPort and metricsPort are both 9090"):
        render({"livenessPort": 9090})
    assert one(manifests({"livenessPort": 9091}), "Deployment")
