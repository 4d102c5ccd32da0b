"""Discovery workers: Polling, Blocking and Auto, each emitting whole target snapshots.

A worker runs until cancelled and calls ``publish`` with a :class:`Snapshot`: always the full set
of targets (level-based, never a diff), so a sink can be restarted, skip unchanged bytes, and never
has to merge. The rules every mode keeps:

- A service whose fetch failed keeps its previous targets; a service gone from the catalog has its
  targets cleared. A catalog failure keeps everything.
- ``Snapshot.complete`` is False until the catalog has been listed and every matched service has
  answered once (or failed permanently while others answered, see :func:`is_whole`); sinks never
  write a snapshot that is not complete before one that is (so an outage or a cold start never
  publishes an empty or partial set).
- Errors back off with jitter; cancellation stops every in-flight request (structured with
  TaskGroups, no task outlives its worker).

Polling lists the catalog every ``refreshInterval`` and fetches services with at most
``maxConcurrent`` requests in flight. A change gate skips the fetches when the services, checks
and nodes tables (every input of a /v1/health/service answer) have not moved since the last
clean cycle, so a quiet fleet costs three small requests per cycle instead of N + 1. When only
checks or nodes moved (health flapping, a node's address or meta), only the services on them
are fetched again; a moved services table (an instance registered, changed or removed) fetches
every service, as Consul has no cheaper way to say which. Within a fetch, a service whose own
index has not moved is not decoded or rebuilt.

Blocking holds one long-poll on the catalog plus one per service, throttled by
``refreshInterval`` as Prometheus does; at most ``maxConcurrent`` service long-polls are open at
once and the rest queue for a slot in FIFO order. With N services above the cap each long-poll's
wait shrinks to ``watchTimeout x maxConcurrent / N`` (at least 1s), so a full rotation still takes
about ``watchTimeout`` and every service is re-queried about that often (a change to a queued
service is seen on its next turn).

Auto picks Blocking below :data:`AUTO_POLLING_AT` matched services and Polling at or above, and
switches back only below :data:`AUTO_BLOCKING_BELOW` (hysteresis), handing the current targets to
the new mode.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from consul_sd.backoff import backoff_delay
from consul_sd.consul import (
    CheckState,
    ConsulACLDenied,
    ConsulBadRequest,
    ConsulBadResponse,
    ConsulClient,
    ConsulError,
    ConsulUnreachable,
    next_index,
)
from consul_sd.memory import release_free_memory
from consul_sd.spec import ConsulDiscoverySpec, Mode
from consul_sd.targets import TargetGroup, build_target_group, count_targets

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

EffectiveMode = Literal["Polling", "Blocking"]
AUTO_POLLING_AT = 1000
AUTO_BLOCKING_BELOW = 900
# Blocking mode gathers changes that land together (a deploy touching many services) into one
# publication instead of one per service.
PUBLISH_COALESCE_SECONDS = 1.0
ERROR_BACKOFF_BASE = 1.0
# Prometheus sleeps a fixed 15s after a failed watch; we back off up to the same bound.
ERROR_BACKOFF_CAP = 15.0
# Every loop reads everything again this often, whatever the indexes say: an index equal to the
# last one does not prove the content is (a Consul restarted without its data replays the same
# index sequence with new content). A request that broke (Consul unreachable) triggers a full read
# at once; this bounds what no request saw.
FULL_RESYNC_SECONDS = 600.0
# One generator for every loop's backoff jitter: a Random per loop costs 2.5 KiB each, 17 MiB
# for 7000 Blocking watches (measured), and jitter needs no per-loop stream.
_JITTER = random.Random()


@dataclass(frozen=True)
class DiscoveryQuery:
    """What a worker discovers and how, resolved from the spec (durations in seconds)."""

    mode: Mode = "Auto"
    services: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    node_meta: Mapping[str, str] = field(default_factory=dict)
    filter: str = ""
    health_filter: str = ""
    tag_separator: str = ","
    datacenter: str = ""
    refresh_interval: float = 30.0
    max_concurrent: int = 100
    watch_timeout: float = 120.0
    resync_interval: float = FULL_RESYNC_SECONDS
    auto_polling_at: int = AUTO_POLLING_AT
    auto_blocking_below: int = AUTO_BLOCKING_BELOW

    @classmethod
    def from_spec(cls, spec: ConsulDiscoverySpec) -> DiscoveryQuery:
        selector = spec.selector
        return cls(
            mode=spec.mode,
            services=tuple(selector.services),
            tags=tuple(selector.tags),
            node_meta=dict(selector.node_meta),
            filter=selector.filter,
            health_filter=selector.health_filter,
            tag_separator=spec.tag_separator,
            datacenter=spec.consul.datacenter,
            refresh_interval=spec.refresh_seconds,
            max_concurrent=spec.max_concurrent,
            watch_timeout=spec.watch_seconds,
            resync_interval=spec.resync_seconds,
        )

    @property
    def uses_catalog(self) -> bool:
        """Prometheus skips the catalog when only exact service names are configured."""
        return not self.services or bool(self.tags) or bool(self.filter)

    def matches(self, name: str, tags: Iterable[str]) -> bool:
        """Prometheus's ``shouldWatch``: listed name (or no list) and every required tag."""
        if self.services and name not in self.services:
            return False
        present = set(tags)
        return all(tag in present for tag in self.tags)


