"""Profile ``consul-sd discover`` in process against the benchmark's real Consul: CPU or memory.

Runs the discover engine (the same calls as ``consul-sd discover --output``: spec from flags,
``run_discovery`` publishing to a ``FileSDWriter``) for ``--seconds`` against a fresh dev agent
loaded with N services x 3 instances, and reports where the cost goes:

- ``--what cpu``: a pyinstrument profile (async mode) of the whole run, text, with the time of
  every publication (the first one is the cold discovery);
- ``--what memory``: RSS after the imports, at the first complete publication and at the end;
  tracemalloc's live Python memory by allocation site at the end, and the object counts by type,
  so the steady RSS can be split into interpreter + libraries, live data, and what the allocator
  keeps.

    python -m benchmarks.profile_discover [--services 7000] [--mode polling] \\
        [--max-concurrent 100] [--seconds 70] [--what cpu|memory]

Writes benchmarks/results/<date>-profile-<what>-<mode>-<N>.txt and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import datetime
import gc
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from benchmarks import consul_env
from benchmarks.procfs import rss_bytes

RESULTS = Path(__file__).resolve().parent / "results"
Mode = Literal["Polling", "Blocking", "Auto"]
_MODES: dict[str, Mode] = {"polling": "Polling", "blocking": "Blocking", "auto": "Auto"}
MIB = 1024 * 1024


def _rss() -> float:
    return rss_bytes(_pid()) / MIB


def _pid() -> int:
    import os  # noqa: PLC0415

    return os.getpid()


async def _discover(
    *,
    server: str,
    output: Path,
    mode: Mode,
    max_concurrent: int,
    seconds: float,
    notes: list[str],
) -> dict[str, Any]:
    # Imported here so that their RSS is part of "after the imports".
    from consul_sd.cli import discover  # noqa: PLC0415, F401 - what the command loads
    from consul_sd.consul.client import ConsulClient  # noqa: PLC0415
    from consul_sd.consul.endpoint import ConsulEndpoint  # noqa: PLC0415
    from consul_sd.discovery.query import DiscoveryQuery  # noqa: PLC0415
    from consul_sd.discovery.run import run_discovery  # noqa: PLC0415
    from consul_sd.discovery.snapshots import Snapshot  # noqa: PLC0415
    from consul_sd.outputs.filesd import FileSDWriter  # noqa: PLC0415

    # What `consul-sd discover --server S --mode M --max-concurrent C` resolves to (defaults
    # otherwise: refreshInterval 30s, watchTimeout 2m), built directly to profile the engine only.
    query = DiscoveryQuery(mode=mode, max_concurrent=max_concurrent)
    endpoint = ConsulEndpoint(server=server)
    writer = FileSDWriter(output)
    started = time.monotonic()
    marks: dict[str, Any] = {"rss_imports_mib": _rss()}

    async def publish(snapshot: Snapshot) -> None:
        await writer.publish(snapshot)
        at = time.monotonic() - started
        notes.append(
            f"{at:7.2f}s publish: complete={snapshot.complete} targets={snapshot.targets} "
            f"requests={sum(snapshot.requests.values())} duration={snapshot.duration:.2f}s "
            f"rss={_rss():.0f}MiB"
        )
        if snapshot.complete and "rss_first_mib" not in marks:
            marks["rss_first_mib"] = _rss()
            marks["first_s"] = at
            if tracemalloc.is_tracing():
                marks["first_traced_mib"] = tracemalloc.get_traced_memory()[0] / MIB
                marks["first_top"] = tracemalloc.take_snapshot().statistics("lineno")[:12]

    async with ConsulClient(endpoint=endpoint, max_connections=query.max_concurrent + 1) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        await asyncio.sleep(seconds)
        marks["rss_end_mib"] = _rss()
        marks["live"] = _live_objects()
        marks["rss_collected_mib"] = _rss()
        marks["rss_trimmed_mib"] = _trimmed_rss()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return marks


def _trimmed_rss() -> float:
    """RSS after glibc's malloc_trim(0): what the C allocator held but did not need."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        return float("nan")
    return _rss()


def _live_objects() -> list[tuple[str, int]]:
    gc.collect()
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    return counts.most_common(15)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_discover", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--services", type=int, default=7000)
    parser.add_argument("--mode", default="polling", choices=["polling", "blocking", "auto"])
    parser.add_argument("--max-concurrent", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=70.0)
    parser.add_argument("--what", default="cpu", choices=["cpu", "memory"])
    args = parser.parse_args(argv)
    flags = ["--mode", args.mode, "--max-concurrent", str(args.max_concurrent)]
    lines = [
        f"profile ({args.what}) of consul-sd discover {' '.join(flags)}: {args.services} services"
        f" x 3 instances on a real Consul dev agent, {args.seconds:.0f}s",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="consul-sd-profile-") as tmp:
        root = Path(tmp)
        snapshot, _ = consul_env.fleet_snapshot(services=args.services, workdir=root / "load")
        with consul_env.FreshConsul(
            workdir=root / "consul",
            limit=consul_env.DEFAULT_LIMIT,
            snapshot=snapshot,
            services=args.services,
        ) as consul:
            notes: list[str] = []
            run = _discover(
                server=consul.address,
                output=root / "targets.json",
                mode=_MODES[args.mode],
                max_concurrent=args.max_concurrent,
                seconds=args.seconds,
                notes=notes,
            )
            if args.what == "cpu":
                from pyinstrument import Profiler  # noqa: PLC0415

                profiler = Profiler(interval=0.001, async_mode="enabled")
                profiler.start()
                marks = asyncio.run(run)
                profiler.stop()
                lines += [*notes, "", profiler.output_text(unicode=False, color=False)]
            else:
                tracemalloc.start(1)
                marks = asyncio.run(run)
                current, peak = tracemalloc.get_traced_memory()
                top = tracemalloc.take_snapshot().statistics("lineno")[:25]
                tracemalloc.stop()
                lines += [
                    *notes,
                    "",
                    f"RSS after imports {marks['rss_imports_mib']:.0f} MiB, at the first complete "
                    f"set {marks.get('rss_first_mib', 0):.0f} MiB, at the end "
                    f"{marks['rss_end_mib']:.0f} MiB (tracemalloc itself adds to these); after "
                    f"gc.collect() {marks['rss_collected_mib']:.0f} MiB, after malloc_trim(0) "
                    f"{marks['rss_trimmed_mib']:.0f} MiB",
                    f"tracemalloc: live Python allocations at the first complete publication "
                    f"{marks.get('first_traced_mib', 0):.1f} MiB; top sites then:",
                    *(f"  {stat}" for stat in marks.get("first_top", [])),
                    f"tracemalloc: live Python allocations at the end {current / MIB:.1f} MiB, "
                    f"peak {peak / MIB:.1f} MiB",
                    "",
                    "live objects by type (after gc.collect()):",
                    *(f"  {name:24} {count:>9}" for name, count in marks["live"]),
                    "",
                    "top live allocation sites at the end:",
                    *(f"  {stat}" for stat in top),
                ]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp}-profile-{args.what}-{args.mode}-{args.services}.txt"
    out.write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
