"""How every discovery mode meets Consul's failures: the error backoff, the cold-start retry and
the bounded fan-out that keeps each service's failure as its result.

- Errors back off with jitter (:func:`error_backoff`), from :data:`ERROR_BACKOFF_BASE` up to
  ``refreshInterval`` and never past :data:`ERROR_BACKOFF_CAP`, in every mode and every loop (a
  catalog, a service, the datacenter lookup): a failing Consul is asked again at least as
  often as a healthy one would be read, and within 15 s whatever ``refreshInterval`` says.
- :func:`until_answered` retries a read that discovery cannot start without (the datacenter,
  Auto's first count), publishing each failure so the status shows why nothing is discovered.
- :func:`fetch_all` fetches many services with at most ``maxConcurrent`` requests in flight.
- :func:`index_went_back` and :func:`next_index`: Consul's rules for a blocking query's index
  (an index that goes back is a restarted Consul, a restored snapshot or a lagging server).

Cancellation stops every in-flight request: the loops here hold their tasks in a TaskGroup, so
none outlives its caller. The generic idioms (:class:`~consul_sd.loops.Backoff`,
:func:`~consul_sd.loops.pace`, :func:`~consul_sd.loops.cancel_and_wait`) live in
:mod:`consul_sd.loops`; this module adds only what knows about Consul errors and snapshots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.errors import ConsulError
from consul_sd.discovery.query import EffectiveMode
from consul_sd.discovery.snapshots import Publish, cold_failure
from consul_sd.loops import Backoff

_T = TypeVar("_T")

ERROR_BACKOFF_BASE = 1.0
# Prometheus sleeps a fixed 15s after a failed watch; every loop backs off up to the same bound.
ERROR_BACKOFF_CAP = 15.0


def error_backoff(*, refresh_interval: float) -> Backoff:
    """A fresh backoff for one loop's Consul errors (the same bounds in every mode)."""
    return Backoff(base=ERROR_BACKOFF_BASE, cap=min(ERROR_BACKOFF_CAP, refresh_interval))


async def until_answered(
    *,
    read: Callable[[], Awaitable[_T]],
    publish: Publish,
    mode: EffectiveMode | None,
    client: ConsulClient,
    refresh_interval: float,
) -> _T:
    """``read()`` until Consul answers; each failure is published, then backed off.

    Used before anything was discovered, so each failure is a cold one (see
    :func:`~consul_sd.discovery.snapshots.cold_failure`); ``mode`` is ``None`` while Auto has
    not chosen yet.
    """
    backoff = error_backoff(refresh_interval=refresh_interval)
    while True:
        try:
            return await read()
        except ConsulError as error:
            await publish(cold_failure(error=error, mode=mode, client=client))
            await backoff.wait()


async def fetch_all(
    *,
    names: Sequence[str],
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


def index_went_back(*, previous: int, answered: int) -> bool:
    """Whether a blocking answer's index is below the one asked with.

    Consul's rule is to reset the index and read again. The answer itself is not applied: seen
    on a real agent, a health long-poll parked with a token that is then deleted answers 200 with
    index 1 and an empty body, which would otherwise replace the service's targets with nothing;
    the plain read that follows gets the 403 instead, and the targets are kept.
    """
    return previous > 0 and max(answered, 1) < previous


def next_index(answered: int) -> int:
    """The index to ask with after an answer that did not go back (see :func:`index_went_back`).

    An index below 1 is asked as 1, Consul's client rule: index 0 would answer at once, and the
    watch would spin.
    """
    return max(answered, 1)
