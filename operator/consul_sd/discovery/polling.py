"""Polling: list the catalog every ``refreshInterval``, fetch the services, publish; forever.

Each cycle lists the matched services, reads the change gate (:mod:`.gate`) and fetches services
with at most ``maxConcurrent`` requests in flight (:func:`~.failures.fetch_all`). After a clean
cycle (complete, nothing a retry could change) the gate skips or narrows the next one: a quiet
fleet costs four small requests per cycle instead of N + 1. Within a fetch, a service whose own
index has not moved is not decoded or rebuilt.

Indexes are trusted only while nothing says Consul may have lost them: a catalog failure, a
request that found Consul unreachable, and the periodic full resync (``resyncInterval``) all
forget them, and the next cycle reads and decodes every service.

A catalog failure publishes the last known targets, never as complete, and backs off (up to the
refresh interval and at most :data:`~.failures.ERROR_BACKOFF_CAP`, as in every mode); a failed
service keeps its targets. The snapshot's ``duration`` is the cycle's.

With ``wakeOnChange`` the gate comes from the table watches (:mod:`.tables`) and a cycle starts
as soon as one of them moves (cycles rate-limited by a token bucket) instead of every
``refreshInterval``. A services move the catalog list does not explain (an instance added,
removed or edited inside a listed service) is read by a full cycle at most ``refreshInterval``
after it was first seen: the interval keeps its meaning, how stale a target may get. While a watch
has no answer (starting, or failing), cycles read plainly and run every ``refreshInterval``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.errors import ConsulError
from consul_sd.discovery.failures import error_backoff, fetch_all
from consul_sd.discovery.gate import (
    ChangeGate,
    HeldNodes,
    Narrowed,
    changed_services,
    health_disagrees,
    read_change_gate,
)
from consul_sd.discovery.instances import CheckedInstances
from consul_sd.discovery.memory import release_free_memory
from consul_sd.discovery.query import DiscoveryQuery, fetch_target_group, list_matched_services
from consul_sd.discovery.snapshots import (
    Publish,
    Snapshot,
    connection_broke,
    is_complete,
    is_permanent,
)
from consul_sd.discovery.tables import TableWatches
from consul_sd.loops import TokenBucket, cancel_and_wait, first_done, pace
from consul_sd.targets import TargetGroup

_Fetched = tuple[TargetGroup | None, int]
# After a watch wakes, the other tables one write moved answer within milliseconds: let them land
# so one cycle sees the whole change.
WAKE_SETTLE_SECONDS = 0.1
# Cycles woken by changes: two at once, then at most one per second.
WOKEN_CYCLES_BURST = 2
WOKEN_CYCLE_PERIOD = 1.0


@dataclass(frozen=True)
class _CleanCycle:
    """The last cycle the gate may compare against: complete, with nothing to retry.

    *Clean* means the cycle read a gate, was complete, and no service failed for a reason a
    retry could change: its answers are what the gate's indexes describe. With wakeOnChange a
    cycle runs on every change, so any cycle that read a gate is the baseline, failures and all:
    reading everything again is left to the full read within the refresh interval. ``recheck``
    are the services whose answers may show a change the next gate will not (a check failing and
    recovering between two gates leaves the unhealthy set as it was, see ``_Polling._recheck``),
    so the next cycle asks them again, as it asks the services in ``failed`` (a permanent
    failure may heal without moving an index).
    """

    gate: ChangeGate
    names: list[str]
    failed: dict[str, ConsulError]
    recheck: frozenset[str]


@dataclass
class _Plan:
    """One cycle's work: the services to fetch, and what the others carry over unchanged.

    ``groups`` starts with what the services not fetched carry over (their last targets);
    :meth:`_Polling.record` adds the fetched ones' answers and failures.
    """

    fetch: list[str]
    failed: dict[str, ConsulError]
    groups: dict[str, TargetGroup]


class _Polling:
    """What Polling carries from one cycle to the next."""

    def __init__(
        self, *, seed: Mapping[str, TargetGroup] | None, now: float, refresh_interval: float
    ) -> None:
        self.known: dict[str, TargetGroup] = dict(seed or {})
        self.indexes: dict[str, int] = {}
        self.clean: _CleanCycle | None = None
        self.resynced = now
        self.backoff = error_backoff(refresh_interval=refresh_interval)
        # When a services move was first left unexplained; a full cycle is due an interval later.
        self.unexplained_since: float | None = None
        self.held_nodes = HeldNodes()
        self.checked = CheckedInstances()
        self.last_full = now  # the start of the last cycle that read every service
        # Failed services are asked again after a backoff (with wakeOnChange no cycle may come
        # sooner on a quiet fleet); None while nothing failed.
        self.retry_at: float | None = None
        self.retries = error_backoff(refresh_interval=refresh_interval)

    def forget_indexes(self) -> None:
        """Trust no index: the next cycle fetches and decodes every service, whatever the gate."""
        self.clean = None
        self.indexes.clear()

    def resync_if_due(self, *, now: float, interval: float) -> None:
        """Every ``interval``, read and decode every service again (see FULL_RESYNC_SECONDS)."""
        if now - self.resynced >= interval:
            self.forget_indexes()
            self.resynced = now

    async def plan(
        self,
        *,
        names: list[str],
        gate: ChangeGate | None,
        query: DiscoveryQuery,
        client: ConsulClient,
    ) -> _Plan:
        """Every service, or only those the gate says may have changed since the clean cycle."""
        clean = self.clean
        narrowed = None
        if (
            gate is not None
            and clean is not None
            and (names == clean.names or gate.catalog is not None)
        ):
            narrowed = await changed_services(
                before=clean.gate, now=gate, query=query, client=client, held=self._held_on
            )
        if narrowed is not None and gate is not None and gate.catalog is not None:
            narrowed = await self._localized(narrowed, client=client)
        now = asyncio.get_running_loop().time()
        if narrowed is not None and narrowed.unexplained and self.unexplained_since is None:
            self.unexplained_since = now
        if narrowed is None or clean is None or self.full_cycle_due(now=now, query=query):
            # This cycle reads everything: nothing is left unexplained.
            self.unexplained_since = None
            self.last_full = now
            return _Plan(fetch=names, failed={}, groups={})
        # Nothing to fetch (a quiet fleet) goes through here too: an empty fetch republishes
        # what is known and, if clean, becomes the new gate baseline. A service that failed
        # permanently is asked again every cycle: "permanent" is only what one answer said (a
        # proxy's truncated body heals without moving any index the gate reads).
        fetch = narrowed.services | clean.recheck | set(clean.failed)
        return _Plan(
            fetch=[name for name in names if name in fetch],
            failed={},
            groups={name: self.known[name] for name in names if name in self.known},
        )

    async def _localized(self, narrowed: Narrowed, *, client: ConsulClient) -> Narrowed:
        """``narrowed`` plus the services the checks table says gained or lost an instance."""
        if not self.checked.wanted(unexplained=narrowed.unexplained):
            return narrowed
        found = await self.checked.changed(client)
        if not found:
            return narrowed
        return Narrowed(services=narrowed.services | found, unexplained=narrowed.unexplained)

    def _held_on(self, nodes: set[str]) -> set[str]:
        return self.held_nodes.services_on(nodes=nodes, known=self.known)

    def suspect_restart(self, *, now: float) -> None:
        """A request found Consul unreachable: it may have restarted, its indexes prove nothing.

        With wakeOnChange the read of everything this calls for is the unexplained move's,
        within the refresh interval of the last full read, so a proxy closing idle long-polls
        does not turn every woken cycle into a full one.
        """
        self.indexes.clear()
        since = self.unexplained_since
        self.unexplained_since = min(self.last_full, now if since is None else since)

    def schedule_retry(self, *, failed: bool, now: float) -> None:
        """After a cycle: when the services that failed are asked again, if any failed."""
        if not failed:
            self.retries.reset()
            self.retry_at = None
        else:
            self.retry_at = now + self.retries.next_delay()

    def full_cycle_due(self, *, now: float, query: DiscoveryQuery) -> bool:
        """Whether an unexplained services move has waited its refresh interval."""
        since = self.unexplained_since
        return since is not None and now - since >= query.refresh_interval

    def next_full_cycle(self, *, query: DiscoveryQuery) -> float | None:
        """When the full cycle an unexplained services move asks for is due, if one is."""
        since = self.unexplained_since
        return None if since is None else since + query.refresh_interval

    def fetcher(
        self, *, names: list[str], query: DiscoveryQuery, client: ConsulClient
    ) -> Callable[[str], Awaitable[_Fetched]]:
        """The fetch of one of ``names``, skipping the decode when its index has not moved."""
        unchanged = {n: self.indexes[n] for n in names if n in self.indexes and n in self.known}

        async def fetch(name: str) -> _Fetched:
            return await fetch_target_group(
                name=name, query=query, client=client, unchanged_index=unchanged.get(name)
            )

        return fetch

    def record(self, *, plan: _Plan, results: Mapping[str, _Fetched | ConsulError]) -> None:
        """Take a cycle's answers: a failed service keeps its targets, a gone one loses them."""
        for name in plan.fetch:
            result = results[name]
            if isinstance(result, ConsulError):
                plan.failed[name] = result
                if name in self.known:
                    plan.groups[name] = self.known[name]
                continue
            group, self.indexes[name] = result
            plan.groups[name] = self.known[name] if group is None else group
        for name in set(self.indexes) - set(plan.groups):
            del self.indexes[name]
        self.known = plan.groups

    def remember_if_clean(
        self, *, gate: ChangeGate | None, names: list[str], plan: _Plan, complete: bool
    ) -> None:
        """Remember this cycle as the gate's baseline if it was clean, else forget the last one."""
        retry = any(not is_permanent(error) for error in plan.failed.values())
        self.clean = None
        if gate is None:
            return
        # With wakeOnChange a cycle runs on every change: a failed service is asked again by
        # the next ones (``failed``), never by a read of everything each second.
        if gate.catalog is not None or (complete and not retry):
            self.clean = _CleanCycle(
                gate=gate, names=names, failed=plan.failed, recheck=self._recheck(gate, plan)
            )

    def _recheck(self, gate: ChangeGate, plan: _Plan) -> frozenset[str]:
        """The fetched services the next cycle asks again: their answer may show a flip the gate
        will never name (see :class:`_CleanCycle`).

        A plain gate's indexes are one moment's: an answer past them saw a later change. A
        watched gate's checks index is the last one each state list answered, which other
        tables' changes do not move: there, a service is asked again when its health is not the
        one the listed checks give.
        """
        if gate.watched:
            return frozenset(
                name
                for name in plan.fetch
                if name in self.known and health_disagrees(self.known[name], gate.unhealthy)
            )
        horizon = max(gate.services, gate.checks, gate.nodes)
        return frozenset(name for name in plan.fetch if self.indexes.get(name, 0) > horizon)


