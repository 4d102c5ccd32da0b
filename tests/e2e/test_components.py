"""The real components start and behave as the rest of the e2e suite assumes.

Each check polls with a bounded wait and says what it was waiting for when it gives up.
"""

from __future__ import annotations

import base64
import gzip
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
import yaml

from tests.e2e.operator_harness import eventually
from tests.support.components import (
    ComponentError,
    ConsulAgent,
    ControlPlane,
    Prometheus,
    PrometheusOperator,
    binary,
)

pytestmark = pytest.mark.e2e


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- control plane ------------------------------------------------------------------------------


def test_control_plane_version_and_objects(control_plane: ControlPlane) -> None:
    version = control_plane.request("GET", "/version").json()
    assert version["gitVersion"].startswith("v1.36."), version
    assert (version["major"], version["minor"]) == ("1", "36")

    # The written kubeconfig works with the official Python client.
    client = kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    api = kubernetes.client.CoreV1Api(client)
    namespace = unique("e2e")
    meta = kubernetes.client.V1ObjectMeta
    api.create_namespace(kubernetes.client.V1Namespace(metadata=meta(name=namespace)))
    api.create_namespaced_config_map(
        namespace,
        kubernetes.client.V1ConfigMap(metadata=meta(name="probe"), data={"key": "value"}),
    )
    assert api.read_namespaced_config_map("probe", namespace).data == {"key": "value"}


def test_extra_token_is_authenticated_but_not_authorized(
    control_plane: ControlPlane, operator_token: str
) -> None:
    review = control_plane.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=operator_token,
    )
    assert review.status == 201, review.text
    user = review.json()["status"]["userInfo"]
    assert user["username"] == "system:serviceaccount:consul-sd:consul-sd-operator"
    assert "system:serviceaccounts:consul-sd" in user["groups"]
    # RBAC is on: without a binding the identity may not list namespaces.
    assert control_plane.request("GET", "/api/v1/namespaces", token=operator_token).status == 403
    assert control_plane.request("GET", "/api/v1/namespaces", token="wrong").status == 401


def test_scrapeconfig_crd_accepts_a_minimal_object(
    control_plane: ControlPlane, monitoring_crds: list[str]
) -> None:
    assert "scrapeconfigs.monitoring.coreos.com" in monitoring_crds
    namespace = unique("e2e")
    created = control_plane.request(
        "POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}}
    )
    assert created.status == 201, created.text
    path = f"/apis/monitoring.coreos.com/v1alpha1/namespaces/{namespace}/scrapeconfigs"
    body = {
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "ScrapeConfig",
        "metadata": {"name": "minimal"},
        "spec": {
            "staticConfigs": [
                {"targets": ["10.0.0.1:9100"], "labels": {"__meta_consul_service": "web"}}
            ]
        },
    }
    answer = control_plane.request("POST", path, body=body)
    assert answer.status == 201, answer.text
    # The schema is enforced: targets must be a non-empty list.
    bad = {**body, "metadata": {"name": "bad"}, "spec": {"staticConfigs": [{"targets": []}]}}
    rejected = control_plane.request("POST", path, body=bad)
    assert rejected.status == 422, rejected.text


# --- Consul -------------------------------------------------------------------------------------


def register(agent: ConsulAgent, *, service: str, port: int, token: str | None = None) -> None:
    answer = agent.request(
        "PUT",
        "/v1/catalog/register",
        body={
            "Node": "ext-node-1",
            "Address": "127.0.0.1",
            "NodeMeta": {"rack": "r1"},
            "Service": {
                "ID": f"{service}-1",
                "Service": service,
                "Port": port,
                "Tags": ["e2e", "v1"],
                "Meta": {"team": "sre"},
            },
        },
        token=token,
    )
    assert answer.status == 200, answer.text
    assert answer.json() is True


def test_consul_registers_and_lists_a_service(consul_agent: ConsulAgent) -> None:
    service = unique("web")
    register(consul_agent, service=service, port=9100)
    services = consul_agent.request("GET", "/v1/catalog/services")
    assert services.status == 200
    assert sorted(services.json()[service]) == ["e2e", "v1"]
    assert int(services.headers["x-consul-index"]) > 0
    entries = consul_agent.request("GET", f"/v1/health/service/{service}").json()
    assert [(e["Node"]["Node"], e["Service"]["Port"]) for e in entries] == [("ext-node-1", 9100)]


def test_consul_acl_and_connection_limit_options(
    consul_agent_factory: Callable[..., ConsulAgent],
) -> None:
    agent = consul_agent_factory(acl_master_token="e2e-root-token", http_max_conns_per_client=50)
    debug = agent.request("GET", "/v1/agent/self").json()["DebugConfig"]
    assert debug["ACLsEnabled"] is True
    assert debug["ACLResolverSettings"]["ACLDefaultPolicy"] == "deny"
    assert debug["HTTPMaxConnsPerClient"] == 50
    register(agent, service="secured", port=80)
    # Anonymous requests see nothing (default deny); the management token sees the service.
    assert "secured" not in agent.request("GET", "/v1/catalog/services", token="").json()
    assert "secured" in agent.request("GET", "/v1/catalog/services").json()
    assert agent.request("GET", "/v1/acl/token/self", token="no-such-token").status == 403


