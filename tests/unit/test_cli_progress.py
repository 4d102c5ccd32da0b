"""``consul-sd discover`` is never silent while it works: progress for --once, heartbeats after.

Real processes against the simulator slowed down by its latency injection, everything on
127.0.0.1: ``--once`` on a terminal (a pty) or with ``--progress always`` prints
``fetched/total`` lines with rate and ETA, then the summary; a continuous run logs a heartbeat
per publication, or per ``--heartbeat-interval`` even when nothing is published.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
from collections.abc import AsyncIterator

import pytest

from consul_sd.cli.progress import changed_services, progress_line
from consul_sd.targets import Target
from consul_simulator import ConsulSimulator
from tests.unit.test_cli import CLI, ENV, run

PROGRESS = re.compile(r"^consul-sd: (\d+)/100 services fetched \((\d+)/s(, ETA \d+s)?\)$")


@pytest.fixture
async def slow_sim() -> AsyncIterator[ConsulSimulator]:
    """100 services answering after 100 ms each: with 5 in flight, about 2 s of fetching."""
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(services=100, instances=2, nodes=4)
        simulator.faults.latency = 0.1
        yield simulator


def slow_once(sim: ConsulSimulator) -> list[str]:
    # 5 in flight: about 2 s of fetching, long enough for several progress lines.
    return [
        "discover",
        "--server",
        sim.address,
        "--once",
        "--mode",
        "polling",
        "--max-concurrent",
        "5",
    ]


async def test_once_prints_progress_with_rate_and_eta_then_a_summary(
    slow_sim: ConsulSimulator,
) -> None:
    code, _, err = await run(*slow_once(slow_sim), "--progress", "always")
    assert code == 0, err
    lines = err.splitlines()
    progress = [m for m in map(PROGRESS.match, lines) if m]
    assert len(progress) >= 1, err
    fetched = [int(m.group(1)) for m in progress]
    assert fetched == sorted(fetched)
    assert any(m.group(3) for m in progress), err  # an ETA while services remain
    assert "discovered 200 targets in 100 services in" in lines[-1]
    assert "Consul requests" in lines[-1]


async def test_once_is_quiet_about_progress_when_stderr_is_not_a_terminal(
    slow_sim: ConsulSimulator,
) -> None:
    code, _, err = await run(*slow_once(slow_sim))
    assert code == 0, err
    assert "services fetched" not in err


async def test_once_on_a_terminal_rewrites_one_progress_line(slow_sim: ConsulSimulator) -> None:
    parent, child = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            *slow_once(slow_sim),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=child,
            env=ENV,
        )
        os.close(child)
        await asyncio.wait_for(process.wait(), 60)
        shown = await asyncio.to_thread(_read_all, parent)
    finally:
        os.close(parent)
    assert process.returncode == 0, shown
    assert re.search(r"\rconsul-sd: \d+/100 services fetched \(\d+/s", shown), shown
    assert "discovered 200 targets in 100 services" in shown


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the pty's other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


async def test_a_continuous_run_logs_a_heartbeat_per_publication_and_when_quiet() -> None:
    async with ConsulSimulator(jitter=False) as sim:
        sim.generate(services=5, instances=2, nodes=2)
        process = await asyncio.create_subprocess_exec(
            *CLI,
            "discover",
            "--server",
            sim.address,
            "--mode",
            "blocking",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "1s",
            stderr=asyncio.subprocess.PIPE,
            env=ENV,
        )
        try:
            await asyncio.sleep(4.5)  # a quiet fleet: Blocking publishes once, then waits
        finally:
            process.send_signal(signal.SIGTERM)
            _, raw = await asyncio.wait_for(process.communicate(), 15)
    beats = [line for line in raw.decode().splitlines() if "heartbeat:" in line]
    assert len(beats) >= 2, raw.decode()
    first = next(i for i, line in enumerate(beats) if "targets in" in line)
    assert "10 targets in 5 services, 5 changed, 1 publications" in beats[first]
    assert beats[first + 1 :], raw.decode()  # and more while nothing was published
    assert re.search(r"0 changed, 0 publications, \d+ Consul requests \(Blocking\)", beats[-1])


async def test_by_default_each_polling_cycle_logs_one_heartbeat() -> None:
    async with ConsulSimulator(jitter=False) as sim:
        sim.generate(services=3, instances=1, nodes=1)
        process = await asyncio.create_subprocess_exec(
            *CLI,
            "discover",
            "--server",
            sim.address,
            "--mode",
            "polling",
            "--refresh-interval",
            "1s",
            "--listen",
            "127.0.0.1:0",
            stderr=asyncio.subprocess.PIPE,
            env=ENV,
        )
        try:
            await asyncio.sleep(2.5)
        finally:
            process.send_signal(signal.SIGTERM)
            _, raw = await asyncio.wait_for(process.communicate(), 15)
    beats = [line for line in raw.decode().splitlines() if "heartbeat:" in line]
    assert len(beats) >= 2, raw.decode()
    assert all(" INFO " in line and "3 targets in 3 services" in line for line in beats)


def test_the_progress_line_says_fetched_of_total_rate_and_eta() -> None:
    assert progress_line(fetched=50, total=200, elapsed=10) == (
        "50/200 services fetched (5/s, ETA 30s)"
    )
    assert progress_line(fetched=10, total=5000, elapsed=1) == (
        "10/5000 services fetched (10/s, ETA 8m19s)"
    )
    assert progress_line(fetched=0, total=None, elapsed=1) == "listing services... 0 fetched (0/s)"
    assert progress_line(fetched=7, total=5, elapsed=1) == "5/5 services fetched (7/s)"


def test_changes_count_the_services_whose_targets_differ() -> None:
    a = (Target.of("10.0.0.1:80", {}),)
    b = (Target.of("10.0.0.2:80", {}),)
    assert changed_services(None, {"x": a, "y": b}) == 2
    assert changed_services({"x": a, "y": b}, {"x": a, "y": a, "z": b}) == 2
    assert changed_services({"x": a}, {}) == 1
