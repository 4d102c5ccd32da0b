"""Every worker rule, against the Consul simulator, in virtual time (looptime).

The simulator runs in the test's event loop, so its latency and blocking waits are virtual too:
a test that waits minutes of Consul time finishes in milliseconds of real time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from consul_sd.api.spec import Mode
from consul_sd.consul.client import ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.consul.errors import ConsulACLDenied
from consul_sd.discovery.auto import choose_mode
from consul_sd.discovery.failures import index_went_back, next_index
from consul_sd.discovery.gate import ChangeGate, changed_services
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import discover_once, run_discovery
from consul_sd.discovery.snapshots import Snapshot, is_publishable
from consul_sd.outputs.render import render_file_sd
from consul_simulator import ConsulSimulator

pytestmark = pytest.mark.looptime


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        yield simulator


def client_for(sim: ConsulSimulator, *, connections: int = 20) -> ConsulClient:
    return ConsulClient(
        endpoint=ConsulEndpoint(server=sim.address),
        max_connections=connections,
        retry=RetryPolicy(attempts=3, base_delay=0.1, max_delay=1.0),
    )


def instance(service: str, node: str, *, port: int = 80, sid: str | None = None) -> dict[str, Any]:
    return {
        "Node": node,
        "Address": f"10.1.0.{len(node)}",
        "Service": {"ID": sid or f"{service}-{node}", "Service": service, "Port": port},
    }


class Recorder:
    """Collects published snapshots; ``next()`` waits for the next one."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self._event = asyncio.Event()

    async def publish(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        self._event.set()

    async def next(self, *, timeout: float = 600) -> Snapshot:
        seen = len(self.snapshots)
        async with asyncio.timeout(timeout):
            while len(self.snapshots) == seen:
                self._event.clear()
                await self._event.wait()
        return self.snapshots[-1]

    async def until(
        self, predicate: Callable[[Snapshot], bool], *, timeout: float = 600
    ) -> Snapshot:
        async with asyncio.timeout(timeout):
            while True:
                snapshot = await self.next(timeout=timeout)
                if predicate(snapshot):
                    return snapshot


async def running(
    coroutine: Awaitable[None],
) -> asyncio.Task[None]:
    return asyncio.ensure_future(coroutine)


def ids(snapshot: Snapshot, service: str) -> list[str]:
    return [t.label_dict()["__meta_consul_service_id"] for t in snapshot.groups.get(service, ())]


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --------------------------------------------------------------------------------- Polling


async def test_polling_never_has_more_requests_in_flight_than_max_concurrent(
    sim: ConsulSimulator,
) -> None:
    sim.generate(services=300, instances=2, nodes=20)
    sim.faults.latency = 0.05
    sim.counters.reset()
    query = DiscoveryQuery(mode="Polling", max_concurrent=10, datacenter="dc1")
    # The client allows far more: the bound below is the worker's own.
    async with client_for(sim, connections=100) as client:
        snapshot = await discover_once(query=query, client=client)
    assert snapshot.matched == 300
    assert snapshot.targets == 600
    assert 1 < sim.counters.peak_in_flight <= 10
    assert sim.counters.peak_connections <= 11
    assert sim.counters.requests["health_service"] == 300


async def test_failed_service_keeps_its_previous_targets(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    sim.register(instance("db", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", refresh_interval=30, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        first = await recorder.next()
        assert ids(first, "web") == ["web-n1"]
        sim.faults.fail_services = {"web"}
        sim.register(instance("web", "n2"))
        second = await recorder.next()
        await stop(task)
    assert ids(second, "web") == ["web-n1"]
    assert set(second.failed) == {"web"}
    assert second.complete
    assert is_publishable(second, published_before=True)


async def test_a_service_that_never_answered_makes_the_snapshot_incomplete(
    sim: ConsulSimulator,
) -> None:
    sim.register(instance("web", "n1"))
    sim.register(instance("db", "n1"))
    sim.faults.fail_services = {"db"}
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        snapshot = await recorder.next()
        await stop(task)
    assert not snapshot.complete
    assert not is_publishable(snapshot, published_before=False)


async def test_vanished_services_are_cleared(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    sim.register(instance("gone", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", refresh_interval=10, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        assert set((await recorder.next()).groups) == {"web", "gone"}
        sim.deregister({"Node": "n1", "ServiceID": "gone-n1"})
        snapshot = await recorder.next()
        await stop(task)
    assert set(snapshot.groups) == {"web"}
    assert snapshot.complete


async def test_a_catalog_outage_never_publishes_an_empty_or_partial_set(
    sim: ConsulSimulator,
) -> None:
    sim.register(instance("web", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", refresh_interval=10, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        good = await recorder.next()
        sim.faults.error_rate = 1.0
        outage = await recorder.next()
        sim.faults.error_rate = 0.0
        recovered = await recorder.until(lambda s: s.error is None)
        await stop(task)
    assert outage.error is not None
    assert outage.error.reason == "ConsulServerError"
    assert outage.groups == good.groups
    assert not is_publishable(outage, published_before=True)
    assert recovered.groups == good.groups


async def test_a_cold_start_outage_publishes_nothing_writable(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    sim.faults.error_rate = 1.0
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        snapshot = await recorder.next()
        await stop(task)
    assert snapshot.groups == {}
    assert not snapshot.complete
    assert not is_publishable(snapshot, published_before=False)


async def test_rate_limited_connections_are_retried_until_every_target_is_found(
    sim: ConsulSimulator,
) -> None:
    sim.generate(services=40, instances=1, nodes=5)
    sim.faults.max_conns_per_client = 5
    sim.faults.latency = 0.2
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", max_concurrent=20, refresh_interval=5, datacenter="dc1")
    async with client_for(sim, connections=21) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        snapshot = await recorder.until(lambda s: s.complete and not s.failed)
        await stop(task)
    assert sim.counters.connections_refused_429 > 0
    assert snapshot.targets == 40
    for earlier in recorder.snapshots:
        # Until every service answered, nothing was offered as complete.
        assert earlier.complete == (len(earlier.groups) == earlier.matched)


async def test_cancellation_mid_cycle_stops_every_request_promptly(sim: ConsulSimulator) -> None:
    sim.generate(services=50, instances=1, nodes=5)
    sim.faults.latency = 20
    query = DiscoveryQuery(mode="Polling", max_concurrent=10, datacenter="dc1")
    before = asyncio.all_tasks()
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=Recorder().publish))
        # The catalog and the change gate's two table reads answered; ten service requests wait.
        await asyncio.sleep(61)
        assert sim.counters.in_flight == 10
        loop = asyncio.get_running_loop()
        started = loop.time()
        await stop(task)
        assert loop.time() - started < 1
    await asyncio.sleep(0.1)
    leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
    # The simulator's own request handlers finish their latency; none of ours may linger.
    assert [t for t in leftover if "RequestHandler" not in repr(t)] == []
    assert sim.counters.open_connections == 0
    assert task.cancelled()


# -------------------------------------------------------------------------------- Blocking


async def test_blocking_publishes_a_registration_on_its_next_answer(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Blocking", refresh_interval=1, watch_timeout=120, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        assert ids(await recorder.next(), "web") == ["web-n1"]
        loop = asyncio.get_running_loop()
        changed_at = loop.time()
        sim.register(instance("web", "n2"))
        snapshot = await recorder.next()
        await stop(task)
    assert ids(snapshot, "web") == ["web-n1", "web-n2"]
    assert loop.time() - changed_at < 5  # not a watch timeout later


async def test_blocking_holds_at_most_max_concurrent_long_polls(sim: ConsulSimulator) -> None:
    sim.generate(services=50, instances=1, nodes=5)
    recorder = Recorder()
    query = DiscoveryQuery(mode="Blocking", max_concurrent=10, watch_timeout=60, datacenter="dc1")
    sim.counters.reset()
    queried: dict[str, list[float]] = {}
    # The client allows far more: the bound below is the worker's own.
    async with client_for(sim, connections=100) as client:
        loop = asyncio.get_running_loop()
        original = client.service_instances

        async def spy(name: str, **kwargs: Any) -> Any:
            queried.setdefault(name, []).append(loop.time())
            return await original(name, **kwargs)

        client.service_instances = spy  # type: ignore[method-assign]
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        first = await recorder.next()
        await asyncio.sleep(900)  # fifteen minutes of long-polls rotating through the slots
        await stop(task)
    assert first.complete
    assert first.targets == 50
    # Ten service long-polls plus the catalog's.
    assert sim.counters.peak_in_flight <= 11
    assert sim.counters.peak_connections <= 11
    # Fifty watches share ten slots, so each wait shrinks to 12s and every service is asked
    # again about every watchTimeout (60s), not every 50 / 10 x 60s = 300s.
    gaps = [b - a for times in queried.values() for a, b in itertools.pairwise(times)]
    assert len(queried) == 50
    assert max(gaps) < 60 + 30  # plus the 30s refreshInterval throttle


async def test_blocking_clears_a_deregistered_service(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    sim.register(instance("gone", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Blocking", refresh_interval=1, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        await recorder.next()
        sim.deregister({"Node": "n1", "ServiceID": "gone-n1"})
        snapshot = await recorder.until(lambda s: "gone" not in s.groups)
        await stop(task)
    assert set(snapshot.groups) == {"web"}
    assert snapshot.complete


async def test_blocking_failed_watch_keeps_targets_and_recovers(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Blocking", refresh_interval=1, watch_timeout=10, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        await recorder.next()
        sim.faults.fail_services = {"web"}
        failing = await recorder.until(lambda s: "web" in s.failed)
        sim.faults.fail_services = set()
        sim.register(instance("web", "n2"))
        recovered = await recorder.until(lambda s: not s.failed and len(ids(s, "web")) == 2)
        await stop(task)
    assert ids(failing, "web") == ["web-n1"]
    assert recovered.complete


async def test_a_backwards_index_resets_the_watch_to_a_plain_read(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Blocking", refresh_interval=1, watch_timeout=10, datacenter="dc1")
    sent: list[int] = []
    async with client_for(sim) as client:
        original = client.service_instances

        async def spy(name: str, **kwargs: Any) -> Any:
            sent.append(kwargs["index"])
            return await original(name, **kwargs)

        client.service_instances = spy  # type: ignore[method-assign]
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        await recorder.next()
        await asyncio.sleep(30)
        sim.faults.index_backwards = True
        await asyncio.sleep(30)
        await stop(task)
    restored = sent.index(0, 1)  # the first plain read after the initial one
    assert all(index > 0 for index in sent[1:restored])
    assert sent[restored + 1] > 0


# ------------------------------------------------------------------------------------ Auto


def test_auto_chooses_by_service_count_with_hysteresis() -> None:
    query = DiscoveryQuery()
    assert choose_mode(matched=999, current=None, query=query) == "Blocking"
    assert choose_mode(matched=1000, current=None, query=query) == "Polling"
    assert choose_mode(matched=950, current="Polling", query=query) == "Polling"
    assert choose_mode(matched=899, current="Polling", query=query) == "Blocking"
    assert choose_mode(matched=999, current="Blocking", query=query) == "Blocking"


async def test_auto_switches_mode_when_the_count_crosses_and_keeps_targets(
    sim: ConsulSimulator,
) -> None:
    sim.generate(services=18, instances=1, nodes=3)
    recorder = Recorder()
    query = DiscoveryQuery(
        mode="Auto",
        refresh_interval=1,
        watch_timeout=10,
        datacenter="dc1",
        auto_polling_at=20,
        auto_blocking_below=15,
    )
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        assert (await recorder.next()).mode == "Blocking"
        for name in ("extra-1", "extra-2"):
            sim.register(instance(name, "n9"))
        polling = await recorder.until(lambda s: s.mode == "Polling")
        for name in ("extra-1", "extra-2"):
            sim.deregister({"Node": "n9", "ServiceID": f"{name}-n9"})
        for i in range(4):  # the generated fleet puts service i on node i % 3
            sim.deregister({"Node": f"node-{i % 3:03d}", "ServiceID": f"svc-{i:05d}-0"})
        blocking = await recorder.until(lambda s: s.mode == "Blocking" and s.matched < 15)
        await stop(task)
    assert polling.targets == 20
    assert polling.complete
    assert blocking.complete
    assert all(s.targets > 0 for s in recorder.snapshots)


@pytest.mark.parametrize("mode", ["Polling", "Blocking", "Auto"])
async def test_every_mode_publishes_the_same_targets_for_the_same_state(
    sim: ConsulSimulator, mode: Mode
) -> None:
    sim.generate(services=60, instances=3, nodes=7)
    async with client_for(sim) as client:
        snapshot = await discover_once(
            query=DiscoveryQuery(mode=mode, datacenter="dc1"), client=client
        )
    async with client_for(sim) as client:
        reference = await discover_once(
            query=DiscoveryQuery(mode="Polling", datacenter="dc1"), client=client
        )
    assert render_file_sd(snapshot.groups) == render_file_sd(reference.groups)
    assert snapshot.targets == 180


# ------------------------------------------------------------------------- Polling change gate


async def test_an_unchanged_consul_costs_four_small_requests_per_cycle(
    sim: ConsulSimulator,
) -> None:
    sim.generate(services=50, instances=2, nodes=5)
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", refresh_interval=10, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        first = await recorder.next()
        sim.counters.reset()
        second = await recorder.next()
        await stop(task)
    assert sim.counters.requests.get("health_service", 0) == 0
    # The catalog list, the critical and the warning checks, the nodes index.
    assert sum(sim.counters.requests.values()) == 4
    assert second.complete
    assert second.groups == first.groups


async def test_a_health_flip_opens_the_gate(sim: ConsulSimulator) -> None:
    sim.register(
        {
            "Node": "n1",
            "Address": "10.0.0.1",
            "Service": {"ID": "web-1", "Service": "web", "Port": 80},
            "Check": {"CheckID": "c1", "Name": "c", "Status": "passing", "ServiceID": "web-1"},
        }
    )
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", refresh_interval=10, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        await recorder.next()
        await recorder.next()  # a gated cycle
        sim.set_check_status(node="n1", check_id="c1", status="critical")
        flipped = await recorder.next()
        await stop(task)
    (target,) = flipped.groups["web"]
    assert target.label_dict()["__meta_consul_health"] == "critical"


async def test_a_node_change_opens_the_gate(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", refresh_interval=10, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        await recorder.next()
        await recorder.next()
        sim.register({"Node": "n1", "Address": "10.7.7.7", "NodeMeta": {"rack": "r9"}})
        moved = await recorder.next()
        await stop(task)
    (target,) = moved.groups["web"]
    assert target.address == "10.7.7.7:80"
    assert target.label_dict()["__meta_consul_metadata_rack"] == "r9"


async def test_a_failed_service_is_fetched_again_even_when_nothing_changed(
    sim: ConsulSimulator,
) -> None:
    sim.register(instance("web", "n1"))
    sim.register(instance("db", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", refresh_interval=10, datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        await recorder.next()
        sim.faults.fail_services = {"db"}
        sim.register(instance("db", "n2"))  # opens the gate once; db fails to answer
        assert "db" in (await recorder.next()).failed
        sim.faults.fail_services = set()
        healed = await recorder.next()  # nothing changed since, but db still owes an answer
        await stop(task)
    assert healed.failed == {}
    assert ids(healed, "db") == ["db-n1", "db-n2"]


def health(snapshot: Snapshot, service: str) -> list[str]:
    return [t.label_dict()["__meta_consul_health"] for t in snapshot.groups[service]]


def services_on(snapshot: Snapshot, node: str) -> set[str]:
    return {
        name
        for name, group in snapshot.groups.items()
        if any(t.label_dict()["__meta_consul_node"] == node for t in group)
    }


async def settled_polling(
    sim: ConsulSimulator, client: ConsulClient, recorder: Recorder, **query: Any
) -> asyncio.Task[None]:
    """Polling started and past its first (full) cycle, with the counters reset."""
    polling = DiscoveryQuery(mode="Polling", refresh_interval=10, datacenter="dc1", **query)
    task = await running(run_discovery(query=polling, client=client, publish=recorder.publish))
    await recorder.next()
    sim.counters.reset()
    return task


async def test_a_health_flip_fetches_only_the_service_it_belongs_to(sim: ConsulSimulator) -> None:
    sim.generate(services=60, instances=3, nodes=10)
    recorder = Recorder()
    async with client_for(sim) as client:
        task = await settled_polling(sim, client, recorder)
        sim.set_check_status(node="node-001", check_id="service:svc-00000-1", status="critical")
        flipped = await recorder.next()
        await stop(task)
    assert sim.counters.requests["health_service"] == 1
    assert health(flipped, "svc-00000") == ["passing", "critical", "passing"]
    assert flipped.complete
    assert flipped.targets == 180


async def test_a_narrowed_cycle_asks_a_permanently_failed_service_again_until_it_heals(
    sim: ConsulSimulator,
) -> None:
    sim.generate(services=20, instances=1, nodes=4)
    sim.faults.malformed_services = {"svc-00005"}
    recorder = Recorder()
    async with client_for(sim) as client:
        task = await settled_polling(sim, client, recorder)
        sim.set_check_status(node="node-001", check_id="service:svc-00001-0", status="critical")
        flipped = await recorder.next()
        requests = sim.counters.requests["health_service"]
        sim.faults.malformed_services = set()  # a proxy's hiccup: no index moves
        healed = await recorder.next()
        await stop(task)
    assert requests == 2  # the flipped service, and the failed one asked again
    assert set(flipped.failed) == {"svc-00005"}
    assert flipped.complete
    assert healed.failed == {}
    assert "svc-00005" in healed.groups


async def test_a_check_that_recovers_is_fetched_again(sim: ConsulSimulator) -> None:
    sim.generate(services=20, instances=1, nodes=4)
    sim.set_check_status(node="node-003", check_id="service:svc-00003-0", status="warning")
    recorder = Recorder()
    async with client_for(sim) as client:
        task = await settled_polling(sim, client, recorder)
        sim.set_check_status(node="node-003", check_id="service:svc-00003-0", status="passing")
        recovered = await recorder.next()
        await stop(task)
    assert sim.counters.requests["health_service"] == 1
    assert health(recovered, "svc-00003") == ["passing"]


async def test_a_node_check_fetches_every_service_on_that_node(sim: ConsulSimulator) -> None:
    sim.generate(services=40, instances=2, nodes=8)
    recorder = Recorder()
    async with client_for(sim) as client:
        task = await settled_polling(sim, client, recorder)
        on_node = services_on(recorder.snapshots[-1], "node-002")
        sim.register(
            {
                "Node": "node-002",
                "Address": "10.0.0.3",
                "Check": {"CheckID": "serfHealth", "Name": "Serf", "Status": "critical"},
            }
        )
        flipped = await recorder.next()
        await stop(task)
    assert sim.counters.requests["health_service"] == len(on_node) == 10
    for name, group in flipped.groups.items():
        for target in group:
            labels = target.label_dict()
            on = labels["__meta_consul_node"] == "node-002"
            assert labels["__meta_consul_health"] == ("critical" if on else "passing"), name


async def test_a_node_change_fetches_only_the_services_on_that_node(sim: ConsulSimulator) -> None:
    sim.generate(services=40, instances=2, nodes=8)
    recorder = Recorder()
    async with client_for(sim) as client:
        task = await settled_polling(sim, client, recorder)
        on_node = services_on(recorder.snapshots[-1], "node-005")
        sim.register(
            {
                "Node": "node-005",
                "Address": "10.9.9.9",
                "NodeMeta": {"rack": "r9"},
                "TaggedAddresses": {"lan": "10.9.9.9"},
            }
        )
        moved = await recorder.next()
        await stop(task)
    assert sim.counters.requests["health_service"] == len(on_node) == 10
    for name in on_node:
        for target in moved.groups[name]:
            if target.label_dict()["__meta_consul_node"] == "node-005":
                assert target.label_dict()["__meta_consul_metadata_rack"] == "r9"


async def test_a_node_change_finds_an_instance_a_filter_hid_before(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    sim.register({**instance("web", "n2"), "NodeMeta": {"zone": "b"}})
    recorder = Recorder()
    async with client_for(sim) as client:
        task = await settled_polling(sim, client, recorder, health_filter='Node.Meta.zone == "a"')
        assert "web" not in recorder.snapshots[-1].groups or not ids(recorder.snapshots[-1], "web")
        sim.register({"Node": "n2", "Address": "10.1.0.2", "NodeMeta": {"zone": "a"}})
        moved = await recorder.next()
        await stop(task)
    assert ids(moved, "web") == ["web-n2"]


async def test_a_registration_fetches_every_service(sim: ConsulSimulator) -> None:
    sim.generate(services=30, instances=1, nodes=3)
    recorder = Recorder()
    async with client_for(sim) as client:
        task = await settled_polling(sim, client, recorder)
        sim.register(instance("svc-00004", "node-000", sid="svc-00004-extra", port=9))
        grown = await recorder.next()
        await stop(task)
    # Consul has no cheap way to name the service whose instance came: every one is asked.
    assert sim.counters.requests["health_service"] == 30
    assert sorted(ids(grown, "svc-00004")) == ["svc-00004-0", "svc-00004-extra"]


async def test_a_health_filter_on_checks_fetches_every_service_when_checks_move(
    sim: ConsulSimulator,
) -> None:
    sim.generate(services=30, instances=1, nodes=3)
    recorder = Recorder()
    async with client_for(sim) as client:
        task = await settled_polling(
            sim, client, recorder, health_filter='Checks.Name != "retired"'
        )
        sim.register(
            {
                "Node": "node-001",
                "Address": "10.0.0.2",
                "Check": {"CheckID": "extra", "Name": "retired", "Status": "passing"},
            }
        )
        await recorder.next()
        await stop(task)
    assert sim.counters.requests["health_service"] == 30


async def test_a_namespace_never_narrows_a_moved_checks_index() -> None:
    # Node checks live in the default namespace: a gate asked in another cannot see them.
    before = ChangeGate(services=5, checks=5, nodes=5, unhealthy=frozenset())
    now = replace(before, checks=6)
    endpoint = ConsulEndpoint(server="127.0.0.1:9", namespace="team-a")
    async with ConsulClient(endpoint=endpoint, max_connections=1) as client:
        changed = await changed_services(
            before=before, now=now, query=DiscoveryQuery(datacenter="dc1"), client=client
        )
    assert changed is None


async def test_a_flap_inside_a_fetch_is_fetched_again_on_the_next_cycle(
    sim: ConsulSimulator,
) -> None:
    # Critical after the gate was read but before the fetch answered, passing again before the
    # next gate: both gates show the same unhealthy set, yet the targets saw "critical".
    sim.generate(services=3, instances=1, nodes=1)
    sim.faults.latency = 1.0  # list 0-1 s, gate 1-3 s, fetch 3-4 s
    recorder = Recorder()
    check = {"node": "node-000", "check_id": "service:svc-00001-0"}
    async with client_for(sim) as client:
        query = DiscoveryQuery(mode="Polling", refresh_interval=10, datacenter="dc1")
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        await asyncio.sleep(3.5)
        sim.set_check_status(**check, status="critical")
        assert health(await recorder.next(), "svc-00001") == ["critical"]
        sim.set_check_status(**check, status="passing")
        again = await recorder.next()
        await stop(task)
    assert health(again, "svc-00001") == ["passing"]


# -------------------------------------------------------------------- failures and odd answers


@pytest.mark.parametrize("mode", ["Polling", "Blocking"])
async def test_a_service_consul_cannot_answer_does_not_hold_back_the_rest(
    sim: ConsulSimulator, mode: Mode
) -> None:
    sim.register(instance("web", "n1"))
    sim.register(instance("odd", "n1"))
    sim.faults.malformed_services = {"odd"}
    query = DiscoveryQuery(mode=mode, refresh_interval=5, datacenter="dc1")
    async with client_for(sim) as client:
        snapshot = await discover_once(query=query, client=client)
    assert snapshot.complete
    assert set(snapshot.groups) == {"web"}
    assert snapshot.failed["odd"].reason == "MalformedConsulResponse"


async def test_a_health_filter_consul_rejects_everywhere_publishes_nothing(
    sim: ConsulSimulator,
) -> None:
    sim.register(instance("web", "n1"))
    sim.register(instance("db", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Polling", health_filter="Service.Port >>> 1", datacenter="dc1")
    async with client_for(sim) as client:
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        snapshot = await recorder.next()
        await stop(task)
    assert snapshot.groups == {}
    assert set(snapshot.failed) == {"web", "db"}
    assert not snapshot.complete
    assert snapshot.failed["web"].reason == "ConsulBadRequest"
    assert sim.counters.requests["health_service"] == 2  # a bad request is not retried


def test_an_index_that_went_back_is_read_again_and_none_is_asked_below_one() -> None:
    # Moved from test_consul_client (next_index's backwards branch is index_went_back's rule).
    assert next_index(0) == 1
    assert next_index(12) == 12
    assert next_index(10) == 10
    assert index_went_back(previous=10, answered=5)
    assert index_went_back(previous=10, answered=-3)
    assert not index_went_back(previous=10, answered=12)
    assert not index_went_back(previous=10, answered=10)
    assert not index_went_back(previous=0, answered=0)


async def test_an_answer_whose_index_went_back_is_not_applied(sim: ConsulSimulator) -> None:
    sim.register(instance("web", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(
        mode="Blocking", services=("web",), refresh_interval=1, watch_timeout=10, datacenter="dc1"
    )
    async with client_for(sim) as client:
        original = client.service_instances
        revoked = False

        async def revoked_mid_wait(name: str, **kwargs: Any) -> Any:
            # What a real agent does when the token of a parked query is deleted: the parked
            # query answers an empty list with index 1, every later request a 403.
            nonlocal revoked
            if revoked:
                raise ConsulACLDenied("HTTP 403: ACL not found", status=403)
            if kwargs["index"] > 0:
                await asyncio.sleep(kwargs["wait"])
                revoked = True
                return [], 1
            return await original(name, **kwargs)

        client.service_instances = revoked_mid_wait  # type: ignore[method-assign]
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        await recorder.next()
        denied = await recorder.until(lambda s: "web" in s.failed)
        await stop(task)
    assert revoked
    assert denied.failed["web"].reason == "ACLDenied"
    assert all(ids(s, "web") == ["web-n1"] for s in recorder.snapshots)


async def test_a_catalog_answer_whose_index_went_back_does_not_clear_services(
    sim: ConsulSimulator,
) -> None:
    sim.register(instance("web", "n1"))
    recorder = Recorder()
    query = DiscoveryQuery(mode="Blocking", refresh_interval=1, watch_timeout=10, datacenter="dc1")
    async with client_for(sim) as client:
        original = client.list_services
        revoked = False

        async def revoked_mid_wait(**kwargs: Any) -> Any:
            nonlocal revoked
            if revoked:
                raise ConsulACLDenied("HTTP 403: ACL not found", status=403)
            if kwargs["index"] > 0:
                await asyncio.sleep(kwargs["wait"])
                revoked = True
                return {}, 1
            return await original(**kwargs)

        client.list_services = revoked_mid_wait  # type: ignore[method-assign]
        task = await running(run_discovery(query=query, client=client, publish=recorder.publish))
        await recorder.next()
        denied = await recorder.until(lambda s: s.error is not None)
        await stop(task)
    assert denied.error is not None
    assert denied.error.reason == "ACLDenied"
    assert all(ids(s, "web") == ["web-n1"] for s in recorder.snapshots)