# --- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_discovers_consul_services(
    consul_agent: ConsulAgent, prometheus_factory: Callable[..., Prometheus]
) -> None:
    service = unique("api")
    register(consul_agent, service=service, port=9200)
    config = {
        "global": {"scrape_interval": "1m"},
        "scrape_configs": [
            {
                "job_name": "consul",
                "consul_sd_configs": [
                    {
                        "server": consul_agent.address,
                        "services": [service],
                        "refresh_interval": "1s",
                    }
                ],
            }
        ],
    }
    prometheus = prometheus_factory(config)

    def discovered() -> list[dict[str, Any]]:
        return [
            t
            for t in prometheus.targets()
            if t["discoveredLabels"].get("__meta_consul_service") == service
        ]

    targets = eventually(
        discovered, timeout=30, what=f"a Prometheus target for Consul service {service}"
    )
    labels = targets[0]["discoveredLabels"]
    assert labels["__address__"] == "127.0.0.1:9200"
    assert labels["__meta_consul_node"] == "ext-node-1"
    assert labels["__meta_consul_tags"] == ",e2e,v1,"
    assert labels["__meta_consul_service_metadata_team"] == "sre"
    assert labels["__meta_consul_metadata_rack"] == "r1"
    assert labels["__meta_consul_health"] == "passing"
    assert labels["__meta_consul_dc"] == "dc1"

    # reload() applies a rewritten config; a broken one is refused with Prometheus' message.
    prometheus.write_config({**config, "scrape_configs": []})
    prometheus.reload()
    eventually(
        lambda: not discovered(), timeout=30, what="the consul job's targets to go after a reload"
    )
    prometheus.write_config("scrape_configs: [{job_name: x, consul_sd_configs: [{bogus: 1}]}]")
    with pytest.raises(ComponentError, match="bogus"):
        prometheus.reload()


# --- prometheus-operator ------------------------------------------------------------------------


def test_prometheus_operator_renders_scrapeconfigs(
    control_plane: ControlPlane, prometheus_operator: PrometheusOperator
) -> None:
    assert prometheus_operator.running()
    namespace = unique("e2e-po")
    assert (
        control_plane.request(
            "POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}}
        ).status
        == 201
    )
    group = "/apis/monitoring.coreos.com"
    scrape_config = {
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "ScrapeConfig",
        "metadata": {"name": "consul-web", "labels": {"app": "consul-sd"}},
        "spec": {"staticConfigs": [{"targets": ["10.0.0.7:9100"], "labels": {"team": "sre"}}]},
    }
    answer = control_plane.request(
        "POST", f"{group}/v1alpha1/namespaces/{namespace}/scrapeconfigs", body=scrape_config
    )
    assert answer.status == 201, answer.text
    prometheus = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": "main"},
        "spec": {"scrapeConfigSelector": {"matchLabels": {"app": "consul-sd"}}},
    }
    answer = control_plane.request(
        "POST", f"{group}/v1/namespaces/{namespace}/prometheuses", body=prometheus
    )
    assert answer.status == 201, answer.text

    def rendered() -> str | None:
        secret = control_plane.request(
            "GET", f"/api/v1/namespaces/{namespace}/secrets/prometheus-main"
        )
        if secret.status != 200:
            return None
        data = secret.json().get("data") or {}
        if "prometheus.yaml.gz" not in data:
            return None
        text = gzip.decompress(base64.b64decode(data["prometheus.yaml.gz"])).decode()
        return text if "10.0.0.7:9100" in text else None

    text = eventually(
        rendered, what="prometheus-operator to write Secret prometheus-main", timeout=60
    )
    assert text is not None  # eventually returns only a truthy answer
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    assert jobs[f"scrapeConfig/{namespace}/consul-web"]["static_configs"] == [
        {"targets": ["10.0.0.7:9100"], "labels": {"team": "sre"}}
    ]


def test_binaries_report_their_versions() -> None:
    expected = {
        "etcd": (["--version"], "etcd Version: 3.6."),
        "kube-apiserver": (["--version"], "Kubernetes v1.36."),
        "consul": (["version"], "Consul v1.16."),
        "prometheus": (["--version"], "prometheus, version 3."),
        "prometheus-operator": (["--version"], "prometheus-operator, version 0.93."),
    }
    for name, (args, prefix) in expected.items():
        out = subprocess.run(
            [str(binary(name)), *args], capture_output=True, text=True, check=True, timeout=30
        )
        assert (out.stdout + out.stderr).startswith(prefix), (name, out.stdout, out.stderr)
