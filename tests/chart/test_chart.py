"""The Helm chart, linted and rendered offline by the real Helm engine (helm-python-sdk).

Covers: lint (strict) for default and non-default values; what each value changes in the
rendered objects; the values schema (every value described, unknown and mistyped values
rejected); the CRD template's byte-identity with deploy/crds/ and the model. Installing the
chart into an apiserver is tests/e2e/test_chart_install.py; RBAC sufficiency is
tests/e2e/test_rbac.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from tools.crd import CRD_FILE, CRD_PATHS, render_crd, write_crd_files

from tests.chart.rendering import (
    CHART_DIR,
    HELM_MISSING,
    REPO_ROOT,
    manifests,
    of_kind,
    one,
    render,
)

pytest.importorskip("helm_python", reason=HELM_MISSING)
import helm_python as helm

NON_DEFAULT_VALUES: dict[str, dict[str, Any]] = {
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "no-crds": {"crds": {"install": False}},
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "allowedClients": [
                {
                    "namespaceLabels": {"kubernetes.io/metadata.name": "monitoring"},
                    "podLabels": {"app.kubernetes.io/name": "prometheus"},
                },
                {"podLabels": {"app": "vmagent"}},
            ],
        }
    },
    "custom": {
        "image": {
            "repository": "registry.example/consul-sd",
            "tag": "1.2.3",
            "pullPolicy": "Always",
        },
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "logLevel": "debug",
        "extraArgs": ["--peering-name=unused"],
        "livenessPort": 18080,
        "metricsPort": 19090,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mon"}],
        "affinity": {"nodeAffinity": {}},
        "podAnnotations": {"example.com/team": "observability"},
        "serviceAccount": {"name": "custom-sa", "annotations": {"a": "b"}},
        "rbac": {"observeCluster": False},
        "fullnameOverride": "csd",
    },
}

# The namespaced rules of the operator, as the chart must render them (see test_rbac.py for
# the proof that they are enough).
EXPECTED_RULES = [
    {
        "apiGroups": ["consul-sd.io"],
        "resources": ["consuldiscoveries"],
        "verbs": ["list", "watch", "patch"],
    },
    {"apiGroups": ["consul-sd.io"], "resources": ["consuldiscoveries/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "verbs": ["list", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["monitoring.coreos.com"],
        "resources": ["scrapeconfigs"],
        "verbs": ["list", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
CRD_OBSERVER_RULE = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "verbs": ["list", "watch"],
}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(objects, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def operator_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's own ClusterRole (not one aggregated into the built-in roles)."""
    (role,) = [
        r
        for r in of_kind(objects, "ClusterRole")
        if not any(
            k.startswith("rbac.authorization.k8s.io/aggregate") for k in r["metadata"]["labels"]
        )
    ]
    return role


def schema_problems(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    return str(caught.value)


# ------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("case", ["default", *NON_DEFAULT_VALUES])
def test_the_chart_lints_strictly_without_warnings(case: str) -> None:
    values = NON_DEFAULT_VALUES.get(case)
    report = helm.lint(CHART_DIR, values, strict=True, namespace="consul-sd")
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], report
    assert report["errors"] == [], report


def test_chart_metadata_is_api_v2_with_app_version_0_1_0() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        metadata = chart.metadata
    assert metadata["apiVersion"] == "v2"
    assert metadata["appVersion"] == "0.1.0"
    assert metadata["name"] == "consul-sd-operator"


# ---------------------------------------------------------------------------------- default


def test_the_default_render_is_crd_rbac_deployment_and_metrics_service() -> None:
    objects = manifests()
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole",
        "ClusterRole",  # aggregated into view
        "ClusterRole",  # aggregated into edit
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    assert all(o["metadata"].get("namespace") in (None, "consul-sd") for o in objects)


def test_the_deployment_runs_one_standalone_replica_recreated_not_rolled() -> None:
    deployment = one(manifests(), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    main = container(manifests())
    assert main["command"] == ["consul-sd"]
    assert main["args"] == [
        "--log-level=info",
        "--log-format=text",
        "operator",
        "--standalone",
        "--all-namespaces",
        "--bind-address=0.0.0.0",
        "--liveness-port=8080",
        "--metrics-port=9090",
        "--http-sd-url=http://consul-sd-operator-metrics.consul-sd.svc:9090",
    ]
    assert main["image"] == "consul-sd-operator:0.1.0"
    assert main["imagePullPolicy"] == "IfNotPresent"


def test_the_probes_use_kopfs_healthz_on_the_liveness_port() -> None:
    main = container(manifests())
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}


def test_the_pod_is_non_root_read_only_without_capabilities_with_a_tmp_emptydir() -> None:
    objects = manifests()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(objects)["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container(objects)["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp"
    assert "emptyDir" in pod["volumes"][0]
    assert pod["serviceAccountName"] == "consul-sd-operator"
    assert container(objects)["resources"]["limits"]["memory"] == "1Gi"


def test_the_cluster_role_has_exactly_the_operators_rules_bound_to_its_service_account() -> None:
    objects = manifests()
    role = operator_role(objects)
    assert role["rules"] == [*EXPECTED_RULES, CRD_OBSERVER_RULE]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "consul-sd-operator", "namespace": "consul-sd"}
    ]
    assert one(objects, "ServiceAccount")["metadata"]["name"] == "consul-sd-operator"


