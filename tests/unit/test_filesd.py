"""The file_sd writer of ``consul-sd discover --output``: never partial, only on change, atomic.

Snapshots are built by hand (the writer's seam is ``publish(snapshot)``); the file on disk is what
Prometheus would read.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from consul_sd.consul.errors import ConsulServerError, ConsulUnreachable
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.outputs.filesd import FileSDWriter
from consul_sd.targets import Target, TargetGroup

OUTAGE = ConsulUnreachable("/v1/catalog/services: connection refused")


def group(service: str, *ports: int) -> TargetGroup:
    return tuple(
        Target.of(f"10.0.0.1:{port}", {"__meta_consul_service": service}) for port in ports
    )


def snapshot(
    groups: dict[str, TargetGroup],
    *,
    complete: bool = True,
    matched: int | None = None,
    failed: dict[str, ConsulServerError] | None = None,
    error: ConsulUnreachable | None = None,
) -> Snapshot:
    return Snapshot(
        groups=groups,
        mode="Polling",
        complete=complete,
        matched=len(groups) if matched is None else matched,
        failed=failed or {},
        error=error,
    )


def addresses(path: Path) -> list[str]:
    return [address for entry in json.loads(path.read_bytes()) for address in entry["targets"]]


async def test_nothing_is_written_before_the_first_complete_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "consul.json"
    writer = FileSDWriter(path)
    # One of two services answered and the other is still failing: no error for the whole run.
    await writer.publish(
        snapshot(
            {"web": group("web", 80)},
            complete=False,
            matched=2,
            failed={"db": ConsulServerError("/v1/health/service/db: 500")},
        )
    )
    # Consul is unreachable before anything was discovered.
    await writer.publish(snapshot({}, complete=False, matched=0, error=OUTAGE))
    assert not path.exists()
    await writer.publish(snapshot({"web": group("web", 80), "db": group("db", 5432)}))
    assert addresses(path) == ["10.0.0.1:5432", "10.0.0.1:80"]


async def test_an_outage_after_the_first_write_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "consul.json"
    writer = FileSDWriter(path)
    await writer.publish(snapshot({"web": group("web", 80), "db": group("db", 5432)}))
    written = path.read_bytes()
    # The catalog failed: what the worker shows for status is not the current set.
    await writer.publish(snapshot({"web": group("web", 80)}, complete=False, error=OUTAGE))
    await writer.publish(snapshot({}, complete=False, matched=0, error=OUTAGE))
    assert path.read_bytes() == written


async def test_a_failed_service_keeps_its_targets_while_the_others_update(tmp_path: Path) -> None:
    path = tmp_path / "consul.json"
    writer = FileSDWriter(path)
    await writer.publish(snapshot({"web": group("web", 80), "db": group("db", 5432)}))
    # db failed and carries its previous targets; web moved to a new port meanwhile.
    await writer.publish(
        snapshot(
            {"web": group("web", 81), "db": group("db", 5432)},
            complete=False,
            failed={"db": ConsulServerError("/v1/health/service/db: 500")},
        )
    )
    assert addresses(path) == ["10.0.0.1:5432", "10.0.0.1:81"]


async def test_unchanged_bytes_are_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "consul.json"
    writer = FileSDWriter(path)
    await writer.publish(snapshot({"web": group("web", 80)}))
    first = path.stat()
    # The same targets from a later cycle: Prometheus must not get an fsnotify event for them.
    await writer.publish(snapshot({"web": group("web", 80)}))
    again = path.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    await writer.publish(snapshot({"web": group("web", 81)}))
    assert path.stat().st_ino != first.st_ino


async def test_a_reader_never_sees_a_torn_or_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "consul.json"
    writer = FileSDWriter(path)
    # Files of 200-230 KiB, so each write takes several system calls a reader can fall between.
    padding = "x" * 1000
    sizes = range(200, 230)
    snapshots = [
        snapshot(
            {
                "svc": tuple(
                    Target.of(f"10.0.0.1:{port}", {"__meta_consul_service": "svc", "pad": padding})
                    for port in range(size)
                )
            }
        )
        for size in sizes
    ]
    await writer.publish(snapshots[0])
    seen: set[int] = set()
    problems: list[str] = []
    done = threading.Event()

    def read_until_done() -> None:
        # Bounded: the writer sets ``done`` after its last write; the cap guards a writer crash.
        for _ in range(100_000):
            if done.is_set():
                return
            data = path.read_bytes()
            try:
                targets = [t for entry in json.loads(data) for t in entry["targets"]]
            except ValueError:
                problems.append(f"{len(data)} bytes that do not parse")
                continue
            if targets != [f"10.0.0.1:{port}" for port in range(len(targets))]:
                problems.append(f"{len(targets)} targets that were never written together")
            seen.add(len(targets))

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for _ in range(4):
            for published in snapshots:
                await writer.publish(published)
    finally:
        done.set()
        reader.join(timeout=60)
    assert problems == []
    assert len(seen) > 1  # the reader really read while the file was being replaced