@dataclass(frozen=True)
class Snapshot:
    """The whole discovered state at one moment, as a worker publishes it."""

    groups: Mapping[str, TargetGroup]
    mode: EffectiveMode
    complete: bool
    matched: int
    failed: Mapping[str, ConsulError] = field(default_factory=dict)
    error: ConsulError | None = None
    duration: float = 0.0
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def targets(self) -> int:
        return count_targets(self.groups)

    @property
    def problem(self) -> ConsulError | None:
        """The error a status should show: the catalog's, else the first failed service's."""
        if self.error is not None:
            return self.error
        for name in sorted(self.failed):
            return self.failed[name]
        return None


Publish = Callable[[Snapshot], Awaitable[None]]
# Failures no retry changes: Consul refused the query (400, e.g. a service named "" that Consul
# lists but cannot answer for) or answered something that is not its JSON. Prometheus skips such
# a service and discovers the rest; so does a snapshot here (see is_whole).
PERMANENT_FAILURES = (ConsulBadRequest, ConsulBadResponse)


def is_permanent(error: ConsulError) -> bool:
    return isinstance(error, PERMANENT_FAILURES)


def is_whole(
    *, matched: Iterable[str], groups: Mapping[str, TargetGroup], failed: Mapping[str, ConsulError]
) -> bool:
    """Every matched service has targets, or failed permanently while others answered.

    A service that fails for a reason that can pass (unreachable, 5xx, 429, ACL) holds the
    snapshot back until it answers once. One that fails permanently does not hold back the rest,
    unless nothing answered at all: a filter Consul cannot compile fails every service, and that
    must never publish an empty set.
    """
    missing = [name for name in matched if name not in groups]
    if not missing:
        return True
    if not groups:
        return False
    return all(name in failed and is_permanent(failed[name]) for name in missing)


def is_publishable(snapshot: Snapshot, *, published_before: bool) -> bool:
    """Whether a sink may write ``snapshot``: the one rule that keeps outputs whole.

    Until a complete snapshot was written, only a complete one is; after that any snapshot that
    is not a whole-discovery failure (its failed services carry their previous targets).
    """
    return snapshot.complete or (published_before and snapshot.error is None)


class DiscoveryIncomplete(Exception):
    """``discover_once`` could not get every matched service."""

    def __init__(self, snapshot: Snapshot) -> None:
        problem = snapshot.problem
        missing = snapshot.matched - len(snapshot.groups)
        detail = f"{problem.reason}: {problem}" if problem else "no answer"
        if snapshot.error is not None and not snapshot.matched:
            # Nothing was listed: "0 of 0 services" would hide it; the failed request says what.
            message = f"discovery failed before any service was listed ({detail})"
        else:
            message = f"{missing} of {snapshot.matched} services not discovered ({detail})"
        super().__init__(message)
        self.snapshot = snapshot


