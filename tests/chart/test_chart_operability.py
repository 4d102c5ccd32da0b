"""The chart as kube-prometheus-stack users expect it (issue 17), rendered by the real Helm engine.

Covers: Chart.yaml metadata; the values every chart takes (image registry and digest, extra
env/volumes/mounts, topology spread, pod labels, priority class, probe timings, log format);
the ServiceMonitor's honorLabels and relabelings; the view/edit ClusterRoles aggregated into
the built-in roles; the PrometheusRule, the Grafana dashboard and the cleanup hook (each off by
default); the README's values table kept in sync with values.yaml. Whether prometheus-operator's
CRDs accept the PrometheusRule and ServiceMonitor, and whether the alerts and the dashboard work
on real metrics, is tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import yaml
from tools.chart_docs import README, render_readme

from tests.chart.rendering import CHART_DIR, HELM_MISSING, REPO_ROOT, manifests, of_kind, one

pytest.importorskip("helm_python", reason=HELM_MISSING)
import helm_python as helm

ALERTS = [
    "ConsulSDDegraded",
    "ConsulSDTargetsStale",
    "ConsulSDOutputNearLimit",
    "ConsulSDServicesFailing",
    "ConsulSDOperatorDown",
]
EVERYTHING_ON: dict[str, Any] = {
    "image": {"registry": "ghcr.io", "digest": "sha256:" + "a" * 64},
    "logFormat": "json",
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "consul-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/consul-ca", "readOnly": True}],
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
        }
    ],
    "podLabels": {"team": "observability"},
    "priorityClassName": "system-cluster-critical",
    "livenessProbe": {"periodSeconds": 30, "failureThreshold": 5},
    "readinessProbe": {"periodSeconds": 15},
    "serviceMonitor": {
        "enabled": True,
        "interval": "1m",
        "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "c1"}],
        "metricRelabelings": [
            {"action": "drop", "regex": "python_.*", "sourceLabels": ["__name__"]}
        ],
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
    "dashboard": {"enabled": True},
    "cleanup": {"enabled": True},
}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (main,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(main)


def test_everything_on_lints_strictly_without_warnings() -> None:
    report = helm.lint(CHART_DIR, EVERYTHING_ON, strict=True, namespace="consul-sd")
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report
    assert report["errors"] == [], report


def test_chart_yaml_says_where_the_project_lives() -> None:
    metadata = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert metadata["home"].startswith("https://")
    assert metadata["sources"]
    # The icon is this repository's own file on its main branch: it exists and is an SVG.
    prefix = "https://raw.githubusercontent.com/consul-sd-operator/consul-sd-operator/main/"
    assert metadata["icon"].startswith(prefix)
    icon = REPO_ROOT / metadata["icon"].removeprefix(prefix)
    assert ET.fromstring(icon.read_text()).tag == "{http://www.w3.org/2000/svg}svg"


def test_an_image_digest_wins_over_the_tag_and_the_registry_is_prepended() -> None:
    main = container(manifests(EVERYTHING_ON))
    assert main["image"] == "ghcr.io/consul-sd-operator@sha256:" + "a" * 64
    tagged = container(manifests({"image": {"registry": "ghcr.io/", "tag": "1.2"}}))
    assert tagged["image"] == "ghcr.io/consul-sd-operator:1.2"


def test_the_common_pod_values_reach_the_pod() -> None:
    objects = manifests(EVERYTHING_ON)
    pod = one(objects, "Deployment")["spec"]["template"]
    main = container(objects)
    assert main["env"] == EVERYTHING_ON["extraEnv"]
    assert main["volumeMounts"][1:] == EVERYTHING_ON["extraVolumeMounts"]
    assert pod["spec"]["volumes"][1:] == EVERYTHING_ON["extraVolumes"]
    assert pod["spec"]["topologySpreadConstraints"] == EVERYTHING_ON["topologySpreadConstraints"]
    assert pod["metadata"]["labels"]["team"] == "observability"
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert "--log-format=json" in main["args"]


def test_probe_timings_are_values_and_the_path_stays_kopfs_healthz() -> None:
    main = container(manifests(EVERYTHING_ON))
    liveness, readiness = main["livenessProbe"], main["readinessProbe"]
    assert liveness["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert (liveness["periodSeconds"], liveness["failureThreshold"]) == (30, 5)
    assert liveness["initialDelaySeconds"] == 15  # the defaults of the keys not set stay
    assert readiness["periodSeconds"] == 15


def test_the_service_monitor_honors_labels_and_takes_relabelings() -> None:
    (endpoint,) = one(manifests(EVERYTHING_ON), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert endpoint["interval"] == "1m"
    assert endpoint["relabelings"] == EVERYTHING_ON["serviceMonitor"]["relabelings"]
    assert endpoint["metricRelabelings"] == EVERYTHING_ON["serviceMonitor"]["metricRelabelings"]


@pytest.mark.parametrize("scope", [[], ["team-a"]])
def test_view_and_edit_cluster_roles_aggregate_consul_discovery_into_the_built_in_roles(
    scope: list[str],
) -> None:
    roles = {
        r["metadata"]["name"]: r
        for r in of_kind(manifests({"watchNamespaces": scope}), "ClusterRole")
    }
    view, edit = roles["consul-sd-operator-view"], roles["consul-sd-operator-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["rules"] == [
        {
            "apiGroups": ["consul-sd.io"],
            "resources": ["consuldiscoveries"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    (rule,) = edit["rules"]
    assert rule["resources"] == ["consuldiscoveries"]  # never the status: it is the operator's
    assert {"create", "update", "patch", "delete"} <= set(rule["verbs"])


def test_no_aggregated_roles_when_turned_off() -> None:
    names = [
        r["metadata"]["name"]
        for r in of_kind(manifests({"rbac": {"aggregateToDefaultRoles": False}}), "ClusterRole")
    ]
    assert names == ["consul-sd-operator"]


def test_the_optional_objects_are_off_by_default() -> None:
    kinds = {o["kind"] for o in manifests()}
    assert not kinds & {"PrometheusRule", "ServiceMonitor", "NetworkPolicy", "ConfigMap", "Job"}


def runbook_anchors() -> set[str]:
    """The anchors GitHub makes of docs/runbooks.md's headings."""
    text = (REPO_ROOT / "docs" / "runbooks.md").read_text()
    headings = re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def test_each_alert_has_a_summary_a_description_and_a_runbook_section() -> None:
    rule = one(manifests(EVERYTHING_ON), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    (group,) = rule["spec"]["groups"]
    assert [r["alert"] for r in group["rules"]] == ALERTS
    anchors = runbook_anchors()
    for alert in group["rules"]:
        annotations = alert["annotations"]
        assert annotations["summary"], alert["alert"]
        assert annotations["description"], alert["alert"]
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url.endswith("/docs/runbooks.md")
        assert anchor == alert["alert"].lower()
        assert anchor in anchors, f"docs/runbooks.md has no section {anchor}"
        assert alert["labels"]["severity"] in ("warning", "critical")


def test_alert_thresholds_are_values() -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "degradedFor": "30m",
            "staleIntervals": 3,
            "outputLimitRatio": 0.9,
            "job": "csd",
            "additionalAlertLabels": {"team": "obs"},
        }
    }
    rules = {
        r["alert"]: r
        for r in one(manifests(values), "PrometheusRule")["spec"]["groups"][0]["rules"]
    }
    assert rules["ConsulSDDegraded"]["for"] == "30m"
    assert (
        "> on (namespace, name) 3 * max by (namespace, name) (consul_sd_sync_interval_seconds)"
        in rules["ConsulSDTargetsStale"]["expr"]
    )
    assert rules["ConsulSDOutputNearLimit"]["expr"].endswith("> 0.9")
    assert rules["ConsulSDOperatorDown"]["expr"] == 'absent(up{job="csd"} == 1)'
    assert all(r["labels"]["team"] == "obs" for r in rules.values())


