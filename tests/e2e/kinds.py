"""Where each kind the tests create lives on the apiserver: one table for every e2e module.

Only the kinds the chart renders and the tests apply; a kind missing here is a KeyError, so a
new object kind in the chart shows up in the test that meets it.
"""

from __future__ import annotations

from typing import Any

RBAC = "/apis/rbac.authorization.k8s.io/v1"
# kind -> (API path prefix, plural, namespaced)
RESOURCES = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "Role": (RBAC, "roles", True),
    "RoleBinding": (RBAC, "rolebindings", True),
    "ClusterRole": (RBAC, "clusterroles", False),
    "ClusterRoleBinding": (RBAC, "clusterrolebindings", False),
    "ServiceMonitor": ("/apis/monitoring.coreos.com/v1", "servicemonitors", True),
    "PrometheusRule": ("/apis/monitoring.coreos.com/v1", "prometheusrules", True),
    "CustomResourceDefinition": (
        "/apis/apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        False,
    ),
}


def collection_path(document: dict[str, Any]) -> str:
    """The path ``document`` is created at (POST)."""
    prefix, plural, namespaced = RESOURCES[document["kind"]]
    where = f"/namespaces/{document['metadata']['namespace']}" if namespaced else ""
    return f"{prefix}{where}/{plural}"


def object_path(document: dict[str, Any]) -> str:
    """The path of ``document`` itself (GET, apply, DELETE)."""
    return f"{collection_path(document)}/{document['metadata']['name']}"