async def run_discovery(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    publish: Publish,
    seed: Mapping[str, TargetGroup] | None = None,
) -> None:
    """Run the worker for ``query.mode`` until cancelled.

    ``seed``: the targets the outputs hold already (a restarted worker's last publication, or
    what an operator restart read back). A service that fails before it answers once keeps its
    seeded targets instead of holding back the whole snapshot or being dropped.
    """
    query = await _with_datacenter(query=query, client=client, publish=publish)
    if query.mode == "Polling":
        await poll_services(query=query, client=client, publish=publish, seed=seed)
    elif query.mode == "Blocking":
        await watch_services(query=query, client=client, publish=publish, seed=seed)
    else:
        await run_auto(query=query, client=client, publish=publish, seed=seed)


async def discover_once(*, query: DiscoveryQuery, client: ConsulClient) -> Snapshot:
    """One complete discovery in ``query.mode``; :class:`DiscoveryIncomplete` if it is not."""
    first: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()

    async def take_first(snapshot: Snapshot) -> None:
        if not first.done():
            first.set_result(snapshot)

    task = asyncio.create_task(run_discovery(query=query, client=client, publish=take_first))
    try:
        waiters: set[asyncio.Future[Any]] = {task, first}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if first not in done:
            task.result()  # the worker died: raise its error
        snapshot = first.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if not snapshot.complete:
        raise DiscoveryIncomplete(snapshot)
    return snapshot


async def _with_datacenter(
    *, query: DiscoveryQuery, client: ConsulClient, publish: Publish
) -> DiscoveryQuery:
    """Fill in the agent's datacenter, as Prometheus does, retrying until Consul answers.

    A token without ``agent:read`` (README's minimal policy) is denied /v1/agent/self, where
    Prometheus gives up; here the datacenter then comes from the nodes Consul lists, which carry
    the same value (said once at INFO). A token that sees no node either gets the denial, with
    what would help.
    """
    if query.datacenter:
        return query
    failures = 0
    while True:
        try:
            try:
                return replace(query, datacenter=await client.agent_datacenter())
            except ConsulACLDenied as denied:
                datacenter = await client.catalog_datacenter()
                if not datacenter:
                    raise type(denied)(
                        f"{denied}; and /v1/catalog/nodes shows no node to take the datacenter "
                        'from: grant the token node_prefix "" read, or set consul.datacenter',
                        status=denied.status,
                    ) from None
                logger.info(
                    "the token may not read /v1/agent/self (agent:read): datacenter %r taken "
                    "from /v1/catalog/nodes, the value Prometheus would use",
                    datacenter,
                )
                return replace(query, datacenter=datacenter)
        except ConsulError as error:
            mode: EffectiveMode = "Polling" if query.mode == "Polling" else "Blocking"
            await publish(_cold_failure(error, mode=mode, client=client))
            await asyncio.sleep(_error_delay(failures, cap=ERROR_BACKOFF_CAP))
            failures += 1


def _cold_failure(error: ConsulError, *, mode: EffectiveMode, client: ConsulClient) -> Snapshot:
    """What a worker publishes when Consul fails before anything was discovered."""
    return Snapshot(
        groups={},
        mode=mode,
        complete=False,
        matched=0,
        error=error,
        requests=client.stats.take(),
    )


def _error_delay(failures: int, *, cap: float) -> float:
    cap = max(ERROR_BACKOFF_BASE, cap)
    return backoff_delay(failures, base=ERROR_BACKOFF_BASE, cap=cap, rng=_JITTER)


async def list_matched_services(
    *, query: DiscoveryQuery, client: ConsulClient, index: int = 0, wait: float | None = None
) -> tuple[list[str], int]:
    """Matched service names (sorted) and the catalog index; no request without the catalog."""
    if not query.uses_catalog:
        return sorted(set(query.services)), 0
    services, answered = await client.list_services(
        index=index, wait=wait, node_meta=query.node_meta, filter_expr=query.filter
    )
    return sorted(name for name, tags in services.items() if query.matches(name, tags)), answered