def test_the_dashboard_is_a_configmap_the_grafana_sidecar_loads() -> None:
    configmap = one(manifests(EVERYTHING_ON), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = configmap["data"].values()
    dashboard = json.loads(text)
    assert dashboard == json.loads((CHART_DIR / "files" / "dashboard.json").read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] == "timeseries"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["targets"], panel["title"]
        assert all(target["expr"] for target in panel["targets"]), panel["title"]
    other = one(manifests({"dashboard": {"enabled": True, "namespace": "grafana"}}), "ConfigMap")
    assert other["metadata"]["namespace"] == "grafana"


CLEANUP_RULES = [
    {"apiGroups": ["consul-sd.io"], "resources": ["consuldiscoveries"], "verbs": ["list", "patch"]}
]


def hooked(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if "helm.sh/hook" in o["metadata"].get("annotations", {})]


def test_the_cleanup_hook_runs_the_charts_script_after_uninstall_with_its_own_rights() -> None:
    objects = hooked(manifests(EVERYTHING_ON))
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
        "ServiceAccount",
    ]
    assert all(o["metadata"]["annotations"]["helm.sh/hook"] == "post-delete" for o in objects)
    (main,) = one(objects, "Job")["spec"]["template"]["spec"]["containers"]
    script = (CHART_DIR / "files" / "remove-finalizers.py").read_text()
    assert main["command"] == ["python", "-c", script]
    assert main["env"] == [{"name": "WATCH_NAMESPACES", "value": ""}]
    assert one(objects, "ClusterRole")["rules"] == CLEANUP_RULES


def test_the_cleanup_hook_of_a_release_watching_namespaces_has_rights_in_those_only() -> None:
    objects = hooked(manifests({**EVERYTHING_ON, "watchNamespaces": ["team-a", "team-b"]}))
    assert not [o for o in objects if o["kind"].startswith("Cluster")]
    roles = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    assert all(role["rules"] == CLEANUP_RULES for role in roles.values())
    job = one(objects, "Job")
    (main,) = job["spec"]["template"]["spec"]["containers"]
    assert main["env"] == [{"name": "WATCH_NAMESPACES", "value": "team-a,team-b"}]
    account = job["spec"]["template"]["spec"]["serviceAccountName"]
    for binding in bindings.values():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[binding["metadata"]["namespace"]]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "consul-sd"}
        ]


def test_the_readme_values_table_is_generated_from_values_yaml() -> None:
    expected = render_readme(REPO_ROOT)
    assert (REPO_ROOT / README).read_text() == expected, "run: python -m tools.docs --write"
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for key in ("image.registry", "serviceMonitor.honorLabels", "prometheusRule.enabled"):
        assert f"| `{key}` |" in expected
    assert set(values) <= {
        line.split("`")[1].split(".")[0] for line in expected.splitlines() if line.startswith("| `")
    }


def test_the_readme_table_describes_every_value() -> None:
    table = [line for line in render_readme(REPO_ROOT).splitlines() if line.startswith("| `")]
    undescribed = [line.split("`")[1] for line in table if line.rstrip().endswith("|  |")]
    assert undescribed == []
