"""Polling with wakeOnChange, against the simulator in virtual time: each kind of change, how soon
it is published and what it cost; the full cycle that bounds what no table names; the rate limits.

Every test runs Polling with a refresh interval of 5 minutes, so a change published within
seconds was woken by a table watch, not by the interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from consul_sd.api.spec import ConsulDiscoverySpec
from consul_sd.consul.client import ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.consul.errors import ConsulBadResponse, ConsulServerError, ConsulUnreachable
from consul_sd.discovery.auto import choose_mode
from consul_sd.discovery.instances import CHECKS_READ_PERIOD
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import discover_once, run_discovery
from consul_sd.discovery.snapshots import Snapshot
from consul_simulator import ConsulSimulator

pytestmark = pytest.mark.looptime

REFRESH = 300.0
FLEET = {"services": 60, "instances": 2, "nodes": 6}


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(**FLEET)
        yield simulator


def wake_query(**changes: Any) -> DiscoveryQuery:
    base: dict[str, Any] = {
        "mode": "Polling",
        "refresh_interval": REFRESH,
        "datacenter": "dc1",
        "wake_on_change": True,
    }
    return DiscoveryQuery(**(base | changes))


class Watcher:
    """Runs one discovery and times how long a change takes to reach a publication."""

    def __init__(self, sim: ConsulSimulator, query: DiscoveryQuery) -> None:
        self.sim = sim
        self.query = query
        self.snapshots: list[Snapshot] = []
        self.published = asyncio.Event()
        self.client: ConsulClient | None = None

    async def publish(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        self.published.set()

    async def until(self, predicate: Callable[[Snapshot], bool], *, timeout: float) -> float:
        """Seconds until a publication satisfies ``predicate`` (TimeoutError past ``timeout``)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(timeout):
            while not (self.snapshots and predicate(self.snapshots[-1])):
                self.published.clear()
                await self.published.wait()
        return loop.time() - started


@contextlib.asynccontextmanager
async def watching(
    sim: ConsulSimulator,
    query: DiscoveryQuery | None = None,
    *,
    client_class: type[ConsulClient] = ConsulClient,
) -> AsyncIterator[Watcher]:
    """Polling with wakeOnChange on the simulator, its first set published, counters reset.

    Started inside each test, not in a fixture: the loop's virtual clock starts with the test.
    """
    watcher = Watcher(sim, query or wake_query())
    client = client_class(
        endpoint=ConsulEndpoint(server=sim.address),
        max_connections=110,
        retry=RetryPolicy(attempts=3, base_delay=0.1, max_delay=1.0),
    )
    async with client:
        task = asyncio.ensure_future(
            run_discovery(query=watcher.query, client=client, publish=watcher.publish)
        )
        await watcher.until(lambda s: s.complete, timeout=60)
        await asyncio.sleep(5)  # the watches have parked
        sim.counters.reset()
        watcher.client = client
        yield watcher
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def node_of(service: int, instance: int) -> str:
    """The node the fleet put an instance on (consecutive nodes, in registration order)."""
    slot = service * FLEET["instances"] + instance
    return f"node-{slot % FLEET['nodes']:03d}"


def add_instance(
    sim: ConsulSimulator,
    *,
    service: str,
    sid: str,
    node: str = "node-001",
    check: str | None = None,
) -> None:
    """Register an instance on an existing node, its node record untouched.

    ``check``: None for no check, "" for one without a status (Consul starts it critical, as
    agents register them), else that status.
    """
    body: dict[str, Any] = {
        "Node": node,
        "Address": "10.0.0.2",
        "SkipNodeUpdate": True,
        "Service": {"ID": sid, "Service": service, "Port": 5},
    }
    if check is not None:
        body["Check"] = {"CheckID": sid, "Name": "c", "ServiceID": sid}
        if check:
            body["Check"]["Status"] = check
    sim.register(body)


def labels(snapshot: Snapshot, service: str) -> list[dict[str, str]]:
    return [target.label_dict() for target in snapshot.groups.get(service, ())]


def service_ids(snapshot: Snapshot, service: str) -> set[str]:
    return {t["__meta_consul_service_id"] for t in labels(snapshot, service)}


def health_requests(sim: ConsulSimulator) -> int:
    return sim.counters.requests.get("health_service", 0)


