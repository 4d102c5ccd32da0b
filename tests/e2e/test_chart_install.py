"""``helm install``/``upgrade``/``uninstall`` of the chart on a real kube-apiserver.

The Helm v4 SDK (helm-python-sdk, no helm binary) installs the chart into the session control
plane, so the apiserver validates every object the chart renders (Deployment, Service,
ServiceMonitor, RBAC, the CRD's structural schema). An upgrade switches to a namespace list and
back, and uninstall must leave the CRD (helm.sh/resource-policy: keep). The operator's pod
template must pass the apiserver's Pod Security admission at level ``restricted``.

Limits: no controller-manager or kubelet: the Deployment is stored, never rolled out, so Helm
does not wait for readiness. The release and its namespaces are unique per run; the CRD is
cluster-wide and shared with the other e2e modules, so it is adopted into the release first
(Helm's documented adoption: its release annotations and managed-by label).
"""

from __future__ import annotations

import base64
import json
import shlex
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.rendering import CHART_DIR, HELM_MISSING, REPO_ROOT, manifests, one, render
from tests.e2e.kinds import RBAC, collection_path
from tests.e2e.operator_harness import CRD_FILE, eventually
from tests.support.components import ControlPlane, apply_crds

pytest.importorskip("helm_python", reason=HELM_MISSING)
import helm_python as helm

pytestmark = pytest.mark.e2e

CRD_NAME = "consuldiscoveries.consul-sd.io"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"


def get(control_plane: ControlPlane, path: str) -> dict[str, Any] | None:
    answer = control_plane.request("GET", path)
    if answer.status == 404:
        return None
    assert answer.status == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def create_namespace(control_plane: ControlPlane, name: str) -> None:
    answer = control_plane.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    assert answer.status in (201, 409), answer.text


def adopt_crd(control_plane: ControlPlane, *, release: str, namespace: str) -> None:
    """If the CRD exists (another module applied it), hand it to this release."""
    if get(control_plane, CRD_PATH) is None:
        return
    patch = {
        "metadata": {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {
                "meta.helm.sh/release-name": release,
                "meta.helm.sh/release-namespace": namespace,
            },
        }
    }
    answer = control_plane.request(
        "PATCH", CRD_PATH, body=json.dumps(patch), content_type="application/merge-patch+json"
    )
    assert answer.status == 200, answer.text


@pytest.fixture
def release(control_plane: ControlPlane, monitoring_crds: list[str]) -> Iterator[tuple[str, str]]:
    """A release name and its namespace, uninstalled (if still there) afterwards."""
    suffix = uuid.uuid4().hex[:6]
    name, namespace = f"csd-{suffix}", f"chart-{suffix}"
    create_namespace(control_plane, namespace)
    yield name, namespace
    with helm.Config(kubeconfig_path=control_plane.kubeconfig, namespace=namespace) as config:
        config.uninstall(name, ignore_not_found=True)


