"""The file_sd file writer of ``consul-sd discover``: atomic, only on change, never partial.

Prometheus re-reads a file_sd file on every fsnotify event, and a file that parses as ``[]``
clears its targets, so the file is replaced with a rename of a complete temporary file in the
same directory, never written in place. Nothing is written until a worker's snapshot is complete;
after that a snapshot is written when its bytes differ (failed services carry their previous
targets in it), or when the file written last was removed or replaced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from consul_sd.consul.errors import ConsulError
from consul_sd.discovery.snapshots import Snapshot, is_publishable
from consul_sd.outputs.render import render_file_sd

logger = logging.getLogger(__name__)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename; readers see the old or the new file."""
    directory = path.parent
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class FileSDWriter:
    """Publishes snapshots to one file_sd JSON file."""

    def __init__(self, path: Path, *, describe: Callable[[ConsulError], str] | None = None) -> None:
        self.path = path
        # How a Consul problem is told (the CLI's: with the flag to fix); else reason: error.
        self._describe = describe or (lambda error: f"{error.reason}: {error}")
        self.writes = 0
        # A digest, not the bytes: the file of 7000 services is ~13 MiB that would stay resident.
        self._last_digest: bytes | None = None
        self._problem: str | None = None
        # (device, inode) of the file as written: another means it was removed or replaced.
        self._written: tuple[int, int] | None = None

    def replaced(self) -> bool:
        """Whether the file written last is no longer at ``path`` (removed, or another file)."""
        if self._written is None:
            return False
        try:
            status = self.path.stat()
        except OSError:
            return True
        return (status.st_dev, status.st_ino) != self._written

    async def publish(self, snapshot: Snapshot) -> None:
        problem = snapshot.problem
        described = self._describe(problem) if problem is not None else None
        if described != self._problem:  # log transitions, not every cycle
            if described is not None:
                kept = "previous targets kept" if self._last_digest else "nothing written yet"
                logger.warning("%s (%s)", described, kept)
            else:
                logger.info("recovered from %s", self._problem)
            self._problem = described
        if not is_publishable(snapshot, published_before=self._last_digest is not None):
            return
        data = render_file_sd(snapshot.groups)
        digest = hashlib.sha256(data).digest()
        if digest == self._last_digest and not self.replaced():
            return
        write_atomically(self.path, data)
        self._last_digest = digest
        status = self.path.stat()
        self._written = (status.st_dev, status.st_ino)
        self.writes += 1
        logger.info(
            "wrote %s: %d targets from %d services (%s)",
            self.path,
            snapshot.targets,
            len(snapshot.groups),
            snapshot.mode,
        )