async def test_a_health_flip_is_published_within_two_seconds_for_one_service_request(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        sim.set_check_status(node=node_of(1, 0), check_id="service:svc-00001-0", status="critical")
        took = await watcher.until(
            lambda s: any(t["__meta_consul_health"] == "critical" for t in labels(s, "svc-00001")),
            timeout=REFRESH,
        )
        assert took <= 2
        assert health_requests(sim) == 1


async def test_a_node_address_change_refetches_only_the_services_on_that_node(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        on_node = {
            name
            for name, group in watcher.snapshots[-1].groups.items()
            if any(t.label_dict()["__meta_consul_node"] == "node-002" for t in group)
        }
        sim.register({"Node": "node-002", "Address": "10.9.9.9"})
        took = await watcher.until(
            lambda s: any(
                t["__meta_consul_address"] == "10.9.9.9"
                for name in on_node
                for t in labels(s, name)
            ),
            timeout=REFRESH,
        )
        assert took <= 2
        assert health_requests(sim) == len(on_node) < FLEET["services"]
        # The held targets name the services on the node: no catalog lookup by node.
        assert sim.counters.requests.get("catalog_services", 0) == 0


async def test_a_node_gone_with_its_instances_is_published_within_two_seconds(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        sim.deregister({"Node": "node-005"})
        took = await watcher.until(
            lambda s: (
                not any(
                    t.label_dict()["__meta_consul_node"] == "node-005"
                    for group in s.groups.values()
                    for t in group
                )
            ),
            timeout=REFRESH,
        )
        assert took <= 2
        assert health_requests(sim) < FLEET["services"]


async def test_a_new_instance_whose_check_starts_critical_is_published_within_two_seconds(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        # Consul starts a check registered without a status as critical, as agents register them.
        add_instance(sim, service="svc-00002", sid="svc-00002-new", node="node-003", check="")
        took = await watcher.until(
            lambda s: "svc-00002-new" in service_ids(s, "svc-00002"), timeout=5
        )
        assert took <= 2
        assert health_requests(sim) == 1


async def test_a_whole_service_added_or_removed_is_published_within_two_seconds(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        add_instance(sim, service="brand-new", sid="brand-new-1", node="node-004")
        added = await watcher.until(lambda s: "brand-new" in s.groups, timeout=5)
        sim.deregister({"Node": node_of(7, 0), "ServiceID": "svc-00007-0"})
        sim.deregister({"Node": node_of(7, 1), "ServiceID": "svc-00007-1"})
        removed = await watcher.until(lambda s: "svc-00007" not in s.groups, timeout=5)
        assert added <= 2
        assert removed <= 2
        # The added service, and once more on the next cycle: its answer's index passed the
        # checks index the state lists last answered (it may have seen a flip they have not).
        # A removed service costs nothing.
        assert health_requests(sim) <= 2


def edit_port(sim: ConsulSimulator, snapshot: Snapshot, service: str, *, port: int) -> None:
    """Re-register an instance of ``service`` with another port, its node and checks as they are."""
    target = labels(snapshot, service)[0]
    sim.register(
        {
            "Node": target["__meta_consul_node"],
            "Address": target["__meta_consul_address"],
            "SkipNodeUpdate": True,
            "Service": {"ID": target["__meta_consul_service_id"], "Service": service, "Port": port},
        }
    )


def has_port(snapshot: Snapshot, service: str, port: int) -> bool:
    return any(t["__meta_consul_service_port"] == str(port) for t in labels(snapshot, service))


async def test_an_edited_instance_is_read_by_a_full_cycle_within_the_refresh_interval(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        edit_port(sim, watcher.snapshots[-1], "svc-00010", port=65000)
        took = await watcher.until(lambda s: has_port(s, "svc-00010", 65000), timeout=REFRESH + 30)
        assert took <= REFRESH + 5
        assert health_requests(sim) >= FLEET["services"]  # the full cycle


async def test_an_instance_removed_with_its_check_is_found_by_reading_every_check(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        # A passing instance leaves no trace in the critical or warning checks.
        sim.deregister({"Node": node_of(0, 0), "ServiceID": "svc-00000-0"})
        took = await watcher.until(
            lambda s: "svc-00000-0" not in service_ids(s, "svc-00000"), timeout=REFRESH
        )
        assert took <= 2
        assert health_requests(sim) == 1
        assert sim.counters.requests.get("health_state", 0) <= 2 + 1  # the watches, one read


async def test_every_check_is_read_at_most_once_per_period_and_a_waiting_change_is_not_lost(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        sim.deregister({"Node": node_of(0, 0), "ServiceID": "svc-00000-0"})
        await watcher.until(lambda s: "svc-00000-0" not in service_ids(s, "svc-00000"), timeout=5)
        # Right after a read: the next one waits for its period, then still finds this one.
        sim.deregister({"Node": node_of(3, 0), "ServiceID": "svc-00003-0"})
        took = await watcher.until(
            lambda s: "svc-00003-0" not in service_ids(s, "svc-00003"), timeout=REFRESH
        )
        assert took <= CHECKS_READ_PERIOD + 2
        assert health_requests(sim) == 2


async def test_an_instance_without_a_check_is_left_to_the_full_cycle(
    sim: ConsulSimulator,
) -> None:
    add_instance(sim, service="svc-00004", sid="bare-1", node="node-001")
    async with watching(sim) as watcher:
        sim.deregister({"Node": "node-001", "ServiceID": "bare-1"})
        took = await watcher.until(
            lambda s: "bare-1" not in service_ids(s, "svc-00004"), timeout=REFRESH + 30
        )
        assert took <= REFRESH + 5
        assert health_requests(sim) >= FLEET["services"]


async def test_a_check_flapping_every_tenth_of_a_second_costs_at_most_a_cycle_per_second(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim):
        for flip in range(200):
            status = "critical" if flip % 2 == 0 else "passing"
            sim.set_check_status(node=node_of(1, 0), check_id="service:svc-00001-0", status=status)
            await asyncio.sleep(0.1)
        # 20 s of flapping: woken cycles are rate-limited (a burst of two, then one per second).
        assert health_requests(sim) <= 20 + 2 + 1
        assert sim.counters.requests.get("health_state", 0) <= 2 * (20 + 2 + 1)


async def test_changes_waking_different_watches_still_start_at_most_a_cycle_per_second(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        published = len(watcher.snapshots)
        for step in range(200):
            # A check, another check's warning and a node's meta in turn: three watches, each
            # allowed a wake-up per second of its own.
            if step % 3 == 0:
                sim.set_check_status(
                    node=node_of(1, 0), check_id="service:svc-00001-0", status="critical"
                )
            elif step % 3 == 1:
                sim.set_check_status(
                    node=node_of(2, 0), check_id="service:svc-00002-0", status="warning"
                )
            else:
                sim.register(
                    {"Node": "node-004", "Address": "10.0.0.5", "NodeMeta": {"s": f"{step}"}}
                )
            await asyncio.sleep(0.1)
        assert len(watcher.snapshots) - published <= 20 + 2 + 1


async def run_quietly(sim: ConsulSimulator, query: DiscoveryQuery, *, seconds: float) -> int:
    """Consul requests a discovery makes over ``seconds`` of a quiet fleet, after its start."""
    watcher = Watcher(sim, query)
    async with ConsulClient(
        endpoint=ConsulEndpoint(server=sim.address), max_connections=110
    ) as client:
        task = asyncio.ensure_future(
            run_discovery(query=query, client=client, publish=watcher.publish)
        )
        await watcher.until(lambda s: s.complete, timeout=60)
        await asyncio.sleep(5)
        sim.counters.reset()
        await asyncio.sleep(seconds)
        requests = sum(sim.counters.requests.values())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return requests


async def test_a_quiet_fleet_costs_no_more_requests_than_the_gate_without_watches(
    sim: ConsulSimulator,
) -> None:
    # Nine minutes: short of the full resync every ten.
    gate_only = await run_quietly(
        sim, wake_query(wake_on_change=False, refresh_interval=30), seconds=540
    )
    watched = await run_quietly(sim, wake_query(refresh_interval=30), seconds=540)
    assert gate_only == 4 * 18  # four small reads per 30 s cycle
    assert watched <= gate_only


async def test_a_consul_failing_every_read_is_backed_off_by_the_watches_and_the_cycles(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        sim.faults.error_rate = 1.0
        await asyncio.sleep(REFRESH)
        # Four watches and the cycle, each backing off up to 15 s (from half of it, jittered), each
        # read retried by the client up to three times: a busy loop would make thousands.
        loops, attempts, per_loop = 5, 3, REFRESH / 7.5 + 6
        assert sum(sim.counters.requests.values()) <= loops * attempts * per_loop
        assert health_requests(sim) == 0
        assert watcher.snapshots[-1].error is not None


async def test_discover_once_holds_no_table_watch(sim: ConsulSimulator) -> None:
    async with ConsulClient(
        endpoint=ConsulEndpoint(server=sim.address), max_connections=110
    ) as client:
        snapshot = await discover_once(query=wake_query(), client=client)
    assert snapshot.complete
    # The catalog, the gate's three reads, one read per service: nothing parked beside them.
    assert sum(sim.counters.requests.values()) == 4 + FLEET["services"]


async def test_under_registration_churn_every_check_is_read_at_most_once_per_period(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:
        for step in range(60):  # 30 s: an instance registered or removed every half second
            body = {"Node": "node-001", "ServiceID": f"churn-{step // 2}"}
            if step % 2 == 0:
                add_instance(
                    sim,
                    service="svc-00005",
                    sid=body["ServiceID"],
                    node="node-001",
                    check="passing",
                )
            else:
                sim.deregister(body)
            await asyncio.sleep(0.5)
        reads = sum(s.requests[("health_state_any", "ok")] for s in watcher.snapshots)
        assert 1 <= reads <= 30 / CHECKS_READ_PERIOD + 2


def test_auto_chooses_polling_as_soon_as_blocking_watches_would_share_slots() -> None:
    spec = ConsulDiscoverySpec.model_validate(
        {"consul": {"server": "127.0.0.1:8500"}, "maxConcurrent": 100}
    )
    query = DiscoveryQuery.from_spec(spec)
    assert choose_mode(matched=100, current=None, query=query) == "Blocking"
    assert choose_mode(matched=101, current=None, query=query) == "Polling"
    assert choose_mode(matched=95, current="Polling", query=query) == "Polling"  # hysteresis
    assert choose_mode(matched=80, current="Polling", query=query) == "Blocking"
    without = DiscoveryQuery.from_spec(spec.model_copy(update={"wake_on_change": False}))
    assert choose_mode(matched=500, current=None, query=without) == "Blocking"


# ------------------------------------------- what a cycle each second must not turn into a storm


def flip(sim: ConsulSimulator, service: int, status: str) -> None:
    name = f"svc-{service:05d}"
    sim.set_check_status(node=node_of(service, 0), check_id=f"service:{name}-0", status=status)


async def test_a_filter_on_node_fields_follows_a_node_that_changes_what_it_keeps(
    sim: ConsulSimulator,
) -> None:
    # The filtered list changes while the services index stays: only its content says so.
    query = wake_query(filter='NodeMeta.zone == "zone-b"')
    async with watching(sim, query) as watcher:
        before = set(watcher.snapshots[-1].groups)
        sim.register({"Node": "node-002", "Address": "10.0.0.3", "NodeMeta": {"zone": "zone-b"}})
        took = await watcher.until(lambda s: set(s.groups) > before, timeout=REFRESH + 30)
        assert took <= REFRESH + 5


async def test_a_health_filter_on_checks_costs_one_full_read_per_interval_not_per_change(
    sim: ConsulSimulator,
) -> None:
    query = wake_query(health_filter='Checks.Status != "warning"', refresh_interval=30)
    async with watching(sim, query) as watcher:
        for step in range(60):  # a flip every second: every cycle sees checks move
            flip(sim, 1, "critical" if step % 2 == 0 else "passing")
            await asyncio.sleep(1.0)
        # At most three full reads in 60 s at a 30 s interval, and the flipping service itself.
        assert health_requests(sim) <= 3 * FLEET["services"] + 60
        assert any(
            t["__meta_consul_health"] == "passing"
            for t in labels(watcher.snapshots[-1], "svc-00001")
        )


async def test_a_failing_service_is_asked_again_alone_not_with_every_other(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim, wake_query(refresh_interval=30)):
        sim.faults.fail_services = {"svc-00009"}
        flip(sim, 9, "warning")
        await asyncio.sleep(2)
        sim.counters.reset()
        for step in range(60):  # another service's check goes critical every second
            flip(sim, 10 + step % 40, "critical")
            await asyncio.sleep(1.0)
        # Each flip, the failing service's retries, and two full reads at most.
        assert health_requests(sim) <= 60 + 60 + 2 * FLEET["services"]


async def test_a_quiet_fleet_with_a_failing_service_backs_off_instead_of_reading_everything(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim, wake_query(refresh_interval=30)) as watcher:
        sim.faults.fail_services = {"svc-00009"}
        flip(sim, 9, "warning")
        await asyncio.sleep(2)
        sim.counters.reset()
        published = len(watcher.snapshots)
        await asyncio.sleep(60)
        # The failing service, backing off; two full reads at the interval at most.
        assert health_requests(sim) <= 2 * FLEET["services"] + 20
        assert len(watcher.snapshots) - published <= 20


@pytest.mark.parametrize(("flips", "period"), [(201, 0.1), (61, 0.55), (37, 0.37), (60, 0.45)])
async def test_after_a_flapping_check_stops_its_last_state_is_published(
    sim: ConsulSimulator, flips: int, period: float
) -> None:
    async with watching(sim) as watcher:
        for step in range(flips):
            flip(sim, 1, "critical" if step % 2 == 0 else "passing")
            if step % 3 == 1:  # other nodes move now and then, waking cycles that fetch svc-00001
                node = f"node-{step % FLEET['nodes']:03d}"
                sim.register({"Node": node, "Address": "10.0.0.9", "NodeMeta": {"f": f"{step}"}})
            await asyncio.sleep(period)
        await asyncio.sleep(30)
        final = "critical" if (flips - 1) % 2 == 0 else "passing"
        shown = {
            t["__meta_consul_service_id"]: t["__meta_consul_health"]
            for t in labels(watcher.snapshots[-1], "svc-00001")
        }
        assert shown["svc-00001-0"] == final


class FailsParkedNodesWatchOnce(ConsulClient):
    """A client whose next parked read of the nodes fails once (a proxy closing it)."""

    armed = False
    unreachable = False  # fail as a broken connection, every time, instead

    async def list_nodes(
        self, *, index: int = 0, wait: float | None = None
    ) -> tuple[list[tuple[str, int]], int]:
        if index > 0 and wait is not None and (self.armed or self.unreachable):
            self.armed = False
            await asyncio.sleep(0.05)
            if self.unreachable:
                self.stats.counts[("catalog_nodes", ConsulUnreachable.reason)] += 1
                raise ConsulUnreachable("connection reset by the proxy")
            raise ConsulServerError("a proxy closed it", status=502)
        return await super().list_nodes(index=index, wait=wait)


async def test_one_failed_watch_read_costs_no_read_of_every_service(sim: ConsulSimulator) -> None:
    async with watching(
        sim, wake_query(refresh_interval=30), client_class=FailsParkedNodesWatchOnce
    ) as watcher:
        client = watcher.client
        assert isinstance(client, FailsParkedNodesWatchOnce)
        client.armed = True
        sim.register({"Node": "node-001", "Address": "10.0.0.2", "NodeMeta": {"x": "1"}})
        await asyncio.sleep(0.02)
        for i in range(4):  # registrations while the nodes watch is down and back
            add_instance(sim, service=f"svc-{i:05d}", sid=f"new-{i}", node="node-002", check="")
            await asyncio.sleep(1.0)
        await asyncio.sleep(5)
        assert health_requests(sim) < FLEET["services"]
        assert all(
            f"new-{i}" in service_ids(watcher.snapshots[-1], f"svc-{i:05d}") for i in range(4)
        )


async def test_a_service_given_by_name_is_emptied_as_soon_as_it_is_gone(
    sim: ConsulSimulator,
) -> None:
    query = wake_query(services=("svc-00003", "svc-00004"))
    async with watching(sim, query) as watcher:
        for k in range(FLEET["instances"]):
            sim.deregister({"Node": node_of(3, k), "ServiceID": f"svc-00003-{k}"})
        took = await watcher.until(lambda s: not s.groups.get("svc-00003"), timeout=REFRESH)
        assert took <= 2


async def test_a_plain_gate_read_while_a_watch_was_down_compares_with_the_watched_ones(
    sim: ConsulSimulator,
) -> None:
    # A warning that stays: the warning list's index lags the checks table's, while a gate
    # read plainly carries the table's; compared, the watched one would look like Consul
    # going back in time, and a read of everything would follow.
    flip(sim, 50, "warning")
    async with watching(
        sim, wake_query(refresh_interval=30), client_class=FailsParkedNodesWatchOnce
    ) as watcher:
        for service in range(3):
            flip(sim, service, "critical")
            await asyncio.sleep(1.5)
        sim.counters.reset()
        assert isinstance(watcher.client, FailsParkedNodesWatchOnce)
        watcher.client.armed = True
        sim.register({"Node": "node-001", "Address": "10.0.0.2", "NodeMeta": {"x": "1"}})
        await asyncio.sleep(1.0)
        flip(sim, 10, "critical")
        await asyncio.sleep(20)
        assert health_requests(sim) < FLEET["services"]


async def test_connections_that_keep_breaking_cost_one_full_read_per_interval(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim, wake_query(refresh_interval=30)):
        sim.faults.reset_services = {"svc-00009"}  # its reads find the connection reset
        flip(sim, 9, "critical")
        for step in range(60):  # a change every second wakes a cycle
            flip(sim, 10 + step % 20, "critical" if step % 2 == 0 else "passing")
            await asyncio.sleep(1.0)
        # Consul may have restarted each time: a full read, but at most one per interval.
        assert health_requests(sim) <= 3 * FLEET["services"] + 60 + 30


async def test_a_pending_comparison_ends_with_a_full_read_instead_of_waking_every_second(
    sim: ConsulSimulator,
) -> None:
    def add(i: int, service: int) -> None:
        add_instance(sim, service=f"svc-{service:05d}", sid=f"extra-{i}", check="passing")

    async with watching(sim, wake_query(refresh_interval=30)) as watcher:
        add(0, 3)
        await asyncio.sleep(2.0)
        sim.faults.fail_services = {"svc-00009"}
        add(1, 4)  # within the checks read's period: the comparison waits
        flip(sim, 9, "warning")
        await asyncio.sleep(1.0)
        sim.counters.reset()
        published = len(watcher.snapshots)
        await asyncio.sleep(60)
        assert health_requests(sim) <= 2 * FLEET["services"] + 20
        assert len(watcher.snapshots) - published <= 20


async def test_a_service_that_failed_is_asked_again_within_the_error_backoff(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim) as watcher:  # a 5 minute refresh interval
        sim.faults.fail_services = {"svc-00009"}
        flip(sim, 9, "critical")
        await asyncio.sleep(1.0)
        sim.faults.fail_services = set()
        took = await watcher.until(
            lambda s: any(t["__meta_consul_health"] == "critical" for t in labels(s, "svc-00009")),
            timeout=REFRESH,
        )
        assert took <= 15


async def test_a_checkless_service_given_by_name_is_emptied_as_soon_as_it_is_gone(
    sim: ConsulSimulator,
) -> None:
    add_instance(sim, service="bare", sid="bare-1", node="node-001")
    async with watching(sim, wake_query(services=("bare", "svc-00004"))) as watcher:
        sim.deregister({"Node": "node-001", "ServiceID": "bare-1"})
        took = await watcher.until(lambda s: not s.groups.get("bare"), timeout=REFRESH)
        assert took <= 2


class EveryCheckTooLarge(ConsulClient):
    """A client for which the read of every check is always past its size cap."""

    reads = 0

    async def service_checks(self) -> dict[str, frozenset[tuple[str, str]]]:
        self.reads += 1
        raise ConsulBadResponse("/v1/health/state/any: the answer passed 64 MiB")


async def test_a_read_of_every_check_that_fails_is_not_repeated_every_period(
    sim: ConsulSimulator,
) -> None:
    async with watching(sim, client_class=EveryCheckTooLarge) as watcher:
        for step in range(120):  # an instance registered or removed every second
            body = {"Node": "node-001", "ServiceID": f"churn-{step // 2}"}
            if step % 2 == 0:
                add_instance(sim, service="svc-00005", sid=body["ServiceID"], node="node-001")
            else:
                sim.deregister(body)
            await asyncio.sleep(1.0)
        assert isinstance(watcher.client, EveryCheckTooLarge)
        # 30 s, then 60 s: three reads in two minutes, not one every five seconds.
        assert watcher.client.reads <= 3
