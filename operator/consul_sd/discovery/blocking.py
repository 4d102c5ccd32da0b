"""Blocking: one long-poll on the catalog plus one per matched service; publish what changed.

The watches are throttled by ``refreshInterval`` as Prometheus does; at most ``maxConcurrent``
service long-polls are open at once and the rest queue for a slot in FIFO order. With N services
above the cap each long-poll's wait shrinks to ``watchTimeout x maxConcurrent / N`` (at least
1s), so a full rotation still takes about ``watchTimeout`` and every service is re-queried about
that often (a change to a queued service is seen on its next turn).

Index rules (Consul's): an answer whose index went back is distrusted and read again plainly
(:func:`index_went_back`); an index below 1 is asked as 1 (:func:`next_index`); after any failure
the next read is plain, since Consul may have restarted. Each watch also reads plainly once per
``resyncInterval`` (spread over the interval), whatever its index says.

The watches write into one shared state; a publisher gathers changes landing together into one
snapshot (:data:`PUBLISH_COALESCE_SECONDS`) and waits until every watch has reported once. A
failed watch keeps its service's targets and backs off (up to
:data:`~.failures.ERROR_BACKOFF_CAP`); a service gone from the catalog loses its watch and its
targets. All watches live in one TaskGroup: none outlives the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.errors import ConsulError
from consul_sd.discovery.failures import error_backoff, index_went_back, next_index
from consul_sd.discovery.memory import release_free_memory
from consul_sd.discovery.query import DiscoveryQuery, fetch_target_group, list_matched_services
from consul_sd.discovery.snapshots import Publish, Snapshot, is_complete
from consul_sd.loops import JITTER, pace
from consul_sd.targets import TargetGroup

# Blocking mode gathers changes that land together (a deploy touching many services) into one
# publication instead of one per service.
PUBLISH_COALESCE_SECONDS = 1.0


@dataclass
class _WatchState:
    """What the blocking watches know, shared by them and the publisher.

    A watch has *reported* once its service answered (``heard_from``) or failed (``failed``) at
    least once. ``unpublished_since`` is when the oldest change not yet published happened (the
    worker's start until the first publication): a snapshot's ``duration`` counts from it.
    """

    known: dict[str, TargetGroup]
    unpublished_since: float | None
    watched: set[str] = field(default_factory=set)
    heard_from: set[str] = field(default_factory=set)
    failed: dict[str, ConsulError] = field(default_factory=dict)
    listed: bool = False
    catalog_error: ConsulError | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def mark_changed(self) -> None:
        """Something a snapshot shows changed: wake the publisher, and start the clock."""
        if self.unpublished_since is None:
            self.unpublished_since = asyncio.get_running_loop().time()
        self.changed.set()

    def forget(self, name: str) -> None:
        """A service gone from the catalog: its targets, answers and failures go too."""
        self.known.pop(name, None)
        self.heard_from.discard(name)
        self.failed.pop(name, None)

    def all_reported(self) -> bool:
        """Whether every watch has reported, or the catalog failed (itself the news).

        Until then a snapshot would show services as missing that were merely not asked yet.
        This is not :func:`~.snapshots.is_complete`: a watch that failed has reported, yet its
        service may still hold the snapshot back from being complete.
        """
        if self.catalog_error is not None:
            return True
        return self.listed and all(
            name in self.heard_from or name in self.failed for name in self.watched
        )

    def take_snapshot(self, client: ConsulClient) -> Snapshot:
        """The snapshot of what is known now; the changes it carries count as published."""
        now = asyncio.get_running_loop().time()
        since, self.unpublished_since = self.unpublished_since, None
        groups = {name: self.known[name] for name in self.watched if name in self.known}
        return Snapshot(
            groups=groups,
            mode="Blocking",
            complete=self.listed
            and is_complete(names=self.watched, groups=groups, failed=self.failed),
            matched=len(self.watched),
            failed=dict(self.failed),
            error=self.catalog_error,
            duration=0.0 if since is None else now - since,
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
    started = asyncio.get_running_loop().time()
    state = _WatchState(known=dict(seed or {}), unpublished_since=started)
    slots = asyncio.Semaphore(query.max_concurrent)
    watches: dict[str, asyncio.Task[None]] = {}
    async with asyncio.TaskGroup() as group:
        group.create_task(_publish_changes(state=state, client=client, publish=publish))

        def reconcile(names: Iterable[str]) -> None:
            wanted = set(names)
            for name in sorted(wanted - set(watches)):
                watches[name] = group.create_task(
                    watch_service(name=name, query=query, client=client, state=state, slots=slots)
                )
            for name in set(watches) - wanted:
                # Not awaited here (reconcile runs between two awaits): the TaskGroup reaps it.
                watches.pop(name).cancel()
                state.forget(name)
            state.watched = wanted
            state.listed = True
            state.mark_changed()

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
    backoff = error_backoff(refresh_interval=query.refresh_interval)
    while True:
        started = loop.time()
        try:
            names, answered = await list_matched_services(
                query=query, client=client, index=index, wait=query.watch_timeout
            )
        except ConsulError as error:
            state.catalog_error = error
            state.mark_changed()
            index = 0  # after a failure the next read is plain: Consul may have restarted
            await backoff.wait()
            continue
        backoff.reset()
        if index_went_back(previous=index, answered=answered):
            # Distrust this answer (a restored snapshot, a lagging server, or a parked query
            # whose token was just revoked answering an empty catalog): read again, plainly.
            index = 0
            continue
        if state.catalog_error is not None:
            state.catalog_error = None
            state.mark_changed()
        if answered != index or not state.listed or set(names) != state.watched:
            reconcile(names)
        index = next_index(answered)
        await pace(started=started, interval=query.refresh_interval)


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
    *,
    name: str,
    query: DiscoveryQuery,
    client: ConsulClient,
    state: _WatchState,
    slots: asyncio.Semaphore,
) -> None:
    """One service's long-poll loop: publish on a new index, keep targets on errors."""
    loop = asyncio.get_running_loop()
    index = 0
    backoff = error_backoff(refresh_interval=query.refresh_interval)
    # Spread the watches' periodic full reads over the interval instead of one wave.
    resynced = loop.time() - JITTER.uniform(0, query.resync_interval)
    while True:
        started = loop.time()
        if started - resynced >= query.resync_interval:
            index, resynced = 0, started  # a plain read, decoded whatever its index says
        try:
            async with slots:
                group, answered = await fetch_target_group(
                    name=name,
                    query=query,
                    client=client,
                    index=index,
                    wait=shared_wait(query=query, watched=len(state.watched)),
                    unchanged_index=index if index > 0 else None,
                )
        except ConsulError as error:
            state.failed[name] = error
            state.mark_changed()
            index = 0  # after a failure the next read is plain: Consul may have restarted
            await backoff.wait()
            continue
        backoff.reset()
        if index_went_back(previous=index, answered=answered):
            index = 0  # distrust this answer, as for the catalog: read again, plainly
            continue
        _heard(state=state, name=name, group=group)
        index = next_index(answered)
        # Prometheus's refresh_interval ticker: a flapping service is re-queried at most this often.
        await pace(started=started, interval=query.refresh_interval)


def _heard(*, state: _WatchState, name: str, group: TargetGroup | None) -> None:
    """A service answered: clear its failure, note its first answer, take new targets."""
    if name in state.failed:
        del state.failed[name]
        state.mark_changed()
    if name not in state.heard_from:
        state.heard_from.add(name)
        state.mark_changed()
    if group is not None and state.known.get(name) != group:
        state.known[name] = group
        state.mark_changed()


async def _publish_changes(*, state: _WatchState, client: ConsulClient, publish: Publish) -> None:
    while True:
        await state.changed.wait()
        # Let the other watches that answered in the same burst land first.
        await asyncio.sleep(PUBLISH_COALESCE_SECONDS)
        state.changed.clear()
        if state.all_reported():
            await publish(state.take_snapshot(client))
            release_free_memory()
