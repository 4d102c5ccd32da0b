"""The discoverers the field-report benchmark compares, each started, watched and stopped alike.

- ``prometheus``: Prometheus v3.14 with its own blocking ``consul_sd`` (the field report's setup),
  default ``refresh_interval`` (30s) and its fixed 2-minute watch timeout.
- ``prometheus-file``: the same Prometheus job on ``file_sd`` instead, reading a file that
  ``consul-sd discover --once`` wrote: what Prometheus itself still costs once discovery moved
  out (a reference row; it sends nothing to Consul).
- ``consul-sd`` systems: ``consul-sd discover --output FILE`` with a mode and a cap.

Scraping is kept out of the measurement: the job keeps every discovered target (so the scrape
pool holds them all, as in production) but scrapes every 24h, and ``__address__`` is relabelled to
the discard port 127.0.0.1:9, so the few scrapes whose random offset falls inside a run fail at
once on loopback. Copying the node and service ID into target labels keeps targets that share
an address apart (Prometheus merges active targets with equal label sets).

How a target set is observed: for Prometheus, ``prometheus_target_scrape_pool_targets`` of the
job (targets in the scrape pool, after its 5s discovery and reload throttles); for consul-sd, the
groups in the output file (one per target), read again whenever its inode or mtime changes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from tests.support.components import Prometheus, http_request

from benchmarks import consul_env
from benchmarks.consul_env import ADD_ID, DEL_IDS, parse_metrics

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
CLI = [sys.executable, "-m", "consul_sd.cli"]
JOB = "consul"
AUTO_POLLING_AT = (
    1000  # consul_sd.discovery.query.AUTO_POLLING_AT, not imported to stay a black box
)

Kind = Literal["prometheus", "prometheus-file", "consul-sd"]


@dataclass(frozen=True)
class System:
    key: str
    label: str
    kind: Kind
    args: tuple[str, ...] = ()
    mode: Literal["blocking", "polling", "auto", "file"] = "blocking"

    def blocking_at(self, services: int) -> bool:
        """Whether it long-polls at this size (Auto decides by the matched count)."""
        if self.mode == "auto":
            return services + 1 < AUTO_POLLING_AT  # + Consul's own service
        return self.mode == "blocking"

    @property
    def talks_to_consul(self) -> bool:
        return self.kind != "prometheus-file"


SYSTEMS: dict[str, System] = {
    system.key: system
    for system in (
        System("prometheus", "Prometheus consul_sd (blocking)", "prometheus"),
        System("blocking", "consul-sd Blocking", "consul-sd", ("--mode", "blocking")),
        System(
            "polling-100",
            "consul-sd Polling, maxConcurrent 100",
            "consul-sd",
            ("--mode", "polling", "--max-concurrent", "100"),
            "polling",
        ),
        System(
            "polling-200",
            "consul-sd Polling, maxConcurrent 200",
            "consul-sd",
            ("--mode", "polling", "--max-concurrent", "200"),
            "polling",
        ),
        System(
            "polling-500",
            "consul-sd Polling, maxConcurrent 500",
            "consul-sd",
            ("--mode", "polling", "--max-concurrent", "500"),
            "polling",
        ),
        System("auto", "consul-sd Auto", "consul-sd", ("--mode", "auto"), "auto"),
        System(
            "prometheus-file",
            "Prometheus file_sd (reference, no consul_sd)",
            "prometheus-file",
            mode="file",
        ),
    )
}

_PATTERNS = {
    "connection reset": re.compile(r"connection reset|reset by peer", re.I),
    "EOF": re.compile(r"\bEOF\b"),
    "429": re.compile(r"\b429\b|too many concurrent|RateLimited", re.I),
    "too many open files": re.compile(r"too many open files", re.I),
    "timeout": re.compile(r"timed? ?out|deadline exceeded", re.I),
    "disconnected": re.compile(r"disconnected|refused|broken pipe|unreachable", re.I),
}


def count_errors(lines: list[str], *, error_line: re.Pattern[str]) -> dict[str, Any]:
    """Lines that are errors or warnings: in total, by cause, and the first few distinct ones."""
    counts: Counter[str] = Counter()
    samples: list[str] = []
    for line in lines:
        if not error_line.search(line):
            continue
        counts["lines"] += 1
        for name, pattern in _PATTERNS.items():
            if pattern.search(line):
                counts[name] += 1
        text = line[:300]
        if len(samples) < 3 and text not in samples:
            samples.append(text)
    return {**counts, "samples": samples} if counts else {}


class Running(Protocol):
    """A started discoverer."""

    pid: int

    def count(self) -> int:
        """Targets delivered right now."""

    def probe(self, expected: int) -> tuple[bool, bool]:
        """(the added instance is present, the deleted ones are gone)."""

    def extra(self) -> dict[str, Any]:
        """Figures only this kind has (goroutines, RPC counts)."""

    def errors(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


def _relabel() -> list[dict[str, Any]]:
    return [
        {"source_labels": ["__meta_consul_node"], "target_label": "consul_node"},
        {"source_labels": ["__meta_consul_service_id"], "target_label": "consul_service_id"},
        {"target_label": "__address__", "replacement": "127.0.0.1:9"},
    ]


def prometheus_config(
    *, sd: dict[str, Any], relabel: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The one-job config; ``relabel`` replaces the default relabelling (freshness.py keeps
    only the services it churns)."""
    relabel_configs = relabel if relabel is not None else _relabel()
    return {
        "global": {"scrape_interval": "24h", "scrape_timeout": "10s", "evaluation_interval": "24h"},
        "scrape_configs": [{"job_name": JOB, **sd, "relabel_configs": relabel_configs}],
    }


