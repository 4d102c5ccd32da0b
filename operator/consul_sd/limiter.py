"""An adaptive concurrency limit (AIMD) for requests to one Consul endpoint.

Consul refuses connections past ``limits.http_max_conns_per_client`` (200 by default) with a 429
and server rate limits answer 429 too. Retrying at the same concurrency only meets the same wall,
so the client lowers its own limit on a 429 (halving it, at most once per cool-down, so one burst
of refusals counts once) and raises it by one after a full window of successes, back up to the
configured maximum, no faster than once per ``probe_interval`` (probing up quickly would walk
straight back into the wall). The effective limit is observable for status and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable


class AdaptiveLimit:
    """At most ``limit`` holders at once; ``limit`` moves between 1 and ``maximum``."""

    def __init__(
        self,
        maximum: int,
        *,
        cooldown: float = 1.0,
        probe_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = maximum
        self.limit = maximum
        self.in_use = 0
        self.decreases = 0
        self._cooldown = cooldown
        self._probe_interval = probe_interval
        self._last_increase = -1e18
        self._clock = clock
        self._last_decrease = -1e18
        self._successes = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_use < self.limit)
            self.in_use += 1
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= 1
                self._changed.notify_all()

    def record_success(self) -> None:
        if self.limit >= self.maximum:
            return
        self._successes += 1
        now = self._clock()
        if self._successes >= self.limit and now - self._last_increase >= self._probe_interval:
            self._successes = 0
            self._last_increase = now
            self.limit += 1

    def record_rejection(self) -> None:
        now = self._clock()
        if now - self._last_decrease < self._cooldown:
            return
        self._last_decrease = now
        self._last_increase = now
        self._successes = 0
        self.limit = max(1, min(self.limit, self.in_use) // 2)
        self.decreases += 1
