"""Whether each ConsulDiscovery's loop is still moving, for the liveness probe.

A loop that stops progressing must fail liveness, so the kubelet restarts the pod instead of
leaving status and metrics frozen at Healthy. Progress is any finished step: a Consul request
answered or failed, a snapshot published, a retry of a blocked start. A loop is stalled when no
step finished for its allowance (a few refresh intervals or blocking waits, at least
:data:`MIN_ALLOWANCE`), or when one publication has been running for longer than
:data:`PUBLISH_ALLOWANCE` (every Kubernetes call has its own timeout far below that).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MIN_ALLOWANCE = 300.0
PUBLISH_ALLOWANCE = 300.0


@dataclass
class _Loop:
    allowance: float
    last_step: float
    publishing_since: float | None = None


class Progress:
    """Steps of every running discovery loop, keyed by ``namespace/name``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._loops: dict[str, _Loop] = {}

    def track(self, key: str, *, allowance: float) -> None:
        """Start (or restart) watching ``key``; a loop stalls after ``allowance`` without steps."""
        self._loops[key] = _Loop(allowance=max(MIN_ALLOWANCE, allowance), last_step=self._clock())

    def forget(self, key: str) -> None:
        self._loops.pop(key, None)

    def step(self, key: str) -> None:
        loop = self._loops.get(key)
        if loop is not None:
            loop.last_step = self._clock()

    @contextlib.contextmanager
    def publishing(self, key: str) -> Iterator[None]:
        """Marks a publication in flight; its end is a step."""
        loop = self._loops.get(key)
        if loop is not None:
            loop.publishing_since = self._clock()
        try:
            yield
        finally:
            if loop is not None:
                loop.publishing_since = None
                loop.last_step = self._clock()

    def stalled(self) -> list[str]:
        """The loops that stopped progressing, each with how long, as one-line descriptions."""
        now = self._clock()
        found = []
        for key, loop in sorted(self._loops.items()):
            if (
                loop.publishing_since is not None
                and now - loop.publishing_since > PUBLISH_ALLOWANCE
            ):
                found.append(
                    f"{key}: one publication running for {now - loop.publishing_since:.0f}s"
                )
            elif now - loop.last_step > loop.allowance:
                found.append(f"{key}: no progress for {now - loop.last_step:.0f}s")
        return found


PROGRESS = Progress()