def test_every_rbac_rule_is_commented_with_why() -> None:
    sources = (CHART_DIR / "templates" / "_helpers.tpl").read_text() + (
        CHART_DIR / "templates" / "rbac.yaml"
    ).read_text()
    lines = sources.splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            assert lines[number - 1].strip().startswith("#"), f"rule without a comment: {line}"


def test_the_metrics_service_targets_the_metrics_port() -> None:
    service = one(manifests(), "Service")
    assert service["metadata"]["name"] == "consul-sd-operator-metrics"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    labels = one(manifests(), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_notes_say_scope_crd_policy_and_how_to_check() -> None:
    notes = render()["consul-sd-operator/templates/NOTES.txt"]
    assert "every namespace" in notes
    assert "helm.sh/resource-policy: keep" in notes
    assert "kubectl -n consul-sd logs deployment/consul-sd-operator" in notes
    namespaced = render(NON_DEFAULT_VALUES["namespaced"])["consul-sd-operator/templates/NOTES.txt"]
    assert "team-a, team-b" in namespaced


# ------------------------------------------------------------------------------ non-default


def test_a_namespace_list_gives_a_role_per_namespace_and_no_cluster_wide_access() -> None:
    objects = manifests(NON_DEFAULT_VALUES["namespaced"])
    roles = of_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(r["rules"] == EXPECTED_RULES for r in roles)
    bindings = of_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    observer = operator_role(objects)
    assert observer["metadata"]["name"] == "consul-sd-operator-observer"
    assert observer["rules"] == [
        CRD_OBSERVER_RULE,
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    args = container(objects)["args"]
    assert "--all-namespaces" not in args
    assert args[4:6] == ["--namespace=team-a", "--namespace=team-b"]


def test_observe_cluster_false_leaves_no_cluster_scoped_rbac_in_namespaced_mode() -> None:
    values = {"observeCluster": False, "aggregateToDefaultRoles": False}
    objects = manifests({"watchNamespaces": ["team-a"], "rbac": values})
    assert of_kind(objects, "ClusterRole") == []
    assert of_kind(objects, "ClusterRoleBinding") == []


def test_the_service_monitor_scrapes_the_metrics_service_when_enabled() -> None:
    objects = manifests(NON_DEFAULT_VALUES["service-monitor"])
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "metrics",
            "path": "/metrics",
            "interval": "30s",
            "scrapeTimeout": "10s",
            # The metrics' namespace and name are the ConsulDiscovery's: never exported_*.
            "honorLabels": True,
        }
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["consul-sd"]}


def test_crds_install_false_renders_no_crd() -> None:
    objects = manifests(NON_DEFAULT_VALUES["no-crds"])
    assert of_kind(objects, "CustomResourceDefinition") == []
    assert of_kind(objects, "Deployment")


def test_custom_values_reach_the_deployment() -> None:
    objects = manifests(NON_DEFAULT_VALUES["custom"])
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    main = container(objects)
    assert deployment["metadata"]["name"] == "csd"
    assert main["image"] == "registry.example/consul-sd:1.2.3"
    assert main["imagePullPolicy"] == "Always"
    assert main["resources"] == NON_DEFAULT_VALUES["custom"]["resources"]
    assert main["args"][0] == "--log-level=debug"
    assert main["args"][-4:] == [
        "--liveness-port=18080",
        "--metrics-port=19090",
        # Prometheus reaches the operator through the Service, on the Service's port.
        "--http-sd-url=http://csd-metrics.consul-sd.svc:9090",
        "--peering-name=unused",
    ]
    assert {p["containerPort"] for p in main["ports"]} == {18080, 19090}
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"] == NON_DEFAULT_VALUES["custom"]["tolerations"]
    assert pod["spec"]["affinity"] == {"nodeAffinity": {}}
    assert pod["metadata"]["annotations"] == {"example.com/team": "observability"}
    assert pod["spec"]["serviceAccountName"] == "custom-sa"
    account = one(objects, "ServiceAccount")
    assert account["metadata"] == {
        **account["metadata"],
        "name": "custom-sa",
        "annotations": {"a": "b"},
    }
    assert operator_role(objects)["rules"] == EXPECTED_RULES
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "custom-sa"


def test_an_http_sd_url_value_replaces_the_services_name_without_a_trailing_slash() -> None:
    main = container(manifests({"httpSD": {"url": "https://sd.example.com/consul-sd/"}}))
    assert "--http-sd-url=https://sd.example.com/consul-sd" in main["args"]


