"""Benchmark: one complete ``consul-sd discover --once`` per mode against the simulator.

Starts ``consul-simulator`` with N services x K instances on 127.0.0.1 in its own process, then
runs the discover command once per system and repetition, side by side in one run, and reports
medians: wall time (process start to exit), CPU seconds (user+sys, from wait4), peak RSS, peak
open connections and requests the simulator saw. Writes benchmarks/results/<date>-discover-once
.json and .md.

    python -m benchmarks.discover_once [--services 7000] [--instances 3] [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
CLI = [sys.executable, "-m", "consul_sd.cli"]

SYSTEMS: list[tuple[str, list[str]]] = [
    ("Polling, maxConcurrent 100", ["--mode", "polling", "--max-concurrent", "100"]),
    ("Polling, maxConcurrent 200", ["--mode", "polling", "--max-concurrent", "200"]),
    ("Polling, maxConcurrent 500", ["--mode", "polling", "--max-concurrent", "500"]),
    ("Blocking, maxConcurrent 100", ["--mode", "blocking", "--max-concurrent", "100"]),
    ("Auto (defaults)", ["--mode", "auto"]),
]


def control(port: int, path: str, *, method: str = "GET") -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else {}


def start_simulator(*, services: int, instances: int, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("consul-simulator")),
            "--port",
            str(port),
            "--services",
            str(services),
            "--instances",
            str(instances),
            "--nodes",
            str(max(1, services // 20)),
            "--no-jitter",
        ],
        env=ENV,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            control(port, "/v1/status/leader")
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("simulator did not start")


def run_once(*, port: int, args: list[str]) -> dict[str, float]:
    control(port, "/_sim/counters/reset", method="POST")
    started = time.perf_counter()
    process = subprocess.Popen(
        [*CLI, "discover", "--server", f"127.0.0.1:{port}", "--once", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # wait4 gives the child's own CPU time and peak RSS; read stdout first so it never blocks.
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        assert process.stderr is not None
        raise RuntimeError(f"discover failed: {process.stderr.read().decode()[-2000:]}")
    counters = control(port, "/_sim/counters")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "peak_connections": counters["peak_connections"],
        "requests": sum(counters["requests"].values()),
        "targets": len(json.loads(output)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=7000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--port", type=int, default=18500)
    args = parser.parse_args(argv)
    simulator = start_simulator(services=args.services, instances=args.instances, port=args.port)
    rows = []
    try:
        samples: dict[str, list[dict[str, float]]] = {name: [] for name, _ in SYSTEMS}
        for _ in range(args.runs):  # interleaved, so drift hits every system alike
            for name, flags in SYSTEMS:
                samples[name].append(run_once(port=args.port, args=flags))
        for name, _ in SYSTEMS:
            runs = samples[name]
            rows.append(
                {"system": name} | {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            )
    finally:
        simulator.terminate()
        simulator.wait(30)
    write_report(args=args, rows=rows)
    return 0


def write_report(*, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"date": stamp, "machine": machine, "args": vars(args), "rows": rows}
    (RESULTS / f"{stamp}-discover-once.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"# consul-sd discover --once: {args.services} services x {args.instances} instances",
        "",
        f"{stamp}, {machine}; simulator in its own process on 127.0.0.1; medians of "
        f"{args.runs} interleaved runs. Command: `python -m benchmarks.discover_once "
        f"--services {args.services} --instances {args.instances} --runs {args.runs}`.",
        "",
        "| system | wall s | CPU s | peak RSS MiB | peak connections | requests | targets |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['system']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | "
            f"{row['peak_rss_mib']:.0f} | {row['peak_connections']:.0f} | "
            f"{row['requests']:.0f} | {row['targets']:.0f} |"
        )
    report = "\n".join(lines) + "\n"
    (RESULTS / f"{stamp}-discover-once.md").write_text(report)
    sys.stdout.write(report)


if __name__ == "__main__":
    sys.exit(main())
