"""The snapshot every mode publishes, the one meaning of "complete", and the publish rule.

A worker runs until cancelled and calls ``publish`` with a :class:`Snapshot`: always the full
set of targets (level-based, never a diff), so a sink can be restarted, skip unchanged bytes, and
never has to merge. The rules every mode keeps, whatever its loops look like:

- A service whose fetch failed keeps its previous targets; a service gone from the catalog has
  its targets cleared. A catalog failure keeps everything.
- *Complete* (:func:`is_complete`) means the catalog was listed and every matched service
  answered once, or failed permanently while others answered. Sinks never write a snapshot that
  is not complete before one that is (:func:`is_publishable`), so an outage or a cold start never
  publishes an empty or partial set.

Pure rules over the snapshot: no loop, no request (the client is read only for its counters).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.errors import (
    ConsulBadRequest,
    ConsulBadResponse,
    ConsulError,
    ConsulUnreachable,
)
from consul_sd.discovery.query import EffectiveMode
from consul_sd.targets import TargetGroup, count_targets


@dataclass(frozen=True)
class Snapshot:
    """The full discovered state at one moment, as a worker publishes it.

    - ``groups``: the targets of every matched service known so far (failed ones keep theirs).
    - ``mode``: the mode that gathered it; ``None`` while Auto has not chosen one yet (a failure
      before its first count, or of the datacenter lookup under Auto).
    - ``complete``: see :func:`is_complete` (and the catalog was listed).
    - ``matched``: how many services the query matched (a count; 0 before the first listing).
    - ``failed``: the services whose last request failed, with the error.
    - ``error``: the failure of the whole discovery (the catalog, the datacenter), if any.
    - ``duration``: how long this publication took to gather, in seconds: in Polling, its cycle
      (catalog, gate and fetches); in Blocking, from the first change it carries (or the watch's
      start, for the first publication) to its publication. Auto passes on its current mode's.
      0 for a failure before anything was discovered.
    - ``requests``: the requests made since the previous snapshot, by (endpoint, outcome).
    """

    groups: Mapping[str, TargetGroup]
    mode: EffectiveMode | None
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
# a service and discovers the rest; so does a snapshot here (see is_complete).
PERMANENT_FAILURES = (ConsulBadRequest, ConsulBadResponse)


def is_permanent(error: ConsulError) -> bool:
    return isinstance(error, PERMANENT_FAILURES)


def is_complete(
    *, names: Iterable[str], groups: Mapping[str, TargetGroup], failed: Mapping[str, ConsulError]
) -> bool:
    """Whether every service in ``names`` has targets, or failed permanently while others answered.

    ``names`` are the matched services; a snapshot is complete when this holds and the catalog
    was listed (a mode checks the listing itself).

    A service that fails for a reason that can pass (unreachable, 5xx, 429, ACL) holds the
    snapshot back until it answers once. One that fails permanently does not hold back the rest,
    unless nothing answered at all: a filter Consul cannot compile fails every service, and that
    must never publish an empty set.
    """
    missing = [name for name in names if name not in groups]
    if not missing:
        return True
    if not groups:
        return False
    return all(name in failed and is_permanent(failed[name]) for name in missing)


def is_publishable(snapshot: Snapshot, *, published_before: bool) -> bool:
    """Whether a sink may write ``snapshot``: the one rule that keeps outputs complete.

    Until a complete snapshot was written, only a complete one is; after that any snapshot that
    is not a failure of the whole discovery (its failed services carry their previous targets).
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


def cold_failure(
    *, error: ConsulError, mode: EffectiveMode | None, client: ConsulClient
) -> Snapshot:
    """What a worker publishes when Consul fails before anything was discovered."""
    return Snapshot(
        groups={},
        mode=mode,
        complete=False,
        matched=0,
        error=error,
        requests=client.stats.take(),
    )


def connection_broke(requests: Counter[tuple[str, str]]) -> bool:
    """Whether any of these requests found Consul unreachable (a restart, a partition)."""
    return any(outcome == ConsulUnreachable.reason for _, outcome in requests)