def test_no_network_policy_by_default_and_notes_say_the_targets_are_exposed() -> None:
    assert of_kind(manifests(), "NetworkPolicy") == []
    notes = render()["consul-sd-operator/templates/NOTES.txt"]
    assert "http://consul-sd-operator-metrics.consul-sd.svc:9090/targets/<namespace>/<name>" in (
        notes
    )
    assert "spec.output.httpSD.authorization" in notes
    assert "networkPolicy.enabled" in notes


def test_the_network_policy_admits_only_the_listed_clients_to_the_targets_port() -> None:
    objects = manifests(NON_DEFAULT_VALUES["network-policy"])
    policy = one(objects, "NetworkPolicy")
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    liveness, targets = policy["spec"]["ingress"]
    assert liveness == {"ports": [{"port": 8080, "protocol": "TCP"}]}  # the kubelet's probes
    assert targets["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert targets["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        },
        {"podSelector": {"matchLabels": {"app": "vmagent"}}},  # the release's namespace
    ]


def test_a_network_policy_without_clients_is_refused_rather_than_closing_the_port() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"networkPolicy\.allowedClients"):
        render({"networkPolicy": {"enabled": True}})


def test_an_existing_service_account_must_be_named() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"serviceAccount\.name is required"):
        render({"serviceAccount": {"create": False}})
    objects = manifests({"serviceAccount": {"create": False, "name": "existing"}})
    assert of_kind(objects, "ServiceAccount") == []
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "existing"


# ----------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"metricsPort": "9090"}, "/metricsPort"),
        ({"livenessPort": 0}, "/livenessPort"),
        ({"logLevel": "verbose"}, "/logLevel"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"securityContext": {"readOnlyRootFileSystem": True}}, "readOnlyRootFileSystem"),
        ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
        ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
        ({"crds": {"install": "yes"}}, "/crds/install"),
        ({"httpSD": {"url": "op.monitoring.svc:9090"}}, "/httpSD/url"),
        ({"networkPolicy": {"allowedClients": [{"pods": {}}]}}, "additional properties 'pods'"),
        ({"networkPolicy": {"allowedClients": [{"podLabels": {"a": 1}}]}}, "/podLabels/a"),
    ],
)
def test_the_values_schema_rejects_a_bad_value_naming_it(
    values: dict[str, Any], message: str
) -> None:
    assert message in schema_problems(values)
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_lint_reports_a_schema_violation_as_an_error() -> None:
    report = helm.lint(CHART_DIR, {"logLevel": "verbose"}, strict=True)
    assert any("/logLevel" in error for error in report["errors"])


def _leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [path for key, value in node.items() for path in _leaf_paths(value, (*prefix, key))]
    return [prefix]


def _walk_schema(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("properties", {}).values():
        found.extend(_walk_schema(child))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found.extend(_walk_schema(node[key]))
    for option in node.get("anyOf", []):
        found.extend(_walk_schema(option))
    return found


def test_the_schema_describes_every_value_and_closes_every_object() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for path in _leaf_paths(values):
        node = schema
        for key in path:
            properties = node.get("properties", {})
            if key in properties:
                node = properties[key]
            else:
                assert isinstance(node.get("additionalProperties"), dict), path
                node = node["additionalProperties"]
        assert "type" in node or "anyOf" in node, path
    assert set(schema["properties"]) == {*values, "global"}
    for node in _walk_schema(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, node
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(values)


# -------------------------------------------------------------------------------------- CRD


def test_the_charts_crd_file_is_byte_identical_to_deploy_crds_and_the_model() -> None:
    generated = render_crd()
    for relative in CRD_PATHS:
        path = REPO_ROOT / relative
        assert path.read_text() == generated, f"run: python -m tools.crd --write ({path})"
    assert (CHART_DIR / "files" / CRD_FILE).read_bytes() == (
        REPO_ROOT / "deploy" / "crds" / CRD_FILE
    ).read_bytes()


def test_the_rendered_crd_is_the_generated_file_plus_keep_and_labels_only() -> None:
    text = render()["consul-sd-operator/templates/crd.yaml"]
    added = re.compile(
        r"  annotations:\n    helm\.sh/resource-policy: keep\n  labels:\n(    [^\n]+\n)+"
    )
    assert len(added.findall(text)) == 1
    # Helm ends a template with a blank line of its own; every byte before it is the file's.
    assert added.sub("", text, count=1).rstrip("\n") == render_crd().rstrip("\n")
    crd = yaml.safe_load(text)
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert crd["spec"] == yaml.safe_load(render_crd())["spec"]


def test_write_crd_files_writes_both_copies(tmp_path: Path) -> None:
    for relative in CRD_PATHS:
        (tmp_path / relative).parent.mkdir(parents=True)
    written = write_crd_files(tmp_path)
    assert [p.relative_to(tmp_path) for p in written] == list(CRD_PATHS)
    assert {p.read_text() for p in written} == {render_crd()}
    with pytest.raises(FileNotFoundError, match="repository root"):
        write_crd_files(tmp_path / "elsewhere")
