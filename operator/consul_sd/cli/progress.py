"""What ``consul-sd discover`` says while it works: progress for ``--once``, heartbeats after.

:class:`RequestTally` is the Consul client's request observer: it counts every request, and the
service reads (``health_service``) that ``--once`` reports as services fetched. The total is
the number of services the catalog listing matched, which :class:`CountingClient` records (the
engine publishes nothing before its first complete snapshot, so no other seam knows it).
:class:`OnceProgress` prints ``fetched/total, rate, ETA`` to stderr about once a second (on a
terminal, one line rewritten in place). :class:`Heartbeat` logs one INFO line per publication,
or one per interval, with targets, services, changes and Consul requests, and a line after a
quiet stretch, so a healthy idle run and a stuck one look different.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from consul_sd.consul.client import ConsulClient
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.targets import TargetGroup

logger = logging.getLogger("consul_sd")
# The service reads --once counts as "fetched": one per service, whatever the answer.
SERVICE_READ = "health_service"
# Without publications, a heartbeat still comes this often (Blocking on a quiet fleet).
QUIET_HEARTBEAT = 300.0


class RequestTally:
    """Counts requests as the client makes them (a :class:`RequestObserver`)."""

    def __init__(self) -> None:
        self.requests = 0
        self.service_reads = 0

    def __call__(self, *, endpoint: str, outcome: str, seconds: float) -> None:
        self.requests += 1
        if endpoint == SERVICE_READ:
            self.service_reads += 1


class CountingClient(ConsulClient):
    """A :class:`ConsulClient` that records how many services the last listing matched."""

    def __init__(self, *, matches: Callable[[str, Iterable[str]], bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._matches = matches
        self.matched: int | None = None

    async def list_services(self, **kwargs: Any) -> tuple[dict[str, tuple[str, ...]], int]:
        services, index = await super().list_services(**kwargs)
        self.matched = sum(1 for name, tags in services.items() if self._matches(name, tags))
        return services, index


def progress_line(*, fetched: int, total: int | None, elapsed: float) -> str:
    """``fetched/total services, rate/s, ETA``; the total and ETA once the listing is known."""
    rate = fetched / elapsed if elapsed > 0 else 0.0
    if total is None:
        return f"listing services... {fetched} fetched ({rate:.0f}/s)"
    shown = min(fetched, total)
    eta = f", ETA {_duration((total - shown) / rate)}" if rate > 0 and shown < total else ""
    return f"{shown}/{total} services fetched ({rate:.0f}/s{eta})"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class OnceProgress:
    """Prints :func:`progress_line` to ``stream`` every ``interval`` seconds until stopped."""

    def __init__(
        self,
        *,
        tally: RequestTally,
        client: CountingClient,
        stream: TextIO = sys.stderr,
        interval: float = 1.0,
    ) -> None:
        self._tally = tally
        self._client = client
        self._stream = stream
        self._interval = interval
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._terminal = stream.isatty()

    def start(self) -> None:
        self._task = asyncio.create_task(self._report())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._terminal:
            self._stream.write("\r\x1b[K")  # the summary line replaces the progress line
            self._stream.flush()

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            line = progress_line(
                fetched=self._tally.service_reads,
                total=self._client.matched,
                elapsed=time.monotonic() - self._started,
            )
            end = "\x1b[K" if self._terminal else "\n"
            self._stream.write(("\r" if self._terminal else "") + f"consul-sd: {line}{end}")
            self._stream.flush()


def changed_services(
    before: Mapping[str, TargetGroup] | None, after: Mapping[str, TargetGroup]
) -> int:
    """How many services gained, lost or changed targets between two publications."""
    if before is None:
        return len(after)
    names = before.keys() | after.keys()
    return sum(1 for name in names if before.get(name) != after.get(name))


class Heartbeat:
    """One INFO line per publication (``interval`` 0) or per ``interval`` seconds."""

    def __init__(self, *, tally: RequestTally, interval: float) -> None:
        self.tally = tally
        self._interval = interval
        self._last: Snapshot | None = None
        self._changes = 0
        self._requests_seen = 0
        self._published = 0
        self._ever_published = 0  # never reset: tells a quiet stretch from a busy one

    @property
    def last(self) -> Snapshot | None:
        return self._last

    async def publish(self, snapshot: Snapshot) -> None:
        self._changes += changed_services(
            self._last.groups if self._last is not None else None, snapshot.groups
        )
        self._published += 1
        self._ever_published += 1
        self._last = snapshot
        if self._interval <= 0:
            self.log()

    def log(self) -> None:
        requests = self.tally.requests - self._requests_seen
        self._requests_seen = self.tally.requests
        if self._last is None:
            logger.info("heartbeat: no complete discovery yet, %d Consul requests", requests)
            return
        snapshot = self._last
        problem = f", problem: {snapshot.problem.reason}" if snapshot.problem else ""
        logger.info(
            "heartbeat: %d targets in %d services, %d changed, %d publications, "
            "%d Consul requests (%s%s)",
            snapshot.targets,
            len(snapshot.groups),
            self._changes,
            self._published,
            requests,
            snapshot.mode or "choosing mode",
            problem,
        )
        self._changes = 0
        self._published = 0

    async def run(self) -> None:
        """The timed lines: every interval, or after a quiet stretch without publications."""
        period = self._interval if self._interval > 0 else QUIET_HEARTBEAT
        while True:
            published = self._ever_published
            await asyncio.sleep(period)
            if self._interval > 0 or self._ever_published == published:
                self.log()