def test_helm_installs_upgrades_and_uninstalls_the_chart_keeping_the_crd(
    control_plane: ControlPlane, release: tuple[str, str]
) -> None:
    name, namespace = release
    fullname = f"{name}-consul-sd-operator"
    adopt_crd(control_plane, release=name, namespace=namespace)
    teams = [f"{namespace}-a", f"{namespace}-b"]
    for team in teams:
        create_namespace(control_plane, team)
    with helm.Config(kubeconfig_path=control_plane.kubeconfig, namespace=namespace) as config:
        config.check_reachable()
        installed = config.install(
            CHART_DIR,
            name,
            {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
            namespace=namespace,
            timeout=120,
        )
        assert installed["status"] == "deployed", installed
        assert installed["revision"] == 1
        assert "every namespace" in installed["notes"]
        ns = f"/apis/apps/v1/namespaces/{namespace}"
        deployment = get(control_plane, f"{ns}/deployments/{fullname}")
        assert deployment is not None
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        assert get(control_plane, f"/api/v1/namespaces/{namespace}/serviceaccounts/{fullname}")
        assert get(control_plane, f"/api/v1/namespaces/{namespace}/services/{fullname}-metrics")
        monitor = get(
            control_plane,
            f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/servicemonitors/{fullname}",
        )
        assert monitor is not None
        assert monitor["metadata"]["labels"]["release"] == "prom"
        assert get(control_plane, f"{RBAC}/clusterroles/{fullname}")
        assert get(control_plane, f"{RBAC}/clusterrolebindings/{fullname}")

        def crd_established() -> bool:
            crd = get(control_plane, CRD_PATH) or {}
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
            conditions = (crd.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        eventually(crd_established, what="the chart's CRD to be Established")

        upgraded = config.upgrade(
            CHART_DIR, name, {"watchNamespaces": teams}, namespace=namespace, timeout=120
        )
        assert (upgraded["status"], upgraded["revision"]) == ("deployed", 2), upgraded
        assert get(control_plane, f"{RBAC}/clusterroles/{fullname}") is None
        assert get(control_plane, f"{RBAC}/clusterrolebindings/{fullname}") is None
        assert get(control_plane, f"{RBAC}/clusterroles/{fullname}-observer")
        for team in teams:
            assert get(control_plane, f"{RBAC}/namespaces/{team}/roles/{fullname}")
            assert get(control_plane, f"{RBAC}/namespaces/{team}/rolebindings/{fullname}")
        deployment = get(control_plane, f"{ns}/deployments/{fullname}")
        assert deployment is not None
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert [a for a in args if a.startswith("--namespace=")] == [
            f"--namespace={team}" for team in teams
        ]
        assert (
            get(
                control_plane,
                f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/servicemonitors/{fullname}",
            )
            is None
        )

        config.uninstall(name)
        assert get(control_plane, f"{ns}/deployments/{fullname}") is None
        assert get(control_plane, f"{RBAC}/clusterroles/{fullname}-observer") is None
        for team in teams:
            assert get(control_plane, f"{RBAC}/namespaces/{team}/roles/{fullname}") is None
    assert get(control_plane, CRD_PATH) is not None, "uninstall must keep the CRD"


def test_the_operator_pod_passes_pod_security_restricted(control_plane: ControlPlane) -> None:
    namespace = f"psa-{uuid.uuid4().hex[:6]}"
    answer = control_plane.request(
        "POST",
        "/api/v1/namespaces",
        body={
            "metadata": {
                "name": namespace,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            }
        },
    )
    assert answer.status == 201, answer.text
    deployment = one(manifests(namespace=namespace), "Deployment")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator", "namespace": namespace},
        "spec": deployment["spec"]["template"]["spec"],
    }
    path = f"/api/v1/namespaces/{namespace}/pods?dryRun=All"
    answer = control_plane.request("POST", path, body=pod)
    assert answer.status == 201, answer.text
    # The same admission refuses a pod that drops the chart's security context.
    pod["spec"] = {**pod["spec"], "securityContext": {}}
    answer = control_plane.request("POST", path, body=pod)
    assert answer.status == 403, answer.text
    assert "violates PodSecurity" in answer.text


# The commands NOTES.txt prints, as kubectl would run them against the apiserver.
NAMESPACED = {"Secret": "/api/v1", "ConsulDiscovery": "/apis/consul-sd.io/v1alpha1"}
PLURAL = {"Secret": "secrets", "ConsulDiscovery": "consuldiscoveries"}


def kubectl(control_plane: ControlPlane, line: str, *, token: str) -> None:
    """Run one ``kubectl`` line of NOTES.txt; any other command shape fails the test."""
    words = shlex.split(line)
    match words:
        case ["kubectl", "-n", ns, "create", "secret", "generic", name, literal]:
            key, _, _ = literal.removeprefix("--from-literal=").partition("=")
            body = {"metadata": {"name": name}, "stringData": {key: token}}
            answer = control_plane.request("POST", f"/api/v1/namespaces/{ns}/secrets", body=body)
            assert answer.status == 201, answer.text
        case ["kubectl", "apply", "-n", ns, "-f", file]:
            for document in yaml.safe_load_all((REPO_ROOT / file).read_text()):
                # kubectl refuses a document whose namespace differs from -n.
                assert document["metadata"].get("namespace", ns) == ns, document["metadata"]
                kind, name = document["kind"], document["metadata"]["name"]
                path = f"{NAMESPACED[kind]}/namespaces/{ns}/{PLURAL[kind]}/{name}"
                control_plane.apply(path, document, field_manager="kubectl")
        case ["kubectl", "-n", ns, "get", "consuldiscoveries"]:
            path = f"{NAMESPACED['ConsulDiscovery']}/namespaces/{ns}/consuldiscoveries"
            answer = control_plane.request("GET", path)
            assert answer.status == 200, answer.text
        case _:
            raise AssertionError(f"NOTES.txt command not understood here: {line}")


def test_the_notes_commands_work_in_a_namespace_other_than_monitoring(
    control_plane: ControlPlane,
) -> None:
    apply_crds(control_plane, [yaml.safe_load(CRD_FILE.read_text())], field_manager="e2e-notes")
    namespace = f"team-{uuid.uuid4().hex[:6]}"
    create_namespace(control_plane, namespace)
    notes = render(namespace=namespace)["consul-sd-operator/templates/NOTES.txt"]
    create = notes[notes.index("Create a ConsulDiscovery") : notes.index("Operator metrics")]
    commands = [line.strip() for line in create.splitlines() if line.strip().startswith("kubectl")]
    assert len(commands) == 3, create
    for line in commands:
        kubectl(control_plane, line, token="the-users-own-token")
    base = f"/api/v1/namespaces/{namespace}"
    secret = control_plane.request("GET", f"{base}/secrets/consul-acl-token").json()
    users_token = base64.b64encode(b"the-users-own-token").decode()
    assert secret["data"]["token"] == users_token, "applying the example replaced the token"
    path = f"/apis/consul-sd.io/v1alpha1/namespaces/{namespace}/consuldiscoveries/web"
    discovery = control_plane.request("GET", path).json()
    assert discovery["spec"]["consul"]["tokenSecretRef"]["name"] == "consul-acl-token"


@pytest.mark.parametrize(
    ("case", "values", "release_name"),
    [
        ("release-53", {}, "r" * 47),
        ("fullname-63", {"fullnameOverride": "f" * 63}, "x"),
        ("namespaced", {"watchNamespaces": ["w"], "nameOverride": "n" * 63}, "r" * 47),
    ],
)
def test_the_apiserver_accepts_every_object_at_the_longest_names(
    control_plane: ControlPlane,
    monitoring_crds: list[str],
    case: str,
    values: dict[str, Any],
    release_name: str,
) -> None:
    """Server-side dry run (dryRun=All) of every object, everything on, hooks included."""
    suffix = uuid.uuid4().hex[:6]
    namespace = f"long-{suffix}"
    release_name = f"{release_name}{suffix}"  # 53 characters for the long cases
    create_namespace(control_plane, namespace)
    watched = [f"{n}-{suffix}" for n in values.get("watchNamespaces", [])]
    for name in watched:
        create_namespace(control_plane, name)
    everything = {
        **values,
        **({"watchNamespaces": watched} if watched else {}),
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
        "cleanup": {"enabled": True},
        "networkPolicy": {"enabled": True, "allowedClients": [{}]},
    }
    objects = manifests(everything, release=release_name, namespace=namespace)
    for item in objects:
        answer = control_plane.request(
            "POST", f"{collection_path(item)}?dryRun=All&fieldValidation=Strict", body=item
        )
        accepted = answer.status == 201 or (
            item["kind"] == "CustomResourceDefinition" and answer.status == 409
        )
        assert accepted, (case, item["kind"], item["metadata"]["name"], answer.text)
