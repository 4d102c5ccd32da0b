"""The modes behave alike where they should: error backoff, snapshot duration, the reported mode.

Against the Consul simulator in virtual time (looptime): ten minutes of retries take
milliseconds, and every duration is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from consul_sd.api.spec import Mode
from consul_sd.consul.client import ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.blocking import PUBLISH_COALESCE_SECONDS
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import run_discovery
from consul_sd.discovery.snapshots import Snapshot
from consul_simulator import ConsulSimulator

pytestmark = pytest.mark.looptime

MODES: list[Mode] = ["Polling", "Blocking", "Auto"]
FIVE_MINUTES = 300.0
LATENCY = 0.25


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        yield simulator


def client_for(sim: ConsulSimulator, *, token: str | None = None) -> ConsulClient:
    # One attempt per request: every request the simulator counts is one retry of a loop.
    return ConsulClient(
        endpoint=ConsulEndpoint(server=sim.address, token=token),
        max_connections=20,
        retry=RetryPolicy(attempts=1),
    )


def instance(service: str, node: str) -> dict[str, Any]:
    return {
        "Node": node,
        "Address": "10.1.0.9",
        "Service": {"ID": f"{service}-{node}", "Service": service, "Port": 80},
    }


async def run_for(
    seconds: float, *, sim: ConsulSimulator, query: DiscoveryQuery, token: str | None = None
) -> list[Snapshot]:
    """Run a discovery for ``seconds`` of virtual time; what it published."""
    published: list[Snapshot] = []

    async def publish(snapshot: Snapshot) -> None:
        published.append(snapshot)

    async with client_for(sim, token=token) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return published


# ------------------------------------------------------------------------------ error backoff


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("datacenter", "endpoint"), [("dc1", "catalog_services"), ("", "agent_self")]
)
async def test_a_failing_consul_is_asked_again_within_15s_in_every_mode(
    sim: ConsulSimulator, mode: Mode, datacenter: str, endpoint: str
) -> None:
    sim.generate(services=3, instances=1, nodes=2)
    sim.faults.error_rate = 1.0  # every request answers 500, for ten minutes
    query = DiscoveryQuery(
        mode=mode, refresh_interval=FIVE_MINUTES, watch_timeout=30, datacenter=datacenter
    )
    await run_for(600, sim=sim, query=query)
    # Whatever refreshInterval says, no failed loop waits more than 15s between two attempts:
    # ten minutes hold at least 600 / 15 of them (a 5m cap would allow about a dozen).
    assert sim.counters.requests[endpoint] >= 600 / 15


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("datacenter", "endpoint"), [("dc1", "catalog_services"), ("", "agent_self")]
)
async def test_below_15s_a_failing_consul_is_asked_again_within_the_refresh_interval(
    sim: ConsulSimulator, mode: Mode, datacenter: str, endpoint: str
) -> None:
    sim.generate(services=3, instances=1, nodes=2)
    sim.faults.error_rate = 1.0
    query = DiscoveryQuery(mode=mode, refresh_interval=3, watch_timeout=30, datacenter=datacenter)
    await run_for(600, sim=sim, query=query)
    # A failing read is retried at least as often as a healthy one would be made.
    assert sim.counters.requests[endpoint] >= 600 / 3


async def test_a_failing_blocking_service_watch_is_asked_again_within_15s(
    sim: ConsulSimulator,
) -> None:
    sim.register(instance("web", "n1"))
    sim.faults.error_rate = 1.0
    query = DiscoveryQuery(
        mode="Blocking",
        services=("web",),  # no catalog: the service watch is the loop that fails
        refresh_interval=FIVE_MINUTES,
        watch_timeout=30,
        datacenter="dc1",
    )
    await run_for(600, sim=sim, query=query)
    assert sim.counters.requests["health_service"] >= 600 / 15


# ------------------------------------------------------------------------------- duration


async def test_a_polling_snapshot_lasts_its_cycle(sim: ConsulSimulator) -> None:
    sim.generate(services=3, instances=1, nodes=2)
    sim.faults.latency = LATENCY
    query = DiscoveryQuery(mode="Polling", refresh_interval=30, datacenter="dc1")
    published = await run_for(10, sim=sim, query=query)
    first = published[0]
    assert first.complete
    # The catalog, the gate's two table reads, then the three services side by side.
    assert first.duration == pytest.approx(4 * LATENCY)


@pytest.mark.parametrize("mode", ["Blocking", "Auto"])
async def test_a_blocking_snapshot_lasts_from_its_first_change_to_its_publication(
    sim: ConsulSimulator, mode: Mode
) -> None:
    sim.generate(services=3, instances=1, nodes=2)
    sim.faults.latency = LATENCY
    query = DiscoveryQuery(mode=mode, refresh_interval=1, watch_timeout=30, datacenter="dc1")
    published: list[Snapshot] = []

    async def publish(snapshot: Snapshot) -> None:
        published.append(snapshot)

    async with client_for(sim) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        await asyncio.sleep(60)
        first = published[0]
        sim.register(instance("svc-00001", "n9"))
        await asyncio.sleep(60)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert first.complete
    assert first.mode == "Blocking"
    # From the watch's start: the catalog answers, the service watches start, and the
    # publisher waits for the burst to land (Auto counted the services before it started).
    assert first.duration == pytest.approx(LATENCY + PUBLISH_COALESCE_SECONDS)
    changed = published[-1]
    assert changed.complete
    assert changed.targets == first.targets + 1
    # From the change (the parked watch answers after the latency) to its publication.
    assert changed.duration == pytest.approx(PUBLISH_COALESCE_SECONDS)


# ------------------------------------------------------------------------ the reported mode


@pytest.mark.parametrize("datacenter", ["dc1", ""])
async def test_auto_reports_no_mode_before_it_has_chosen_one(
    sim: ConsulSimulator, datacenter: str
) -> None:
    sim.generate(services=3, instances=1, nodes=2)
    sim.acl_token = "right"
    query = DiscoveryQuery(mode="Auto", refresh_interval=5, datacenter=datacenter)
    published = await run_for(120, sim=sim, query=query, token="wrong")
    assert published
    assert {snapshot.problem.reason for snapshot in published if snapshot.problem} == {"ACLDenied"}
    assert {snapshot.mode for snapshot in published} == {None}


@pytest.mark.parametrize("mode", ["Polling", "Blocking"])
async def test_a_fixed_mode_reports_itself_even_before_anything_was_discovered(
    sim: ConsulSimulator, mode: Mode
) -> None:
    sim.acl_token = "right"
    query = DiscoveryQuery(mode=mode, refresh_interval=5, datacenter="")
    published = await run_for(120, sim=sim, query=query, token="wrong")
    assert published
    assert {snapshot.mode for snapshot in published} == {mode}