async def fetch_target_group(
    name: str,
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    index: int = 0,
    wait: float | None = None,
    unchanged_index: int | None = None,
) -> tuple[TargetGroup | None, int]:
    """The targets of one service (``None`` when its index is ``unchanged_index``)."""
    instances, answered = await client.service_instances(
        name,
        tags=query.tags,
        index=index,
        wait=wait,
        node_meta=query.node_meta,
        filter_expr=query.health_filter,
        unchanged_index=unchanged_index,
    )
    if instances is None:
        return None, answered
    group = build_target_group(
        service=name,
        datacenter=query.datacenter,
        instances=instances,
        tag_separator=query.tag_separator,
    )
    return group, answered


# --------------------------------------------------------------------------------------- Polling

# Filters no row can match (Consul has no node or service with an empty name), so the gate's
# requests return an empty body and only the table index.
_NOTHING_NODE = 'Node == ""'
_NOTHING_SERVICE = 'ServiceName == ""'
# The checks that decide __meta_consul_health (Consul's AggregatedStatus): any check not passing,
# and maintenance checks whatever their status. A passing check coming or going, or a change of
# its output, leaves every label as it was.
UNHEALTHY_CHECKS_FILTER = (
    'Status != "passing" or CheckID == "_node_maintenance"'
    ' or CheckID matches "^_service_maintenance:"'
)
# Node-level changes are mapped to services with one catalog lookup per this many nodes; past
# _MAX_CHANGED_NODES a full refetch is cheaper than the lookups.
_NODES_PER_LOOKUP = 64
_MAX_CHANGED_NODES = 512


@dataclass(frozen=True)
class ChangeGate:
    """What a polling cycle reads first: whether, and where, the catalog moved since the last.

    The services, checks and nodes table indexes are every input of a /v1/health/service
    answer; ``unhealthy`` is every check that is not passing (with the checks index it came
    with), so a moved checks index can be narrowed to the services whose health changed.
    """

    services: int
    checks: int
    nodes: int
    unhealthy: frozenset[CheckState]


async def read_change_gate(
    *, query: DiscoveryQuery, client: ConsulClient, services_index: int
) -> ChangeGate | None:
    """The change gate; ``None`` (a Consul that refuses the filters, or any error) = unknown.

    When nothing in it moved since the previous cycle's gate, no service's answer can differ
    and the cycle is skipped; when only checks or nodes moved, :func:`changed_services` names
    the few services to fetch again.
    """
    try:
        if not query.uses_catalog:
            services_index = await client.table_index(
                endpoint="catalog_services",
                path="/v1/catalog/services",
                filter_expr=_NOTHING_SERVICE,
            )
        unhealthy, checks = await client.list_checks(filter_expr=UNHEALTHY_CHECKS_FILTER)
        nodes = await client.table_index(
            endpoint="catalog_nodes", path="/v1/catalog/nodes", filter_expr=_NOTHING_NODE
        )
    except ConsulError:
        return None
    if min(services_index, checks, nodes) <= 0:
        return None
    return ChangeGate(services=services_index, checks=checks, nodes=nodes, unhealthy=unhealthy)


