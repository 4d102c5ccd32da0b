"""The client the operator and ``consul-sd discover`` build holds ``maxConcurrent + 1`` connections.

Connections are counted where they land, at the simulator (in virtual time), not by the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from consul_sd.api.spec import Mode
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import run_discovery
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.endpoints import build_client
from consul_simulator import ConsulSimulator

pytestmark = pytest.mark.looptime
MAX_CONCURRENT = 5


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(services=40, instances=1, nodes=4)
        simulator.faults.latency = 0.5
        simulator.counters.reset()
        yield simulator


async def test_the_built_client_holds_max_concurrent_plus_one_connections_under_any_demand(
    sim: ConsulSimulator,
) -> None:
    observed: list[tuple[str, str]] = []

    def observe(*, endpoint: str, outcome: str, seconds: float) -> None:
        observed.append((endpoint, outcome))

    endpoint = ConsulEndpoint(server=sim.address)
    async with build_client(
        endpoint, max_concurrent=MAX_CONCURRENT, wake_on_change=False, observer=observe
    ) as client:
        # Far more callers than the cap, all at once.
        await asyncio.gather(*(client.service_instances(f"svc-{i:05d}") for i in range(40)))
    assert sim.counters.peak_connections == MAX_CONCURRENT + 1
    assert sim.counters.requests["health_service"] == 40
    assert observed == [("health_service", "ok")] * 40  # the operator's request metrics


@pytest.mark.parametrize(
    ("mode", "wake", "long_polls"),
    [("Polling", False, 1), ("Blocking", False, 1), ("Polling", True, 4), ("Auto", True, 4)],
)
async def test_a_worker_on_the_built_client_stays_within_max_concurrent_plus_its_long_polls(
    sim: ConsulSimulator, mode: Mode, wake: bool, long_polls: int
) -> None:
    published: list[Snapshot] = []

    async def publish(snapshot: Snapshot) -> None:
        published.append(snapshot)

    endpoint = ConsulEndpoint(server=sim.address)
    query = DiscoveryQuery(
        mode=mode,
        max_concurrent=MAX_CONCURRENT,
        refresh_interval=10,
        watch_timeout=30,
        datacenter="dc1",
        wake_on_change=wake,
    )
    async with build_client(endpoint, max_concurrent=MAX_CONCURRENT, wake_on_change=wake) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        await asyncio.sleep(60)
        # Every service changes: Polling fetches them all again, every Blocking watch wakes.
        sim.generate(services=40, instances=2, nodes=4, seed=2)
        await asyncio.sleep(300)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Both fleets were discovered whole: the worker really fetched everything, twice.
    assert published[0].complete
    assert published[-1].complete
    assert published[-1].targets > published[0].targets
    assert sim.counters.peak_in_flight >= MAX_CONCURRENT  # the cap was reached, not idle
    assert sim.counters.peak_connections <= MAX_CONCURRENT + long_polls


@pytest.mark.parametrize("max_concurrent", [1, 2, 3])
async def test_table_watches_never_hold_the_connections_a_cycle_waits_for(
    sim: ConsulSimulator, max_concurrent: int
) -> None:
    query = DiscoveryQuery(
        mode="Polling", max_concurrent=max_concurrent, datacenter="dc1", wake_on_change=True
    )
    published: list[Snapshot] = []

    async def publish(snapshot: Snapshot) -> None:
        published.append(snapshot)

    endpoint = ConsulEndpoint(server=sim.address)
    async with build_client(endpoint, max_concurrent=max_concurrent, wake_on_change=True) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        await asyncio.sleep(5)  # the watches park; then a change must still be fetched
        sim.generate(services=41, instances=1, nodes=4, seed=3)
        await asyncio.sleep(90)  # two full reads, one request at a time, 0.5 s each
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert published[-1].complete
    assert len(published[-1].groups) == 41
