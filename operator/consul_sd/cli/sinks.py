"""The ``--output`` file of a continuous run, kept through a vanished or read-only directory.

:class:`~consul_sd.outputs.filesd.FileSDWriter` raises when the file cannot be written (the
directory was removed, the disk is full). A long-running ``consul-sd discover`` must not die of
that: :class:`RetryingFileSink` reports it once (one ERROR line naming the file and what to do),
keeps the latest snapshot, and writes it as soon as it can, at the next publication or every
``retry_seconds``, whichever comes first; it reports the recovery once too. A file removed
after it was written (by hand, or with its directory) is noticed within ``retry_seconds`` and
written again, even when no target changed.
"""

from __future__ import annotations

import asyncio
import logging

from consul_sd.discovery.snapshots import Snapshot
from consul_sd.outputs.filesd import FileSDWriter

logger = logging.getLogger("consul_sd")


class RetryingFileSink:
    """Publishes to ``writer``; a failed write is retried until it succeeds or is superseded."""

    def __init__(self, writer: FileSDWriter, *, retry_seconds: float = 5.0) -> None:
        self.writer = writer
        self._retry_seconds = retry_seconds
        self._pending: Snapshot | None = None
        self._last: Snapshot | None = None
        self._failing = False

    async def publish(self, snapshot: Snapshot) -> None:
        self._pending = self._last = snapshot
        await self._write()

    async def _write(self) -> None:
        snapshot = self._pending
        if snapshot is None:
            return
        gone = self.writer.replaced()
        try:
            await self.writer.publish(snapshot)
        except OSError as exc:
            if not self._failing:
                logger.error(
                    "--output %s: cannot write in %s (%s); targets kept in memory, retrying "
                    "every %gs: recreate the directory or fix its permissions",
                    self.writer.path,
                    self.writer.path.parent,
                    exc.strerror or type(exc).__name__,
                    self._retry_seconds,
                )
                self._failing = True
            return
        if self._failing:
            logger.info("--output %s: written again", self.writer.path)
            self._failing = False
        elif gone:
            logger.warning(
                "--output %s: removed or replaced by another; written again", self.writer.path
            )
        if self._pending is snapshot:
            self._pending = None

    async def retry_forever(self) -> None:
        """Every ``retry_seconds`` (until cancelled), write the snapshot a failure left pending,
        or the last one again if the file was removed."""
        while True:
            await asyncio.sleep(self._retry_seconds)
            if self._pending is None and self.writer.replaced():
                # Removed with its directory, or by hand: the targets go back, changed or not.
                self._pending = self._last
            await self._write()