async def poll_services(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    publish: Publish,
    seed: Mapping[str, TargetGroup] | None = None,
) -> None:
    """Polling: list, fetch every service with bounded concurrency, publish, wait; forever.

    After a clean cycle, only the services :func:`~.gate.changed_services` names are fetched
    (none on a quiet fleet); any doubt fetches them all. With ``wakeOnChange`` the table watches
    run beside the cycles and wake them.
    """
    if not query.wake_on_change:
        await _cycle_forever(query=query, client=client, publish=publish, seed=seed, tables=None)
        return
    tables = TableWatches(query=query, client=client)
    tasks = [
        asyncio.create_task(tables.run()),
        asyncio.create_task(
            _cycle_forever(query=query, client=client, publish=publish, seed=seed, tables=tables)
        ),
    ]
    try:
        for done in await first_done(*tasks):
            done.result()  # what stopped it, as itself (not wrapped in an exception group)
        raise RuntimeError("polling stopped")
    finally:
        await cancel_and_wait(tasks)


async def _cycle_forever(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    publish: Publish,
    seed: Mapping[str, TargetGroup] | None,
    tables: TableWatches | None,
) -> None:
    loop = asyncio.get_running_loop()
    state = _Polling(seed=seed, now=loop.time(), refresh_interval=query.refresh_interval)
    woken = TokenBucket(burst=WOKEN_CYCLES_BURST, period=WOKEN_CYCLE_PERIOD)
    while True:
        started = loop.time()
        state.resync_if_due(now=started, interval=query.resync_interval)
        if tables is not None:
            tables.moved.clear()  # a move from now on wakes the next cycle
        watched = tables.gate() if tables is not None else None
        try:
            names, gate = await _names_and_gate(
                query=query, client=client, watched=watched, tables=tables
            )
        except ConsulError as error:
            state.forget_indexes()
            # The current catalog is unknown: the last known set is shown for status, but never
            # offered as complete (a sink keeps what it wrote).
            known = state.known
            await publish(
                _polled(
                    client=client, started=started, groups=known, matched=len(known), error=error
                )
            )
            await state.backoff.wait()
            continue
        state.backoff.reset()
        failed = await _cycle(
            state=state,
            names=names,
            gate=gate,
            query=query,
            client=client,
            publish=publish,
            started=started,
            waking=tables is not None,
        )
        state.schedule_retry(failed=failed, now=loop.time())
        if tables is None:
            await pace(started=started, interval=query.refresh_interval)
            continue
        due = min(
            started + query.refresh_interval,
            state.next_full_cycle(query=query) or math.inf,
            state.checked.due() or math.inf,
            state.retry_at or math.inf,
        )
        # Without every watch's answer (starting, or one failing) a cycle reads plainly and may
        # fetch everything: only the watches answering again, or the interval, start the next.
        await _until_woken(tables=tables, deadline=due, woken=woken, watched=watched is not None)


