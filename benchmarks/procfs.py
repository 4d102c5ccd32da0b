"""What the benchmarks read about a running process, straight from /proc (Linux only).

- ``connections_to(pid, port)``: ESTABLISHED TCP sockets that ``pid`` holds to 127.0.0.1:``port``
  (the socket inodes of /proc/net/tcp whose remote end is that port, intersected with the inodes
  behind /proc/PID/fd). This is what ``psutil.Process(pid).net_connections()`` computes, without
  building an object per socket of the whole machine.
- ``cpu_seconds(pid)``: user + system CPU seconds of the process (its threads included, its
  children not).
- ``rss_bytes(pid)`` and ``peak_rss_bytes(pid)``: VmRSS and VmHWM (the kernel's high-water mark
  of the resident set, since the process started).
- ``Sampler``: a thread that records those figures every ``interval`` seconds for a set of
  processes, so peaks and medians can be taken afterwards.

All functions return 0 for a process that is gone, so a sample never raises mid-run.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

_TICKS = os.sysconf("SC_CLK_TCK")
_ESTABLISHED = b"01"


def _socket_inodes_to(port: int) -> set[bytes]:
    """Inodes (as bytes) of ESTABLISHED IPv4 sockets whose remote end is 127.0.0.1:port."""
    remote = b"0100007F:%04X" % port
    inodes: set[bytes] = set()
    try:
        with open("/proc/net/tcp", "rb") as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) > 9 and fields[2] == remote and fields[3] == _ESTABLISHED:
                    inodes.add(fields[9])
    except OSError:
        pass
    return inodes


def _fd_socket_inodes(pid: int) -> set[bytes]:
    directory = f"/proc/{pid}/fd"
    inodes: set[bytes] = set()
    try:
        names = os.listdir(directory)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{directory}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1].encode())
    return inodes


def connections_to(pid: int, port: int) -> int:
    """ESTABLISHED sockets of ``pid`` to 127.0.0.1:``port``."""
    wanted = _socket_inodes_to(port)
    if not wanted:
        return 0
    return len(wanted & _fd_socket_inodes(pid))


def all_connections_to(port: int) -> int:
    """ESTABLISHED client sockets to 127.0.0.1:``port`` of every process on the machine."""
    return len(_socket_inodes_to(port))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return 0.0
    fields = data.rpartition(b")")[2].split()
    # After the command name: state is field 0, utime field 11, stime field 12.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_kib(pid: int, key: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now."""
    return _status_kib(pid, b"VmRSS:") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark of ``pid``'s resident set (VmHWM)."""
    return _status_kib(pid, b"VmHWM:") * 1024


def threads(pid: int) -> int:
    return _status_kib(pid, b"Threads:")


@dataclass(frozen=True)
class Sample:
    """One reading of one process."""

    at: float  # time.monotonic()
    connections: int
    rss: int
    cpu: float


@dataclass
class Series:
    """The samples of one process, in time order."""

    samples: list[Sample] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def peak_connections(self, start: float = 0.0, end: float = float("inf")) -> int:
        return max((s.connections for s in self.between(start, end)), default=0)

    def median_connections(self, start: float, end: float) -> float:
        values = [s.connections for s in self.between(start, end)]
        return statistics.median(values) if values else 0.0

    def median_rss(self, start: float, end: float) -> float:
        values = [s.rss for s in self.between(start, end)]
        return statistics.median(values) if values else 0.0


class Sampler:
    """Samples connections to ``port``, RSS and CPU of named pids every ``interval`` seconds.

    A daemon thread; ``stop()`` ends it. Connections are counted only for the pids named in
    ``count_connections`` (reading every fd of a big process costs a few milliseconds).
    """

    def __init__(
        self,
        pids: Mapping[str, int],
        *,
        port: int,
        interval: float = 0.5,
        count_connections: frozenset[str] = frozenset(),
    ) -> None:
        self.pids = dict(pids)
        self.port = port
        self.interval = interval
        self.count_connections = count_connections
        self.series: dict[str, Series] = {name: Series() for name in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sample_now(self) -> None:
        wanted = _socket_inodes_to(self.port) if self.count_connections else set()
        at = time.monotonic()
        for name, pid in self.pids.items():
            connections = 0
            if name in self.count_connections and wanted:
                connections = len(wanted & _fd_socket_inodes(pid))
            self.series[name].samples.append(
                Sample(at=at, connections=connections, rss=rss_bytes(pid), cpu=cpu_seconds(pid))
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample_now()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
