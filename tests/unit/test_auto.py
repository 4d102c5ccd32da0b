"""Auto's switches and ``discover_once``'s cleanup, against the simulator in virtual time.

A switch replaces one worker by another: the old one must be gone (every task of it cancelled)
before the new one publishes, and never publish again. ``discover_once`` (``consul-sd discover
--once``) must return with no task of its worker left running, whether it succeeded or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from consul_sd.api.spec import Mode
from consul_sd.consul.client import ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.auto import choose_mode
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import discover_once, run_discovery
from consul_sd.discovery.snapshots import DiscoveryIncomplete, Snapshot
from consul_simulator import ConsulSimulator

pytestmark = pytest.mark.looptime

# The worker coroutines of both modes: none may outlive its worker.
WORKER_COROUTINES = {
    "poll_services",
    "watch_services",
    "_watch_catalog",
    "watch_service",
    "_publish_changes",
    "fetch_all.<locals>.drain",
    "run_discovery",
}


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        yield simulator


def client_for(sim: ConsulSimulator, *, token: str | None = None) -> ConsulClient:
    return ConsulClient(
        endpoint=ConsulEndpoint(server=sim.address, token=token),
        max_connections=20,
        retry=RetryPolicy(attempts=2, base_delay=0.1, max_delay=1.0),
    )


def instance(service: str, node: str) -> dict[str, Any]:
    return {
        "Node": node,
        "Address": "10.1.0.9",
        "Service": {"ID": f"{service}-{node}", "Service": service, "Port": 80},
    }


def worker_tasks() -> list[str]:
    """The discovery worker tasks still alive on this loop, by coroutine name."""
    alive = []
    for task in asyncio.all_tasks():
        name = getattr(task.get_coro(), "__qualname__", "")
        if name in WORKER_COROUTINES and not task.done():
            alive.append(name)
    return sorted(alive)


def test_auto_goes_back_to_blocking_only_below_900() -> None:
    query = DiscoveryQuery()
    assert choose_mode(matched=900, current="Polling", query=query) == "Polling"
    assert choose_mode(matched=899, current="Polling", query=query) == "Blocking"


async def test_a_switch_cancels_the_previous_worker_which_never_publishes_again(
    sim: ConsulSimulator,
) -> None:
    sim.generate(services=18, instances=1, nodes=3)
    published: list[Snapshot] = []
    alive_at_switch: list[list[str]] = []

    async def publish(snapshot: Snapshot) -> None:
        if snapshot.mode == "Polling" and not alive_at_switch:
            # The first Polling publication: the Blocking worker's tasks must all be gone.
            alive_at_switch.append(worker_tasks())
        published.append(snapshot)

    query = DiscoveryQuery(
        mode="Auto",
        refresh_interval=1,
        watch_timeout=10,
        datacenter="dc1",
        auto_polling_at=20,
        auto_blocking_below=15,
    )
    async with client_for(sim) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        await asyncio.sleep(30)
        assert {s.mode for s in published} == {"Blocking"}
        for name in ("extra-1", "extra-2"):
            sim.register(instance(name, "n9"))
        await asyncio.sleep(30)
        # Changes a live Blocking watch would publish within a second or two.
        sim.register(instance("extra-3", "n9"))
        sim.register(instance("svc-00001", "n9"))
        await asyncio.sleep(300)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    switched = next((i for i, s in enumerate(published) if s.mode == "Polling"), None)
    assert switched is not None, "Auto never switched to Polling"
    assert [s.mode for s in published[switched:]] == ["Polling"] * (len(published) - switched)
    # The Polling worker saw the later changes (so a live Blocking one would have too).
    assert published[-1].matched == 21
    # Only the discovery (Auto runs inside it) and the new Polling worker were running when
    # Polling first published: no Blocking watch, catalog watch or publisher.
    assert alive_at_switch == [["poll_services", "run_discovery"]]
    assert worker_tasks() == []


@pytest.mark.parametrize("mode", ["Polling", "Blocking", "Auto"])
async def test_discover_once_leaves_no_task_running(sim: ConsulSimulator, mode: Mode) -> None:
    sim.generate(services=30, instances=2, nodes=4)
    async with client_for(sim) as client:
        async with asyncio.timeout(600):
            snapshot = await discover_once(query=DiscoveryQuery(mode=mode), client=client)
        # Checked at once: a worker cancelled but not awaited would still be listed here.
        assert worker_tasks() == []
    assert snapshot.complete


@pytest.mark.parametrize("mode", ["Polling", "Blocking", "Auto"])
async def test_a_failed_discover_once_leaves_no_task_running(
    sim: ConsulSimulator, mode: Mode
) -> None:
    sim.generate(services=30, instances=2, nodes=4)
    sim.acl_token = "right"
    async with client_for(sim, token="wrong") as client:
        with pytest.raises(DiscoveryIncomplete, match="ACL not found"):
            async with asyncio.timeout(600):
                await discover_once(
                    query=DiscoveryQuery(mode=mode, datacenter="dc1"), client=client
                )
        assert worker_tasks() == []