async def _names_and_gate(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    watched: ChangeGate | None,
    tables: TableWatches | None,
) -> tuple[list[str], ChangeGate | None]:
    """The matched names and the change gate: the watches' when they have both, else read.

    Read while a watch is down (with wakeOnChange), the gate carries the catalog too, so a
    services move stays narrowed by names instead of reading everything.
    """
    if watched is not None and watched.catalog is not None:
        names = sorted(watched.catalog) if query.uses_catalog else sorted(set(query.services))
        return names, watched
    if tables is None:
        names, services_index = await list_matched_services(query=query, client=client)
        gate = await read_change_gate(query=query, client=client, services_index=services_index)
        return names, gate
    catalog, services_index = await tables.read_catalog()
    names = catalog.names if query.uses_catalog else sorted(set(query.services))
    gate = await read_change_gate(query=query, client=client, services_index=services_index)
    return names, None if gate is None else replace(gate, catalog=catalog.services)


async def _cycle(
    *,
    state: _Polling,
    names: list[str],
    gate: ChangeGate | None,
    query: DiscoveryQuery,
    client: ConsulClient,
    publish: Publish,
    started: float,
    waking: bool,
) -> bool:
    """Fetch what the plan names, record it, publish the snapshot; whether any fetch failed."""
    plan = await state.plan(names=names, gate=gate, query=query, client=client)
    results = await fetch_all(
        names=plan.fetch,
        fetch=state.fetcher(names=plan.fetch, query=query, client=client),
        max_concurrent=query.max_concurrent,
    )
    state.record(plan=plan, results=results)
    complete = is_complete(names=names, groups=state.known, failed=plan.failed)
    state.remember_if_clean(gate=gate, names=names, plan=plan, complete=complete)
    snapshot = _polled(
        client=client,
        started=started,
        groups=state.known,
        complete=complete,
        matched=len(names),
        failed=plan.failed,
    )
    if connection_broke(snapshot.requests):
        # Consul may have restarted: its indexes prove nothing.
        if waking:
            state.suspect_restart(now=started)
        else:
            state.forget_indexes()
    await publish(snapshot)
    del results, snapshot  # before giving memory back: a cycle's answers are its bulk
    if plan.fetch:
        release_free_memory()
    return bool(plan.failed)


async def _until_woken(
    *, tables: TableWatches, deadline: float, woken: TokenBucket, watched: bool
) -> None:
    """Wait until a table watch moves (with every watch answering, unless ``watched``) or
    ``deadline`` passes, then for a cycle token."""
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                await tables.moved.wait()
                if watched or tables.gate() is not None:
                    break
                tables.moved.clear()
    except TimeoutError:
        pass
    else:
        await asyncio.sleep(WAKE_SETTLE_SECONDS)
    await woken.take()


def _polled(
    *,
    client: ConsulClient,
    started: float,
    groups: Mapping[str, TargetGroup],
    matched: int,
    complete: bool = False,
    failed: Mapping[str, ConsulError] | None = None,
    error: ConsulError | None = None,
) -> Snapshot:
    """A polling cycle's snapshot: the requests since the last one and the time it took."""
    return Snapshot(
        groups=dict(groups),
        mode="Polling",
        complete=complete,
        matched=matched,
        failed=dict(failed or {}),
        error=error,
        duration=asyncio.get_running_loop().time() - started,
        requests=client.stats.take(),
    )
