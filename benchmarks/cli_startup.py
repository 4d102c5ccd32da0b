"""Benchmark: how long ``consul-sd`` takes to answer before doing any work.

Runs each of ``consul-sd --version``, ``consul-sd discover --help`` and ``consul-sd operator
--help`` as a fresh process ``--runs`` times (10 by default), one after the other, and prints
the median, min and max wall time in ms (process start to exit, output discarded). These
commands load only argparse (see ``consul_sd.cli``), so the figures are the interpreter's start
plus the console script's; a last row times the interpreter alone (``python -c pass``), the
floor none of them can go under. It prints, writes no file, and asserts nothing: a timing depends on
the machine and its load, so it is measured here and never checked by a test.

    python -m benchmarks.cli_startup [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS: list[list[str]] = [["--version"], ["discover", "--help"], ["operator", "--help"]]


def wall_ms(command: list[str]) -> float:
    """One run of ``command`` as a process, start to exit, in ms; a failure stops the benchmark."""
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=60)
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    # The console script beside this interpreter: what a user runs, entry-point shim included.
    script = Path(sys.executable).with_name("consul-sd")
    if not script.exists():
        print(f"no {script}: install the package (pip install -e .)", file=sys.stderr)
        return 1
    print(f"{'command':<28} {'median':>8} {'min':>8} {'max':>8}   ({args.runs} runs, ms)")
    rows = [(f"consul-sd {' '.join(command)}", [str(script), *command]) for command in COMMANDS]
    rows.append(("python -c pass (the floor)", [sys.executable, "-c", "pass"]))
    for label, command in rows:
        walls = [wall_ms(command) for _ in range(args.runs)]
        print(f"{label:<28} {statistics.median(walls):>8.0f} {min(walls):>8.0f} {max(walls):>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