class RunningPrometheus:
    """Prometheus with one job, watched through its own /metrics."""

    def __init__(
        self,
        *,
        workdir: Path,
        sd: dict[str, Any],
        relabel: list[dict[str, Any]] | None = None,
    ) -> None:
        self.prometheus = Prometheus(prometheus_config(sd=sd, relabel=relabel))
        self.prometheus.start(workdir, timeout=120.0)
        self.pid = self.prometheus._processes[0].pid
        self.max_goroutines = 0.0
        self._metrics: dict[str, float] = {}

    def _scrape(self) -> dict[str, float]:
        try:
            answer = http_request("GET", f"{self.prometheus.url}/metrics", timeout=30)
        except OSError:
            return self._metrics
        values: dict[str, float] = {}
        for name, labels, value in parse_metrics(answer.text):
            if name == "prometheus_target_scrape_pool_targets" and labels.get("scrape_job") == JOB:
                values["targets"] = value
            elif name == "go_goroutines":
                values["goroutines"] = value
                self.max_goroutines = max(self.max_goroutines, value)
            elif name == "prometheus_sd_consul_rpc_duration_seconds_count":
                key = f"rpc_{labels.get('endpoint', '')}_{labels.get('call', '')}"
                values[key] = values.get(key, 0.0) + value
            elif name == "prometheus_sd_consul_rpc_failures_total":
                values["rpc_failures"] = value
            elif name == "prometheus_sd_discovered_targets" and labels.get("config") == JOB:
                values["discovered"] = value
        self._metrics = values
        return values

    def count(self) -> int:
        return int(self._scrape().get("targets", 0))

    def probe(self, expected: int) -> tuple[bool, bool]:
        # +1 the registration, -2 the deregistration (see consul_env): one count tells both.
        delta = self.count() - expected
        return {1: (True, False), -2: (False, True), -1: (True, True)}.get(delta, (False, False))

    def extra(self) -> dict[str, Any]:
        values = dict(self._scrape())
        values["max_goroutines"] = self.max_goroutines
        return values

    def errors(self) -> dict[str, Any]:
        try:
            lines = self.prometheus.log_files[0].read_text(errors="replace").splitlines()
        except (OSError, IndexError):
            return {}
        return count_errors(lines, error_line=re.compile(r"level=(ERROR|WARN)"))

    def stop(self) -> None:
        self.prometheus.stop()


class RunningConsulSD:
    """``consul-sd discover --output FILE`` in its own process group."""

    def __init__(self, *, workdir: Path, server: str, args: tuple[str, ...]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.output = workdir / "targets.json"
        self.log_path = workdir / "consul-sd.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*CLI, "discover", "--server", server, "--output", str(self.output), *args],
                env=ENV,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid
        self._seen: tuple[int, int, int] | None = None
        self._count = 0
        self._probe = (False, False)

    def _refresh(self) -> None:
        try:
            stat = self.output.stat()
        except FileNotFoundError:
            return
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if key == self._seen:
            return
        data = self.output.read_bytes()  # replaced by rename: always a whole file
        self._seen = key
        # render.py: one group per target, compact separators, sorted keys.
        self._count = data.count(b'"targets":[')
        marker = b'"__meta_consul_service_id":"%s"'
        added = (marker % ADD_ID.encode()) in data
        deleted = not any((marker % i.encode()) in data for i in DEL_IDS)
        self._probe = (added, deleted)

    def count(self) -> int:
        self._refresh()
        return self._count

    def probe(self, expected: int) -> tuple[bool, bool]:
        self._refresh()
        return self._probe

    def extra(self) -> dict[str, Any]:
        return {"exit_code": self.process.poll()}

    def errors(self) -> dict[str, Any]:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        return count_errors(lines, error_line=re.compile(r" (WARNING|ERROR|CRITICAL) "))

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(20)


def write_file_sd(*, server: str, output: Path, log: Path) -> None:
    """One ``consul-sd discover --once`` into ``output`` (for the file_sd reference)."""
    with log.open("wb") as handle:
        subprocess.run(
            [*CLI, "discover", "--server", server, "--once", "--output", str(output)],
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=300,
        )


def prepare(system: System, *, workdir: Path, consul: consul_env.FreshConsul) -> None:
    """What a system needs before its clock starts: the file_sd reference's input file."""
    if system.kind == "prometheus-file":
        targets = workdir / "file-sd" / "targets.json"
        targets.parent.mkdir(parents=True, exist_ok=True)
        write_file_sd(server=consul.address, output=targets, log=workdir / "file-sd.log")


def start(system: System, *, workdir: Path, consul: consul_env.FreshConsul) -> Running:
    if system.kind == "prometheus":
        return RunningPrometheus(
            workdir=workdir, sd={"consul_sd_configs": [{"server": consul.address}]}
        )
    if system.kind == "prometheus-file":
        targets = workdir / "file-sd" / "targets.json"
        return RunningPrometheus(
            workdir=workdir, sd={"file_sd_configs": [{"files": [str(targets)]}]}
        )
    return RunningConsulSD(workdir=workdir, server=consul.address, args=system.args)


def wait_stopped(pid: int, *, timeout: float = 30.0) -> None:
    """Until ``pid`` is gone or a zombie (its owner reaps it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return
        if state == "Z":
            return
        time.sleep(0.1)
