"""Polling's localizer for a services move: the services that gained or lost a checked instance.

A services move the catalog list does not explain (an instance registered, removed or edited
inside a listed service) names no service: Consul has no "changed since N" read. The checks table
does name services, through the checks each instance carries. :class:`CheckedInstances` reads
every check (``/v1/health/state/any``) when such a move is pending and compares each service's
set of (node, CheckID) with the previous read: a service whose set changed gained or lost an
instance, and is fetched.

Limits (why the full cycle within ``refreshInterval`` stays): an instance without a check, and
an edit that keeps the instance's checks (port, address, meta, tags), change no set. The read is
the heaviest the gate makes (173 ms of Consul CPU at 21000 checks against 0.56 ms for one
service), so reads are rate-limited (:data:`CHECKS_READ_PERIOD`); the first read only sets the
baseline; a failed read keeps the previous baseline, so the next read's comparison covers the gap,
and is not tried again for a while (:data:`FAILED_READ_BACKOFF`, growing): an answer past the
client's size cap in a fleet with long check outputs would otherwise cost Consul the whole read
every period, for nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.errors import ConsulError
from consul_sd.loops import Backoff, TokenBucket

logger = logging.getLogger(__name__)

# At most one read of every check per period: under churn Consul pays ~173 ms per read at
# 21000 checks, so this bounds the localizer's cost at ~35 ms of Consul CPU per second.
CHECKS_READ_PERIOD = 5.0

# After a failed read of every check, the next waits this long, doubling up to ten minutes.
FAILED_READ_BACKOFF = 30.0
_Checks = Mapping[str, frozenset[tuple[str, str]]]


class CheckedInstances:
    """The previous read of every check, and when the next one may be made."""

    def __init__(self) -> None:
        self.baseline: _Checks | None = None
        self.pending = False  # a move waits for the next read (rate-limited)
        self.reads = TokenBucket(burst=1, period=CHECKS_READ_PERIOD)
        self.failures = Backoff(base=FAILED_READ_BACKOFF, cap=600.0)
        self.failed_until = 0.0

    def wanted(self, *, unexplained: bool) -> bool:
        """Whether a cycle should compare: a move is unexplained or waiting, or no baseline."""
        return unexplained or self.pending or self.baseline is None

    async def changed(self, client: ConsulClient) -> set[str] | None:
        """Services whose checked instances changed since the last read; ``None``: not known.

        ``None`` when the read is not allowed yet (then :attr:`pending` asks for a cycle at
        :meth:`due`), fails, or only sets the first baseline.
        """
        clock = asyncio.get_running_loop().time()
        if clock < self.failed_until:
            self.pending = False  # left to the full cycle within the refresh interval
            return None
        if not self.reads.try_take():
            self.pending = True
            return None
        self.pending = False
        try:
            now = await client.service_checks()
        except ConsulError as error:
            self.failed_until = clock + self.failures.next_delay()
            logger.warning(
                "reading every check failed, retried in %.0f s: %s",
                self.failed_until - clock,
                error,
            )
            return None
        self.failures.reset()
        before, self.baseline = self.baseline, now
        if before is None:
            return None
        return {name for name in before.keys() | now.keys() if before.get(name) != now.get(name)}

    def due(self) -> float | None:
        """When a waiting comparison may read (the loop's clock), if one waits."""
        return self.reads.ready_at() if self.pending else None
