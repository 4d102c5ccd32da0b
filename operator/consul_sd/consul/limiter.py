"""An adaptive concurrency limit (AIMD) for requests to one Consul endpoint.

Consul refuses connections past ``limits.http_max_conns_per_client`` (200 by default) with a 429
and server rate limits answer 429 too. Retrying at the same concurrency only meets the same wall,
so the client lowers its own limit on a 429 (halving it, at most once per cool-down, so one burst
of refusals counts once) and raises it by one after a full window of successes, back up to the
configured maximum, no faster than once per ``probe_interval`` (probing up quickly would walk
straight back into the wall). The effective limit is observable for status and metrics.

Every request passes through here, so the uncontended path takes no lock and awaits nothing;
waiters queue in FIFO order and a release hands its slot directly to the next one.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from types import TracebackType


class AdaptiveLimit:
    """At most ``limit`` holders at once; ``limit`` moves between 1 and ``maximum``.

    Use as ``async with limit:``.
    """

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
        self._clock = clock
        self._last_decrease = -1e18
        self._last_increase = -1e18
        self._successes = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just before the cancellation
            elif waiter in self._waiters:  # a release may already have dropped it
                self._waiters.remove(waiter)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    def record_success(self) -> None:
        if self.limit >= self.maximum:
            return
        self._successes += 1
        now = self._clock()
        if self._successes >= self.limit and now - self._last_increase >= self._probe_interval:
            self._successes = 0
            self._last_increase = now
            self.limit += 1
            self._wake()

    def record_rejection(self) -> None:
        now = self._clock()
        if now - self._last_decrease < self._cooldown:
            return
        self._last_decrease = now
        self._last_increase = now
        self._successes = 0
        self.limit = max(1, min(self.limit, self.in_use) // 2)
        self.decreases += 1