async def changed_services(
    *, before: ChangeGate, now: ChangeGate, query: DiscoveryQuery, client: ConsulClient
) -> set[str] | None:
    """The services whose answers may differ between two gates; ``None`` means any of them.

    - services moved (an instance registered, changed or gone): any service, as Consul offers
      no per-service index short of asking each service;
    - checks moved: the services of checks that entered, left or changed the unhealthy set, and
      for a node's own checks every service on that node; any service when ``healthFilter``
      reads checks (a passing check can change what it keeps) or a namespace is set;
    - nodes moved: every service on a node whose ModifyIndex is past the previous gate (a node
      removed takes its services with it and moves the services index).

    Node-to-service lookups ask the catalog, not the targets held, so an instance that a filter
    hid before is found too. Any error means ``None``: the cycle fetches everything.
    """
    if now.services != before.services or now.checks < before.checks or now.nodes < before.nodes:
        # An index going back is a different server's older view: nothing can be narrowed.
        return None
    changed: set[str] = set()
    nodes: set[str] = set()
    if now.checks != before.checks:
        if "checks" in query.health_filter.lower() or client.endpoint.namespace not in (
            "",
            "default",
        ):
            # In an Enterprise namespace the gate sees that namespace's checks only, while a
            # node's own checks (which live in the default one) count in every service's health.
            return None
        for check in before.unhealthy ^ now.unhealthy:
            if check.service_name:
                changed.add(check.service_name)
            else:
                nodes.add(check.node)
    try:
        if now.nodes != before.nodes:
            listed, _ = await client.list_nodes()
            nodes.update(name for name, modified in listed if modified > before.nodes)
        if len(nodes) > _MAX_CHANGED_NODES or any("`" in name for name in nodes):
            return None
        ordered = sorted(nodes)
        for at in range(0, len(ordered), _NODES_PER_LOOKUP):
            chunk = ordered[at : at + _NODES_PER_LOOKUP]
            on_nodes, _ = await client.list_services(
                filter_expr=" or ".join(f"Node == `{name}`" for name in chunk),
                confirm_empty=False,  # a node without services is common
            )
            changed.update(on_nodes)
    except ConsulError:
        return None
    return changed


@dataclass(frozen=True)
class _Settled:
    """The last polling cycle that ended whole with nothing to retry.

    ``unsettled`` are the services whose answers carried an index past the gate: they saw a
    change made during the cycle, which the next gate may not show (a check failing and
    recovering between two gates leaves the unhealthy set as it was), so the next cycle asks
    them again.
    """

    gate: ChangeGate
    names: list[str]
    failed: dict[str, ConsulError]
    unsettled: frozenset[str]


async def poll_services(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    publish: Publish,
    seed: Mapping[str, TargetGroup] | None = None,
) -> None:
    """Polling: list, fetch every service with bounded concurrency, publish, sleep; forever.

    After a settled cycle, only the services :func:`changed_services` names are fetched (none
    on a quiet fleet); any doubt fetches them all.
    """
    loop = asyncio.get_running_loop()
    known: dict[str, TargetGroup] = dict(seed or {})
    indexes: dict[str, int] = {}
    failures = 0
    settled: _Settled | None = None
    resynced = loop.time()
    while True:
        started = loop.time()
        if started - resynced >= query.resync_interval:
            # Read and decode every service again, whatever the gate and the indexes say.
            settled, resynced = None, started
            indexes.clear()
        try:
            names, services_index = await list_matched_services(query=query, client=client)
        except ConsulError as error:
            settled = None
            indexes.clear()
            # The current catalog is unknown: the last known set is shown for status, but never
            # offered as complete (a sink keeps what it wrote).
            await publish(
                _polled(
                    client=client,
                    started=started,
                    groups=known,
                    complete=False,
                    matched=len(known),
                    error=error,
                )
            )
            await asyncio.sleep(_error_delay(failures, cap=query.refresh_interval))
            failures += 1
            continue
        failures = 0
        gate = await read_change_gate(query=query, client=client, services_index=services_index)
        narrowed: set[str] | None = None
        if gate is not None and settled is not None and names == settled.names:
            narrowed = await changed_services(
                before=settled.gate, now=gate, query=query, client=client
            )
        if narrowed is None or settled is None:
            fetched = names
            failed: dict[str, ConsulError] = {}
            fresh: dict[str, TargetGroup] = {}
        else:
            # Nothing to fetch (a quiet fleet) goes through here too: an empty fetch republishes
            # what is known and settles on the new gate.
            narrowed |= settled.unsettled
            fetched = [name for name in names if name in narrowed]
            failed = {name: e for name, e in settled.failed.items() if name not in narrowed}
            fresh = {name: known[name] for name in names if name in known}
        # A service whose index has not moved is not decoded or rebuilt: skip unchanged indexes.
        unchanged = {name: indexes[name] for name in fetched if name in indexes and name in known}
        results = await fetch_all(
            fetched,
            fetch=functools.partial(_fetch_polled, query=query, client=client, unchanged=unchanged),
            max_concurrent=query.max_concurrent,
        )
        for name in fetched:
            result = results[name]
            if isinstance(result, ConsulError):
                failed[name] = result
                if name in known:
                    fresh[name] = known[name]
                continue
            group, indexes[name] = result
            fresh[name] = known[name] if group is None else group
        for name in set(indexes) - set(fresh):
            del indexes[name]
        known = fresh
        complete = is_whole(matched=names, groups=known, failed=failed)
        retry = any(not is_permanent(error) for error in failed.values())
        settled = None
        if gate is not None and complete and not retry:
            horizon = max(gate.services, gate.checks, gate.nodes)
            unsettled = frozenset(name for name in fetched if indexes.get(name, 0) > horizon)
            settled = _Settled(gate=gate, names=names, failed=failed, unsettled=unsettled)
        snapshot = _polled(
            client=client,
            started=started,
            groups=known,
            complete=complete,
            matched=len(names),
            failed=failed,
        )
        if connection_broke(snapshot.requests):
            # Consul may have restarted: its indexes prove nothing until everything was read.
            settled = None
            indexes.clear()
        await publish(snapshot)
        del results, unchanged, snapshot
        if fetched:
            release_free_memory()
        await asyncio.sleep(max(0.0, started + query.refresh_interval - loop.time()))


