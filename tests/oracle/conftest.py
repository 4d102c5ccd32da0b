"""Fixtures for the conformance oracle: a real Consul agent holding the fleet, our processes.

``consul_agent_factory`` and ``prometheus_factory`` are the e2e suite's (function-scoped, every
process stopped after the test). ``fleet_agent`` is one agent per test module with the whole
``fleet`` registered (catalog bodies, agent services, one service in maintenance), ready once
the agent's anti-entropy has put its own services into the catalog. ``discoverers`` starts
``consul-sd discover --output`` processes and stops them after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import consul_agent_factory, prometheus_factory
from tests.oracle import fleet
from tests.oracle.harness import Discoverer, put, register_all, wait_until
from tests.support.components import ComponentError, ConsulAgent, binary

__all__ = ["consul_agent_factory", "prometheus_factory"]

# Agent services, the catalog bodies, and the agent's own ``consul`` service.
FLEET_TARGETS = fleet.catalog_targets() + len(fleet.AGENT_SERVICES) + 1


def pytest_collection_finish(session: pytest.Session) -> None:
    oracle = Path(__file__).parent
    items = [item for item in session.items if oracle in Path(item.path).parents]
    if any(item.get_closest_marker("e2e") for item in items):
        for name in ("consul", "prometheus"):
            try:
                binary(name)
            except ComponentError as error:
                pytest.exit(f"cannot build {name} for the oracle: {error}", returncode=3)


def register_fleet(agent: ConsulAgent, *, token: str | None = None) -> None:
    """The whole fleet, and wait until the agent's own services reached the catalog."""
    register_all(agent, fleet.catalog_bodies(), token=token)
    for service in fleet.AGENT_SERVICES:
        put(agent, "/v1/agent/service/register", service, token=token)
    put(
        agent,
        f"/v1/agent/service/maintenance/{fleet.AGENT_MAINTENANCE_SERVICE}"
        "?enable=true&reason=oracle",
        token=token,
    )
    wanted_check = f"_service_maintenance:{fleet.AGENT_MAINTENANCE_SERVICE}"

    def synced() -> bool:
        checks = agent.request("GET", "/v1/health/state/any", token=token).json()
        return any(check["CheckID"] == wanted_check for check in checks)

    wait_until(synced, what="the agent's services and maintenance check in the catalog", timeout=20)


@pytest.fixture(scope="module")
def fleet_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    """A dev agent (connection cap raised for the many jobs) with the fleet registered."""
    agent = ConsulAgent(http_max_conns_per_client=2000)
    agent.start(tmp_path_factory.mktemp("consul-fleet"))
    try:
        register_fleet(agent)
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def discoverers(tmp_path: Path) -> Iterator[Callable[..., Discoverer]]:
    """Start ``consul-sd discover --output`` processes: ``start(server, output, mode, *args)``."""
    started: list[Discoverer] = []

    def start(server: str, output: Path, mode: str, *args: str) -> Discoverer:
        process = Discoverer(
            tmp_path / "consul-sd", server=server, output=output, mode=mode, args=args
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
