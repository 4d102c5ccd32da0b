"""The loop idioms every long-running part shares, written once: backoff, pacing, cancel-and-wait.

- :func:`backoff_delay` and :class:`Backoff`: exponential backoff with jitter. Jitter spreads the
  retries of thousands of watches that failed together (a Consul restart), so they do not come
  back in one synchronised wave. One generator serves every loop (:data:`JITTER`): a
  ``random.Random`` per loop costs 2.5 KiB, 17 MiB for 7000 Blocking watches (measured).
- :func:`pace`: sleep until ``interval`` after a start, so a loop runs at most that often
  however long its body took.
- :func:`cancel_and_wait`: cancel tasks and wait until they have stopped, so no task outlives
  its owner and no exception escapes unretrieved.
- :func:`first_done`: wait for whichever of some awaitables finishes first.
- :class:`TokenBucket`: at most ``burst`` runs at once, then one per ``period``: what Consul's
  docs advise for blocking loops (a burst of changes is followed at once, a storm is not).

Pure asyncio: no Consul, no Kubernetes; every layer may use it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from typing import Any

JITTER = random.Random()


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random = JITTER) -> float:
    """Delay before retry number ``attempt`` (0-based): half fixed, half random, capped."""
    ceiling = min(cap, base * 2.0 ** min(attempt, 30))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Backoff:
    """Consecutive failures of one loop and the delay each earns; a success starts over."""

    __slots__ = ("base", "cap", "failures")

    def __init__(self, *, base: float, cap: float) -> None:
        self.base = base
        self.cap = max(base, cap)
        self.failures = 0

    def next_delay(self) -> float:
        """The delay after one more failure (counted)."""
        delay = backoff_delay(self.failures, base=self.base, cap=self.cap)
        self.failures += 1
        return delay

    async def wait(self) -> None:
        """Count a failure and sleep its delay."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.failures = 0


async def pace(*, started: float, interval: float) -> None:
    """Sleep until ``interval`` seconds after ``started`` (the running loop's clock)."""
    await asyncio.sleep(max(0.0, started + interval - asyncio.get_running_loop().time()))


class TokenBucket:
    """Allow a burst of ``burst`` runs, then one per ``period`` seconds (the loop's clock)."""

    __slots__ = ("burst", "period", "tokens", "updated")

    def __init__(self, *, burst: int, period: float) -> None:
        self.burst = burst
        self.period = period
        self.tokens = float(burst)
        self.updated: float | None = None

    def _refill(self) -> None:
        now = asyncio.get_running_loop().time()
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) / self.period)
        self.updated = now

    def try_take(self) -> bool:
        """Spend a token if one is there, without waiting."""
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def ready_at(self) -> float:
        """When the next token is there (the loop's clock)."""
        self._refill()
        return asyncio.get_running_loop().time() + max(0.0, 1 - self.tokens) * self.period

    async def take(self) -> None:
        """Wait for a token and spend it."""
        self._refill()
        if self.tokens < 1:
            await asyncio.sleep((1 - self.tokens) * self.period)
            self.tokens, self.updated = 1.0, asyncio.get_running_loop().time()
        self.tokens -= 1


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has stopped, swallowing what they raise."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def first_done(*waiters: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
    """Wait until at least one of ``waiters`` is done; the done ones."""
    done, _ = await asyncio.wait(set(waiters), return_when=asyncio.FIRST_COMPLETED)
    return done
