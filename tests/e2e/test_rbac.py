"""The chart's RBAC is enough for the operator, and no more: proven on a real kube-apiserver.

The chart is rendered by the Helm engine; its ServiceAccount, (Cluster)Roles and bindings are
applied as admin; then ``consul-sd operator`` runs with a kubeconfig carrying only the static
token of system:serviceaccount:consul-sd:consul-sd-operator (``OPERATOR_TOKEN``) against a
ConsulDiscovery with both outputs and a Consul ACL token Secret (Consul is the simulator with
ACLs on). Every operation must succeed (status, both outputs, their deletion, events, the
finalizer) with no 403 in the operator's log, and requests outside the role must be forbidden.

Limits: the namespaced test runs first and the cluster-wide one deletes its ClusterRoleBinding at
the end, since both grant the same identity; the control plane is session-wide, so an earlier
module's leftovers may exist (the operator here only needs to cope with them, not see them).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.chart.rendering import RELEASE, RELEASE_NAMESPACE, manifests
from tests.e2e.conftest import OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, OPERATOR_TOKEN
from tests.e2e.kinds import object_path
from tests.e2e.operator_harness import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    Simulator,
    api_client,
    condition,
    eventually,
)
from tests.support.components import ControlPlane, apply_crds

pytestmark = pytest.mark.e2e

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
ACL_TOKEN = "consul-acl-" + uuid.uuid4().hex
FINALIZER = "consul-sd.io/finalizer"


def apply(control_plane: ControlPlane, document: dict[str, Any]) -> None:
    """Server-side apply as admin (field manager consul-sd-e2e-rbac)."""
    control_plane.apply(object_path(document), document, field_manager="consul-sd-e2e-rbac")


def delete(control_plane: ControlPlane, document: dict[str, Any]) -> None:
    answer = control_plane.request("DELETE", object_path(document))
    assert answer.status in (200, 202, 404), answer.text


def ensure_namespace(control_plane: ControlPlane, name: str) -> None:
    apply(control_plane, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def chart_rbac(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's identity and RBAC objects for release consul-sd-operator in consul-sd.

    The ClusterRoles aggregated into Kubernetes' view and edit roles are for users, not the
    operator: they are left out.
    """
    assert (RELEASE, RELEASE_NAMESPACE) == ("consul-sd-operator", OPERATOR_NAMESPACE)
    return [
        item
        for item in manifests(values)
        if item["kind"] in RBAC_KINDS
        and not any(
            label.startswith("rbac.authorization.k8s.io/aggregate-to-")
            for label in item["metadata"].get("labels", {})
        )
    ]


def access(control_plane: ControlPlane, attributes: dict[str, Any]) -> bool:
    """A SelfSubjectAccessReview sent with the operator's token: may it do ``attributes``?"""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    answer = control_plane.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body=review,
        token=OPERATOR_TOKEN,
    )
    assert answer.status == 201, answer.text
    return bool(answer.json()["status"].get("allowed"))


class RestrictedOperator(Operator):
    """``consul-sd operator`` whose kubeconfig holds the operator's token, not the admin's."""

    def __init__(self, control_plane: ControlPlane, *, workdir: Path, scope: list[str]) -> None:
        super().__init__(control_plane, workdir, token=OPERATOR_TOKEN, scope=scope)


# A 403 as the apiserver's answers ("... is forbidden: User ...", "code": 403) and kopf's errors
# (APIForbiddenError) show it; not any "403", which a port or a log timestamp's milliseconds
# (",403") can contain.
_FORBIDDEN = re.compile(
    r"forbidden|not enough permissions|['\"]code['\"]:\s*403|HTTP 403|status[=: ]+403",
    re.IGNORECASE,
)


def forbidden_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if _FORBIDDEN.search(line)]


@pytest.fixture(scope="module")
def chart_crd(control_plane: ControlPlane, monitoring_crds: list[str]) -> None:
    """The chart's CRD, applied as admin and Established; prometheus-operator's CRDs too."""
    crd = next(item for item in manifests() if item["kind"] == "CustomResourceDefinition")
    apply_crds(control_plane, [crd], field_manager="e2e-rbac")


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> k8s.ApiClient:
    """The admin client, for setting up and inspecting (never for the operator)."""
    return api_client(control_plane)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    sim = Simulator(tmp_path, services=6, instances=2, nodes=3, acl_token=ACL_TOKEN)
    yield sim
    sim.stop()


