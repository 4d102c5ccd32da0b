"""Fixtures for the end-to-end tests: real components from tests.support.components.

Session-scoped: one control plane (with prometheus-operator's CRDs installed on demand) and one
Consul dev agent for the whole run. Function-scoped factories start extra agents and Prometheus
servers and stop them after the test. Binaries are built (or found in the cache) once, before
the first e2e test runs, so a cold build never counts against a test's timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.e2e.operator_harness import CRD_FILE, Simulator, api_client
from tests.support.components import (
    COMPONENTS,
    ComponentError,
    ConsulAgent,
    ControlPlane,
    Prometheus,
    PrometheusOperator,
    apply_crds,
    binary,
    install_crds,
)

# The operator's ServiceAccount as the control plane knows it (a static token: no
# controller-manager mints ServiceAccount tokens here).
OPERATOR_NAMESPACE = "consul-sd"
OPERATOR_SERVICE_ACCOUNT = "consul-sd-operator"
OPERATOR_TOKEN = "consul-sd-operator-e2e-token"


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker("e2e") for item in session.items):
        for name in COMPONENTS:
            try:
                binary(name)
            except ComponentError as error:
                pytest.exit(f"cannot build the e2e components: {error}", returncode=3)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver; ``OPERATOR_TOKEN`` authenticates as the operator's ServiceAccount."""
    plane = ControlPlane()
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
    groups = [
        "system:serviceaccounts",
        f"system:serviceaccounts:{OPERATOR_NAMESPACE}",
        "system:authenticated",
    ]
    plane.start(
        tmp_path_factory.mktemp("control-plane"),
        extra_tokens=[(OPERATOR_TOKEN, user, "uid-consul-sd-operator", groups)],
    )
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def operator_token() -> str:
    """Bearer token of system:serviceaccount:consul-sd:consul-sd-operator (no RBAC granted)."""
    return OPERATOR_TOKEN


@pytest.fixture(scope="session")
def monitoring_crds(control_plane: ControlPlane) -> list[str]:
    """prometheus-operator's CRDs (ScrapeConfig, Prometheus, ...) installed and Established."""
    return install_crds(control_plane)


@pytest.fixture(scope="session")
def consul_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    """A Consul dev agent without ACLs."""
    agent = ConsulAgent()
    agent.start(tmp_path_factory.mktemp("consul"))
    yield agent
    agent.stop()


@pytest.fixture
def consul_agent_factory(tmp_path: Path) -> Iterator[Callable[..., ConsulAgent]]:
    """Start extra agents (``factory(acl_master_token=..., http_max_conns_per_client=...)``)."""
    agents: list[ConsulAgent] = []

    def factory(**options: Any) -> ConsulAgent:
        agent = ConsulAgent(**options)
        agents.append(agent)
        agent.start(tmp_path / f"consul-{len(agents)}")
        return agent

    yield factory
    for agent in agents:
        agent.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Start Prometheus servers (``factory(config)``, config a dict or YAML text)."""
    servers: list[Prometheus] = []

    def factory(config: dict[str, Any] | str, **options: Any) -> Prometheus:
        server = Prometheus(config, **options)
        servers.append(server)
        server.start(tmp_path / f"prometheus-{len(servers)}")
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def prometheus_operator(
    control_plane: ControlPlane, monitoring_crds: list[str], tmp_path: Path
) -> Iterator[PrometheusOperator]:
    """prometheus-operator against the session control plane, stopped after the test."""
    operator = PrometheusOperator(control_plane)
    operator.start(tmp_path / "prometheus-operator")
    yield operator
    operator.stop()


@pytest.fixture(scope="session")
def consul_sd_crd(control_plane: ControlPlane) -> None:
    """The ConsulDiscovery CRD installed (from deploy/crds, as users install it)."""
    apply_crds(control_plane, [yaml.safe_load(CRD_FILE.read_text())], field_manager="e2e")


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> k8s.ApiClient:
    """An admin client of the session's apiserver."""
    return api_client(control_plane)


@pytest.fixture
def namespace(api: k8s.ApiClient) -> str:
    """A fresh namespace for one test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Callable[..., Simulator]]:
    """Start Consul simulators (``simulator(services=...)``), stopped after the test."""
    started: list[Simulator] = []

    def start(*, services: int = 20, instances: int = 2, nodes: int = 10) -> Simulator:
        sim = Simulator(tmp_path, services=services, instances=instances, nodes=nodes)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()
