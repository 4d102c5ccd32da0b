"""A Consul restarted without its data replays the same indexes with new content.

An index equal to the last one then proves nothing: every worker must read everything again,
at once when a request broke during the restart, and within ``resync_interval`` whatever the
indexes say. The restart is the simulator's state replaced by another fleet written in the same
number of raft writes (so every table and service index is the same as before), in virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from consul_sd.api.spec import Mode
from consul_sd.consul.client import ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import discover_once, run_discovery
from consul_sd.discovery.snapshots import Snapshot
from consul_simulator import ConsulSimulator
from consul_simulator.catalog import Catalog

pytestmark = pytest.mark.looptime

FLEET = {"services": 20, "instances": 2, "nodes": 4}
MAX_CONCURRENT = 8


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(**FLEET, seed=1)
        yield simulator


def client_for(sim: ConsulSimulator) -> ConsulClient:
    return ConsulClient(
        endpoint=ConsulEndpoint(server=sim.address),
        max_connections=MAX_CONCURRENT + 1,
        retry=RetryPolicy(attempts=2, base_delay=0.1, max_delay=0.5),
    )


def restart_with_other_content(sim: ConsulSimulator, *later: dict[str, Any]) -> None:
    """The same number of writes from an empty store: same indexes, other ports and tags.

    ``later``: registrations made after the fleet, replayed in the same order.
    """
    before = dict(sim.catalog.table_index)
    sim.catalog = Catalog(datacenter=sim.datacenter, on_change=sim._watchers.notify)
    sim.generate(**FLEET, seed=2)
    for registration in later:
        sim.register(registration)
    assert sim.catalog.table_index == before


def addresses(snapshot: Snapshot) -> set[str]:
    return {t.address for group in snapshot.groups.values() for t in group}


async def truth(sim: ConsulSimulator) -> set[str]:
    async with client_for(sim) as client:
        query = DiscoveryQuery(mode="Polling", datacenter="dc1")
        return addresses(await discover_once(query=query, client=client))


async def discover_until(
    sim: ConsulSimulator,
    *,
    query: DiscoveryQuery,
    expected: set[str],
    after: float,
    refused_for: float = 0.0,
) -> None:
    """Run the worker; restart Consul once its first complete set is out; wait for ``expected``.

    ``refused_for``: seconds the restart takes, every connection reset meanwhile.
    """
    latest: list[Snapshot] = []
    first = asyncio.Event()

    async def publish(snapshot: Snapshot) -> None:
        latest[:] = [snapshot]
        if snapshot.complete:
            first.set()

    async with client_for(sim) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        try:
            await asyncio.wait_for(first.wait(), 60)
            before = addresses(latest[0])
            sim.faults.reset_rate = 1.0 if refused_for else 0.0
            await asyncio.sleep(refused_for)
            restart_with_other_content(sim)
            sim.faults.reset_rate = 0.0
            assert expected != before
            async with asyncio.timeout(after):
                while addresses(latest[0]) != expected:
                    await asyncio.sleep(1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def expected_after_restart(sim: ConsulSimulator) -> set[str]:
    original = sim.catalog
    restart_with_other_content(sim)
    expected = await truth(sim)
    sim.catalog = original
    return expected


@pytest.mark.parametrize("mode", ["Polling", "Blocking"])
async def test_a_restart_no_request_saw_is_read_again_within_the_resync_interval(
    sim: ConsulSimulator, mode: Mode
) -> None:
    expected = await expected_after_restart(sim)
    query = DiscoveryQuery(
        mode=mode,
        datacenter="dc1",
        refresh_interval=5,
        watch_timeout=30,
        resync_interval=120,
        max_concurrent=MAX_CONCURRENT,
    )
    await discover_until(sim, query=query, expected=expected, after=120 + 2 * 30)


@pytest.mark.parametrize("mode", ["Polling", "Blocking"])
async def test_a_restart_that_broke_a_request_is_read_again_at_once(
    sim: ConsulSimulator, mode: Mode
) -> None:
    expected = await expected_after_restart(sim)
    query = DiscoveryQuery(
        mode=mode,
        datacenter="dc1",
        refresh_interval=5,
        watch_timeout=30,
        resync_interval=1e9,
        max_concurrent=MAX_CONCURRENT,
    )
    await discover_until(sim, query=query, expected=expected, after=60, refused_for=10)


async def test_a_polling_fetch_that_broke_while_the_catalog_answered_forgets_every_index(
    sim: ConsulSimulator,
) -> None:
    """One service's request reset, the catalog fine: Consul may still have restarted.

    The restart lands right after that cycle, replaying the same indexes with other content; the
    next cycle must decode every service rather than trust the indexes it held.
    """
    extra: dict[str, Any] = {"Node": "node-extra", "Address": "10.9.9.9"}
    extra["Service"] = {"ID": "late-1", "Service": "late", "Port": 9}
    original = sim.catalog
    sim.catalog = Catalog(datacenter=sim.datacenter, on_change=sim._watchers.notify)
    sim.generate(**FLEET, seed=2)
    sim.register(extra)
    expected = await truth(sim)
    sim.catalog = original
    query = DiscoveryQuery(
        mode="Polling",
        datacenter="dc1",
        refresh_interval=5,
        resync_interval=1e9,
        max_concurrent=MAX_CONCURRENT,
    )
    latest: list[Snapshot] = []
    published = asyncio.Event()

    async def publish(snapshot: Snapshot) -> None:
        latest[:] = [snapshot]
        published.set()

    async with client_for(sim) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        try:
            async with asyncio.timeout(60):
                while not (latest and latest[0].complete):
                    published.clear()
                    await published.wait()
                # The registration moves the services table: the next cycle fetches everything.
                sim.register(extra)
                sim.faults.reset_services = {"svc-00003"}
                while "late" not in latest[0].groups:
                    published.clear()
                    await published.wait()
            sim.faults.reset_services = set()
            assert "svc-00003" in latest[0].failed
            restart_with_other_content(sim, extra)
            async with asyncio.timeout(30):
                while addresses(latest[0]) != expected:
                    published.clear()
                    await published.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
