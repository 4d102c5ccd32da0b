"""Benchmark: the field report, side by side with Prometheus, and the cost curve against N.

The field report: with 7000 services Prometheus's blocking consul_sd held ~7000 long connections
to Consul, used much memory, kept Consul busy and logged resets; a polling mode with 100
concurrent requests cut all of that at the price of freshness. This runs both, and every consul-sd
mode, against a real Consul dev agent (v1.16.3 from hack/bins) loaded with N services x 3
instances, one system at a time, each on a fresh agent restored from the same snapshot:

1. start the discoverer; wait until it delivers the whole target set (3N + 3: the fleet, the
   probe node's two instances and Consul's own service) -> time to the first complete set;
2. a steady window (``--window``; blocking systems at the ``--long-window-at`` sizes get
   ``--blocking-window``, long enough for a 2-minute long-poll to time out and re-arm inside it);
   two seconds in, the change probe registers one instance and deregisters two others at one
   instant -> add and delete latency until the output (file, or Prometheus's scrape pool) shows
   them, bounded by ``--probe-timeout``;
3. figures: ESTABLISHED connections from the discoverer's pid to Consul's port (peak over the
   run, median over the window), discoverer RSS (peak = VmHWM, steady = window median), CPU
   seconds to the first complete set and per minute of window, the same for the Consul agent,
   Consul requests per minute (Consul's telemetry: discovery GETs completed in the window; a
   long-poll counts when it returns), and WARN/ERROR lines by cause.

Every process started is stopped (SIGTERM, then SIGKILL) before the next scenario; every wait is
bounded. Results: benchmarks/results/<date>.json, <date>.md and <date>-*.png (see report.py).

    python -m benchmarks.field_report [--services 100,1000,3000,7000,20000] [--runs 1]
        [--anchor 7000 --anchor-runs 3] [--systems prometheus,blocking,...] [--default-limit-run]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.components import binary

from benchmarks import consul_env, report, systems
from benchmarks.procfs import Sampler, cpu_seconds, peak_rss_bytes, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MIB = 1024 * 1024
DEFAULT_SYSTEMS = (
    "prometheus",
    "blocking",
    "polling-100",
    "polling-200",
    "polling-500",
    "auto",
    "prometheus-file",
)


def _csv_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.field_report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--services", type=_csv_ints, default=[100, 1000, 3000, 7000, 20000])
    parser.add_argument("--runs", type=int, default=1, help="runs per size (default 1)")
    parser.add_argument("--anchor", type=int, default=7000, help="the field report's size")
    parser.add_argument("--anchor-runs", type=int, default=None, help="runs at --anchor")
    parser.add_argument("--systems", type=_csv, default=list(DEFAULT_SYSTEMS))
    parser.add_argument(
        "--window", type=float, default=30.0, help="steady window, seconds (default 30)"
    )
    parser.add_argument(
        "--blocking-window",
        type=float,
        default=160.0,
        help="steady window of blocking systems at --long-window-at sizes (default 160: a"
        " long-poll sent after the first 30s refresh returns 120-128s later, inside it)",
    )
    parser.add_argument("--long-window-at", type=_csv_ints, default=None, help="default: anchor")
    parser.add_argument(
        "--probe-at",
        type=float,
        default=35.0,
        help="blocking systems: seconds after start of the change probe (default 35: after the"
        " first 30s refresh, so long-polls are parked); pollers get it 2s after their first"
        " complete set",
    )
    parser.add_argument("--probe-timeout", type=float, default=130.0)
    parser.add_argument(
        "--no-probe",
        action="store_true",
        help="no change during the window: the cost of a quiet fleet",
    )
    parser.add_argument(
        "--flap",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --no-probe: every SECONDS of the window flip one fleet check (critical, then"
        " passing again, cycling through the services): health churn, the most common change",
    )
    parser.add_argument("--first-timeout", type=float, default=120.0)
    parser.add_argument(
        "--variants-from",
        type=int,
        default=None,
        help="run Polling 200 and 500 only at N >= this (default: the anchor)",
    )
    parser.add_argument("--limit", type=int, default=consul_env.DEFAULT_LIMIT)
    parser.add_argument(
        "--default-limit-run",
        action="store_true",
        help="also run Prometheus and Polling 100 at --anchor with Consul's default limit (200)",
    )
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--stamp", default=None, help="results file name (default: the date)")
    parser.add_argument("--keep-workdir", action="store_true")
    return parser


def systems_at(
    keys: Sequence[str], *, services: int, anchor: int, variants_from: int
) -> list[systems.System]:
    chosen = []
    for key in keys:
        system = systems.SYSTEMS[key]
        if key == "prometheus-file" and services != anchor:
            continue  # the reference row is for the side-by-side only
        if key in ("polling-200", "polling-500") and services < variants_from:
            continue  # they differ from maxConcurrent 100 only in the cold cycle's fan-out
        chosen.append(system)
    return chosen


def run_scenario(
    system: systems.System,
    *,
    services: int,
    snapshot: bytes,
    limit: int,
    window: float,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """One system on a fresh agent: start, first complete set, window + probe, stop."""
    blocking = system.blocking_at(services)
    result: dict[str, Any] = {
        "system": system.key,
        "label": system.label,
        "services": services,
        "limit": limit,
        "load_before": os.getloadavg()[0],
    }
    harness_before = resource.getrusage(resource.RUSAGE_SELF)
    with consul_env.FreshConsul(
        workdir=workdir / "consul", limit=limit, snapshot=snapshot, services=services
    ) as consul:
        expected = consul.expected_targets
        result["expected_targets"] = expected
        systems.prepare(system, workdir=workdir / system.key, consul=consul)
        consul_log_start = len(consul.log_lines())
        consul_rss_before = rss_bytes(consul.pid)
        consul_cpu0 = cpu_seconds(consul.pid)
        counters0 = consul.counters()
        t0 = time.monotonic()
        running = systems.start(system, workdir=workdir / system.key, consul=consul)
        sampler = Sampler(
            {"discoverer": running.pid, "consul": consul.pid},
            port=consul.port,
            interval=args.sample_interval,
            count_connections=frozenset({"discoverer"}),
        ).start()
        try:
            first = _wait_first_complete(running, expected=expected, t0=t0, args=args)
            result["first_complete_s"] = first
            window_start = time.monotonic()
            result["targets_at_window_start"] = running.count()
            cpu_d1, cpu_c1 = cpu_seconds(running.pid), cpu_seconds(consul.pid)
            counters1 = consul.counters()
            probe = _window(
                running,
                consul=consul,
                expected=expected if first is not None else None,
                start=window_start,
                # Long-polls must be parked (after the first refresh) for a change to wake them;
                # a poller is probed right after its first complete cycle (near its worst case).
                probe_at=window_start
                + 2.0
                + (max(0.0, t0 + args.probe_at - window_start) if blocking else 0.0),
                length=window,
                probe=system.talks_to_consul and not args.no_probe,
                timeout=args.probe_timeout,
                flap=args.flap if args.no_probe else None,
            )
            window_end = time.monotonic()
            cpu_d2, cpu_c2 = cpu_seconds(running.pid), cpu_seconds(consul.pid)
            counters2 = consul.counters()
            result.update(probe)
            result["targets_at_end"] = running.count()
            result["extra"] = running.extra()
            result["rss_peak_mib"] = peak_rss_bytes(running.pid) / MIB
            result["consul_rss_peak_mib"] = peak_rss_bytes(consul.pid) / MIB
            result["consul_rss_end_mib"] = rss_bytes(consul.pid) / MIB
            result["errors"] = running.errors()  # before stopping: not the shutdown's lines
        finally:
            sampler.stop()
            running.stop()
        minutes = (window_end - window_start) / 60
        startup = window_start - t0
        discoverer = sampler.series["discoverer"]
        consul_series = sampler.series["consul"]
        result.update(
            window_s=window_end - window_start,
            startup_s=startup,
            peak_connections=discoverer.peak_connections(),
            steady_connections=discoverer.median_connections(window_start, window_end),
            rss_steady_mib=discoverer.median_rss(window_start, window_end) / MIB,
            cpu_startup_s=cpu_d1,
            cpu_per_min=(cpu_d2 - cpu_d1) / minutes,
            consul_cpu_startup_s=cpu_c1 - consul_cpu0,
            consul_cpu_per_min=(cpu_c2 - cpu_c1) / minutes,
            consul_rss_before_mib=consul_rss_before / MIB,
            consul_rss_steady_mib=consul_series.median_rss(window_start, window_end) / MIB,
            consul_requests_startup=_completed(counters0, counters1),
            consul_requests_per_min=_per_minute(_completed(counters1, counters2), minutes),
            consul_requests_by_path={
                path: counters2.by_path.get(path, 0.0) - counters0.by_path.get(path, 0.0)
                for path in counters2.by_path
            }
            if counters0 is not None and counters2 is not None
            else None,
            consul_errors=systems.count_errors(
                consul.log_lines()[consul_log_start:], error_line=re.compile(r"\[(WARN|ERROR)\]")
            ),
            load_after=os.getloadavg()[0],
        )
    harness_after = resource.getrusage(resource.RUSAGE_SELF)
    result["harness_cpu_s"] = (harness_after.ru_utime + harness_after.ru_stime) - (
        harness_before.ru_utime + harness_before.ru_stime
    )
    return result


def _completed(
    before: consul_env.ConsulCounters | None, after: consul_env.ConsulCounters | None
) -> float | None:
    """Discovery requests Consul completed in between (a long-poll counts when it returns:
    Consul 1.16 exposes no count of arrivals, and its queries_blocking gauge misses HTTP
    long-polls, so windows of blocking systems must span their 2-minute period to be fair)."""
    if before is None or after is None:
        return None
    return after.discovery_requests - before.discovery_requests


def _per_minute(value: float | None, minutes: float) -> float | None:
    return None if value is None else value / minutes


def _wait_first_complete(
    running: systems.Running, *, expected: int, t0: float, args: argparse.Namespace
) -> float | None:
    deadline = t0 + args.first_timeout
    while time.monotonic() < deadline:
        if running.count() == expected:
            return time.monotonic() - t0
        time.sleep(0.25)
    return None


def _window(
    running: systems.Running,
    *,
    consul: consul_env.FreshConsul,
    expected: int | None,
    start: float,
    probe_at: float,
    length: float,
    probe: bool,
    timeout: float,
    flap: float | None = None,
) -> dict[str, Any]:
    """Sleep through the window; run the change probe at ``probe_at`` (when it can be read),
    and flip a check every ``flap`` seconds."""
    out: dict[str, Any] = {"add_latency_s": None, "del_latency_s": None, "probe": "skipped"}
    flips = 0
    next_flip = start + flap if flap else float("inf")
    probing = probe and expected is not None
    changed_at: float | None = None
    end = start + length
    while True:
        now = time.monotonic()
        if flap and now >= next_flip and now < end:
            flips += consul.flap(flips)
            next_flip += flap
            out["flips"] = flips
        if probing and changed_at is None and now >= probe_at:
            changed_at = consul.change()
            if changed_at is None:
                out["probe"] = "writes refused"
                probing = False
            else:
                out["probe"] = "timed out"
        if changed_at is not None and expected is not None:
            added, deleted = running.probe(expected)
            seen = time.monotonic() - changed_at
            if added and out["add_latency_s"] is None:
                out["add_latency_s"] = seen
            if deleted and out["del_latency_s"] is None:
                out["del_latency_s"] = seen
            if out["add_latency_s"] is not None and out["del_latency_s"] is not None:
                out["probe"] = "seen"
            probe_done = out["probe"] == "seen" or now >= changed_at + timeout
        else:
            probe_done = not probing
        if now >= end and probe_done:
            return out
        time.sleep(0.5)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "consul": _version("consul", "version"),
        "prometheus": _version("prometheus", "--version"),
        "git": _git(),
    }


def _version(component: str, flag: str) -> str:
    try:
        out = subprocess.run(
            [str(binary(component)), flag], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as error:
        return f"unknown ({error})"
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else ""


def _git() -> str:
    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "operator")
    return commit + (" + uncommitted changes in operator/" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    anchor_runs = args.anchor_runs if args.anchor_runs is not None else args.runs
    long_at = set(args.long_window_at if args.long_window_at is not None else [args.anchor])
    unknown = [key for key in args.systems if key not in systems.SYSTEMS]
    if unknown:
        print(f"unknown systems {unknown}; known: {', '.join(systems.SYSTEMS)}", file=sys.stderr)
        return 2
    stamp = args.stamp or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / f"{stamp}.json"
    data: dict[str, Any] = {
        "date": stamp,
        "command": "python -m benchmarks.field_report " + " ".join(argv or sys.argv[1:]),
        "args": {**vars(args), "anchor_runs": anchor_runs},
        "machine": machine(),
        "load_start": os.getloadavg(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loads": {},
        "scenarios": [],
    }
    began = time.monotonic()
    workroot = Path(tempfile.mkdtemp(prefix="consul-sd-bench-"))
    try:
        plan: list[tuple[int, int, int]] = [
            (n, anchor_runs if n == args.anchor else args.runs, args.limit) for n in args.services
        ]
        if args.default_limit_run:
            plan.append((args.anchor, 1, consul_env.CONSUL_DEFAULT_LIMIT))
        for services, runs, limit in plan:
            snapshot, took = consul_env.fleet_snapshot(
                services=services, workdir=workroot / f"load-{services}-{limit}"
            )
            data["loads"][str(services)] = {"seconds": took, "instances": services * 3 + 2}
            print(f"[{_clock(began)}] loaded {services} services in {took:.1f}s", flush=True)
            chosen = systems_at(
                args.systems,
                services=services,
                anchor=args.anchor,
                variants_from=args.variants_from if args.variants_from is not None else args.anchor,
            )
            if limit != args.limit:
                chosen = [s for s in chosen if s.key in ("prometheus", "polling-100")]
            for run in range(runs):
                shift = run % len(chosen)  # rotate the order, so drift hits every system alike
                for system in chosen[shift:] + chosen[:shift]:
                    long = services in long_at and system.blocking_at(services)
                    workdir = workroot / f"{services}-{limit}-{run}-{system.key}"
                    result = run_scenario(
                        system,
                        services=services,
                        snapshot=snapshot,
                        limit=limit,
                        window=args.blocking_window if long else args.window,
                        args=args,
                        workdir=workdir,
                    )
                    result["run"] = run
                    data["scenarios"].append(result)
                    print(f"[{_clock(began)}] {_one_line(result)}", flush=True)
                    out_json.write_text(json.dumps(data, indent=1) + "\n")
                    if not args.keep_workdir:
                        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        data["load_end"] = os.getloadavg()
        data["minutes"] = (time.monotonic() - began) / 60
        out_json.write_text(json.dumps(data, indent=1) + "\n")
        if not args.keep_workdir:
            shutil.rmtree(workroot, ignore_errors=True)
    markdown = report.write(out_json)
    print(f"wrote {out_json} and {markdown}")
    return 0


def _clock(began: float) -> str:
    return f"{(time.monotonic() - began) / 60:5.1f} min"


def _one_line(r: dict[str, Any]) -> str:
    def fmt(value: Any, spec: str = ".1f") -> str:
        return "-" if value is None else format(value, spec)

    return (
        f"N={r['services']} limit={r['limit']} {r['system']}: first {fmt(r['first_complete_s'])}s"
        f" conns {r['peak_connections']}/{fmt(r['steady_connections'], '.0f')}"
        f" rss {fmt(r['rss_peak_mib'], '.0f')}MiB cpu {fmt(r['cpu_startup_s'])}s"
        f"+{fmt(r['cpu_per_min'], '.2f')}/min consul {fmt(r['consul_cpu_per_min'], '.2f')}/min"
        f" req {fmt(r['consul_requests_per_min'], '.0f')}/min add {fmt(r['add_latency_s'])}s"
        f" del {fmt(r['del_latency_s'])}s errors {r['errors'].get('lines', 0)}"
        f" load {r['load_before']:.2f}"
    )


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


if __name__ == "__main__":
    sys.exit(main())