def discovery(name: str, *, server: str) -> dict[str, Any]:
    """A ConsulDiscovery with both outputs and the Consul token in a Secret."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ConsulDiscovery",
        "metadata": {"name": name},
        "spec": {
            "consul": {
                "server": server,
                "tokenSecretRef": {"name": f"{name}-consul", "key": "token"},
            },
            "mode": "Polling",
            "refreshInterval": "1s",
            "output": {
                "configMap": {"name": f"{name}-sd"},
                "scrapeConfig": {"name": f"{name}-sc", "labels": {"prometheus": "main"}},
            },
        },
    }


def exercise_every_operation(
    api: k8s.ApiClient, *, operator: RestrictedOperator, namespace: str, server: str
) -> None:
    """Drive the operator through every API call it makes; fail on any 403 in its log."""
    core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    name = "rbac"
    # 1. The Secret is missing: secrets get (404), status patch, a Warning event.
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, discovery(name, server=server)
    )

    def reason(expected: str) -> dict[str, Any]:
        cr = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        ready = condition(cr, "Ready")
        assert ready.get("reason") == expected, cr.get("status")
        return dict(cr)

    eventually(lambda: reason("SecretNotFound"), what="Ready=False SecretNotFound")
    # 2. The Secret appears: both outputs are written (list, create via apply), Ready=True.
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": f"{name}-consul"}, "stringData": {"token": ACL_TOKEN}},
    )
    cr = eventually(lambda: reason("Synced"), timeout=90, what="Ready=True Synced")
    assert condition(cr, "Ready")["status"] == "True"
    assert cr["status"]["targets"] == 12
    assert {o["kind"] for o in cr["status"]["outputs"]} == {"ConfigMap", "ScrapeConfig"}
    assert FINALIZER in cr["metadata"].get("finalizers", [])
    maps = core.list_namespaced_config_map(
        namespace, label_selector=f"consul-sd.io/discovery={name}"
    ).items
    assert [m.metadata.name for m in maps] == [f"{name}-sd-0"]
    scrapes = custom.list_namespaced_custom_object(
        "monitoring.coreos.com", "v1alpha1", namespace, "scrapeconfigs"
    )["items"]
    assert [s["metadata"]["name"] for s in scrapes] == [f"{name}-sc-0"]

    def posted() -> list[Any]:
        items = list(core.list_namespaced_event(namespace).items)
        assert {e.reason for e in items} >= {"SecretNotFound", "Recovered"}, items
        return items

    events = eventually(posted, what="the SecretNotFound and Recovered events")
    assert {e.source.component for e in events} == {"consul-sd-operator"}
    # 3. New output names: the old objects are deleted once the new ones are written.
    spec = discovery(name, server=server)["spec"]
    spec["output"]["configMap"]["name"] = f"{name}-sd2"
    spec["output"]["scrapeConfig"]["name"] = f"{name}-sc2"
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"output": spec["output"]}}
    )

    def renamed() -> bool:
        maps = core.list_namespaced_config_map(
            namespace, label_selector=f"consul-sd.io/discovery={name}"
        ).items
        scrapes = custom.list_namespaced_custom_object(
            "monitoring.coreos.com", "v1alpha1", namespace, "scrapeconfigs"
        )["items"]
        assert [m.metadata.name for m in maps] == [f"{name}-sd2-0"]
        assert [s["metadata"]["name"] for s in scrapes] == [f"{name}-sc2-0"]
        return True

    eventually(renamed, timeout=90, what="the renamed outputs, old ones deleted")
    # 4. Deletion: kopf stops the daemon and removes its finalizer (a patch).
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except k8s.ApiException as exc:
            return bool(exc.status == 404)
        return False

    eventually(gone, what="the ConsulDiscovery to be deleted (finalizer removed)")
    log = operator.log_text()
    assert forbidden_lines(log) == [], "\n".join(forbidden_lines(log))
    assert "Traceback" not in log, log[-4000:]


def test_the_namespaced_roles_let_the_operator_do_everything_in_its_namespaces_only(
    control_plane: ControlPlane,
    chart_crd: None,
    api: k8s.ApiClient,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    watched, other = f"rbac-ns-{uuid.uuid4().hex[:6]}", f"rbac-other-{uuid.uuid4().hex[:6]}"
    for space in (OPERATOR_NAMESPACE, watched, other):
        ensure_namespace(control_plane, space)
    objects = chart_rbac({"watchNamespaces": [watched]})
    assert {o["kind"] for o in objects} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    }
    observer = [o for o in objects if o["kind"] == "ClusterRole"]
    assert [r["resources"] for r in observer[0]["rules"]] == [
        ["customresourcedefinitions"],
        ["namespaces"],
    ]
    assert all(set(r["verbs"]) == {"list", "watch"} for r in observer[0]["rules"])
    for item in objects:
        apply(control_plane, item)
    try:
        assert access(control_plane, {"verb": "get", "resource": "secrets", "namespace": watched})
        assert not access(control_plane, {"verb": "get", "resource": "secrets", "namespace": other})
        assert not access(
            control_plane, {"verb": "list", "resource": "configmaps", "namespace": other}
        )
        operator = RestrictedOperator(
            control_plane, workdir=tmp_path, scope=["--namespace", watched]
        )
        try:
            exercise_every_operation(
                api, operator=operator, namespace=watched, server=simulator.address
            )
        finally:
            operator.stop()
    finally:
        for item in objects:
            if item["kind"] != "ServiceAccount":
                delete(control_plane, item)


def test_the_cluster_role_lets_the_operator_do_everything_with_no_403(
    control_plane: ControlPlane,
    chart_crd: None,
    api: k8s.ApiClient,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    namespace = f"rbac-{uuid.uuid4().hex[:6]}"
    for space in (OPERATOR_NAMESPACE, namespace):
        ensure_namespace(control_plane, space)
    objects = chart_rbac()
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
    ]
    binding = next(o for o in objects if o["kind"] == "ClusterRoleBinding")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": OPERATOR_SERVICE_ACCOUNT,
            "namespace": OPERATOR_NAMESPACE,
        }
    ]
    for item in objects:
        apply(control_plane, item)
    try:
        operator = RestrictedOperator(control_plane, workdir=tmp_path, scope=["--all-namespaces"])
        try:
            exercise_every_operation(
                api, operator=operator, namespace=namespace, server=simulator.address
            )
        finally:
            operator.stop()
        outside = [
            {"verb": "list", "resource": "secrets"},
            {"verb": "list", "resource": "secrets", "namespace": namespace},
            {"verb": "watch", "resource": "secrets"},
            {"verb": "delete", "resource": "namespaces", "name": namespace},
            {"verb": "create", "resource": "clusterroles", "group": "rbac.authorization.k8s.io"},
            {"verb": "update", "resource": "configmaps", "namespace": namespace},
            {"verb": "get", "resource": "configmaps", "namespace": namespace},
            {"verb": "create", "resource": "pods", "namespace": namespace},
            {"verb": "delete", "resource": "consuldiscoveries", "group": GROUP},
            {
                "verb": "update",
                "resource": "customresourcedefinitions",
                "group": "apiextensions.k8s.io",
            },
        ]
        allowed = [attributes for attributes in outside if access(control_plane, attributes)]
        assert allowed == []
        # The same, as plain requests with the token: 403 from the apiserver.
        for method, path in [
            ("GET", "/api/v1/secrets"),
            ("DELETE", f"/api/v1/namespaces/{namespace}"),
            ("GET", f"/api/v1/namespaces/{namespace}/configmaps/anything"),
        ]:
            answer = control_plane.request(method, path, token=OPERATOR_TOKEN)
            assert answer.status == 403, (method, path, answer.status)
        answer = control_plane.request(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            body={
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "escalate"},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
            },
            token=OPERATOR_TOKEN,
        )
        assert answer.status == 403, answer.text
    finally:
        for item in objects:
            if item["kind"] != "ServiceAccount":
                delete(control_plane, item)