def connection_broke(requests: Counter[tuple[str, str]]) -> bool:
    """Whether any of these requests found Consul unreachable (a restart, a partition)."""
    return any(outcome == ConsulUnreachable.reason for _, outcome in requests)


def _polled(
    *,
    client: ConsulClient,
    started: float,
    groups: Mapping[str, TargetGroup],
    complete: bool,
    matched: int,
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


async def _fetch_polled(
    name: str, *, query: DiscoveryQuery, client: ConsulClient, unchanged: Mapping[str, int]
) -> tuple[TargetGroup | None, int]:
    return await fetch_target_group(
        name, query=query, client=client, unchanged_index=unchanged.get(name)
    )


async def fetch_all(
    names: Sequence[str],
    *,
    fetch: Callable[[str], Awaitable[_T]],
    max_concurrent: int,
) -> dict[str, _T | ConsulError]:
    """``fetch`` every name with at most ``max_concurrent`` calls in flight.

    A fixed pool of workers drains one iterator, rather than a task per name behind a semaphore,
    so 20000 services cost ``max_concurrent`` tasks. A :class:`ConsulError` is kept as the
    name's result; any other exception cancels the whole batch.
    """
    results: dict[str, _T | ConsulError] = {}
    pending = iter(names)

    async def drain() -> None:
        for name in pending:
            try:
                results[name] = await fetch(name)
            except ConsulError as error:
                results[name] = error

    async with asyncio.TaskGroup() as group:
        for _ in range(min(max_concurrent, len(names))):
            group.create_task(drain())
    return results


# -------------------------------------------------------------------------------------- Blocking


@dataclass
class _WatchState:
    """What the blocking watches know, shared by them and the publisher."""

    known: dict[str, TargetGroup]
    watched: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    failed: dict[str, ConsulError] = field(default_factory=dict)
    listed: bool = False
    catalog_error: ConsulError | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def ready(self) -> bool:
        """The first publication waits for every watch's first answer (or failure)."""
        if self.catalog_error is not None:
            return True
        return self.listed and all(
            name in self.answered or name in self.failed for name in self.watched
        )

    def snapshot(self, client: ConsulClient) -> Snapshot:
        groups = {name: self.known[name] for name in self.watched if name in self.known}
        return Snapshot(
            groups=groups,
            mode="Blocking",
            complete=self.listed
            and is_whole(matched=self.watched, groups=groups, failed=self.failed),
            matched=len(self.watched),
            failed=dict(self.failed),
            error=self.catalog_error,
            requests=client.stats.take(),
        )


async def watch_services(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    publish: Publish,
    seed: Mapping[str, TargetGroup] | None = None,
) -> None:
    """Blocking: a long-poll on the catalog and one per matched service; forever."""
    state = _WatchState(known=dict(seed or {}))
    slots = asyncio.Semaphore(query.max_concurrent)
    watches: dict[str, asyncio.Task[None]] = {}
    async with asyncio.TaskGroup() as group:
        group.create_task(_publish_changes(state=state, client=client, publish=publish))

        def reconcile(names: Iterable[str]) -> None:
            wanted = set(names)
            for name in sorted(wanted - set(watches)):
                watches[name] = group.create_task(
                    watch_service(name, query=query, client=client, state=state, slots=slots)
                )
            for name in set(watches) - wanted:
                watches.pop(name).cancel()
                state.known.pop(name, None)
                state.answered.discard(name)
                state.failed.pop(name, None)
            state.watched = wanted
            state.listed = True
            state.changed.set()

        if not query.uses_catalog:
            reconcile(query.services)
            return  # the TaskGroup keeps the service watches running
        await _watch_catalog(query=query, client=client, state=state, reconcile=reconcile)


async def _watch_catalog(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    state: _WatchState,
    reconcile: Callable[[Iterable[str]], None],
) -> None:
    loop = asyncio.get_running_loop()
    index = 0
    failures = 0
    while True:
        started = loop.time()
        try:
            names, answered = await list_matched_services(
                query=query, client=client, index=index, wait=query.watch_timeout
            )
        except ConsulError as error:
            state.catalog_error = error
            state.changed.set()
            index = 0  # after a failure the next read is plain: Consul may have restarted
            await asyncio.sleep(_error_delay(failures, cap=ERROR_BACKOFF_CAP))
            failures += 1
            continue
        failures = 0
        if index_went_back(previous=index, answered=answered):
            # Distrust this answer (a restored snapshot, a lagging server, or a parked query
            # whose token was just revoked answering an empty catalog): read again, plainly.
            index = 0
            continue
        if state.catalog_error is not None:
            state.catalog_error = None
            state.changed.set()
        if answered != index or not state.listed or set(names) != state.watched:
            reconcile(names)
        index = next_index(previous=index, answered=answered)
        await asyncio.sleep(max(0.0, started + query.refresh_interval - loop.time()))


def index_went_back(*, previous: int, answered: int) -> bool:
    """Whether a blocking answer's index is below the one asked with.

    Consul's rule is to reset the index and read again. The answer itself is not applied: seen
    on a real agent, a health long-poll parked with a token that is then deleted answers 200 with
    index 1 and an empty body, which would otherwise replace the service's targets with nothing;
    the plain read that follows gets the 403 instead, and the targets are kept.
    """
    return previous > 0 and max(answered, 1) < previous


# The shortest wait a long-poll is given when slots are shared (see shared_wait).
MIN_SHARED_WAIT = 1.0


def shared_wait(*, query: DiscoveryQuery, watched: int) -> float:
    """The blocking wait of one service watch when ``watched`` watches share the slots.

    With more watches than ``maxConcurrent`` slots, a long-poll that holds its slot for the full
    ``watchTimeout`` starves the queue: a service waiting its turn would be re-queried only every
    ``watched / maxConcurrent x watchTimeout``. Shortening each wait in proportion keeps a full
    rotation near ``watchTimeout``, so every service is re-queried about that often, as in
    Prometheus; while every watch has its own slot, this is ``watchTimeout`` itself.
    """
    if watched <= query.max_concurrent:
        return query.watch_timeout
    return max(MIN_SHARED_WAIT, query.watch_timeout * query.max_concurrent / watched)


async def watch_service(
    name: str,
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    state: _WatchState,
    slots: asyncio.Semaphore,
) -> None:
    """One service's long-poll loop: publish on a new index, keep targets on errors."""
    loop = asyncio.get_running_loop()
    index = 0
    failures = 0
    # Spread the watches' periodic full reads over the interval instead of one wave.
    resynced = loop.time() - _JITTER.uniform(0, query.resync_interval)
    while True:
        started = loop.time()
        if started - resynced >= query.resync_interval:
            index, resynced = 0, started  # a plain read, decoded whatever its index says
        try:
            async with slots:
                group, answered = await fetch_target_group(
                    name,
                    query=query,
                    client=client,
                    index=index,
                    wait=shared_wait(query=query, watched=len(state.watched)),
                    unchanged_index=index if index > 0 else None,
                )
        except ConsulError as error:
            state.failed[name] = error
            state.changed.set()
            index = 0  # after a failure the next read is plain: Consul may have restarted
            await asyncio.sleep(_error_delay(failures, cap=ERROR_BACKOFF_CAP))
            failures += 1
            continue
        failures = 0
        if index_went_back(previous=index, answered=answered):
            index = 0  # distrust this answer, as for the catalog: read again, plainly
            continue
        if name in state.failed:
            del state.failed[name]
            state.changed.set()
        if name not in state.answered:
            state.answered.add(name)
            state.changed.set()
        if group is not None and state.known.get(name) != group:
            state.known[name] = group
            state.changed.set()
        index = next_index(previous=index, answered=answered)
        # Prometheus's refresh_interval ticker: a flapping service is re-queried at most this often.
        await asyncio.sleep(max(0.0, started + query.refresh_interval - loop.time()))


async def _publish_changes(*, state: _WatchState, client: ConsulClient, publish: Publish) -> None:
    while True:
        await state.changed.wait()
        # Let the other watches that answered in the same burst land first.
        await asyncio.sleep(PUBLISH_COALESCE_SECONDS)
        state.changed.clear()
        if state.ready():
            await publish(state.snapshot(client))
            release_free_memory()


# ------------------------------------------------------------------------------------------ Auto


async def run_auto(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    publish: Publish,
    seed: Mapping[str, TargetGroup] | None = None,
) -> None:
    """Auto: Blocking below AUTO_POLLING_AT matched services, Polling at or above."""
    failures = 0
    while True:
        try:
            names, _ = await list_matched_services(query=query, client=client)
            break
        except ConsulError as error:
            await publish(_cold_failure(error, mode="Blocking", client=client))
            await asyncio.sleep(_error_delay(failures, cap=ERROR_BACKOFF_CAP))
            failures += 1
    mode = choose_mode(matched=len(names), current=None, query=query)
    seed = dict(seed or {})
    while True:
        switch_to: asyncio.Future[EffectiveMode] = asyncio.get_running_loop().create_future()

        async def observe(
            snapshot: Snapshot,
            *,
            current: EffectiveMode,
            switch: asyncio.Future[EffectiveMode],
        ) -> None:
            nonlocal seed
            seed = snapshot.groups
            await publish(snapshot)
            wanted = choose_mode(matched=snapshot.matched, current=current, query=query)
            if wanted != current and snapshot.error is None and not switch.done():
                switch.set_result(wanted)

        worker = poll_services if mode == "Polling" else watch_services
        observed = functools.partial(observe, current=mode, switch=switch_to)
        task = asyncio.create_task(worker(query=query, client=client, publish=observed, seed=seed))
        try:
            waiters: set[asyncio.Future[Any]] = {task, switch_to}
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if switch_to not in done:
                task.result()
                raise RuntimeError("discovery worker returned")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        logger.info(
            "auto mode: switching from %s to %s at %d services",
            mode,
            switch_to.result(),
            len(seed),
        )
        mode = switch_to.result()


def choose_mode(
    *, matched: int, current: EffectiveMode | None, query: DiscoveryQuery
) -> EffectiveMode:
    """Auto's decision with hysteresis, so a count hovering at the threshold does not flap."""
    if current == "Polling":
        return "Blocking" if matched < query.auto_blocking_below else "Polling"
    return "Polling" if matched >= query.auto_polling_at else "Blocking"
