"""SIGHUP makes ``consul-sd discover`` read its spec and token files again without losing targets.

Real processes against the simulator on 127.0.0.1 (one test calls the reload's error guard
directly: no spec file is known to make it raise anything but a usage error). The no-loss rule is
the operator's for a Secret rotation: the restarted discovery is seeded with the targets the
outputs hold, never an outage's empty snapshot, so a service it cannot read yet keeps them, and
the output file never shrinks because of the reload. A watcher reads the file every few
milliseconds for the whole test to catch a shrink however short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from consul_sd.cli.discover import Setup, _reconfigure
from consul_simulator import ConsulSimulator
from tests.unit.test_cli import CLI, ENV
from tests.unit.test_cli_listen import get, served_groups


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False, acl_token="token-one") as simulator:
        simulator.generate(services=20, instances=2, nodes=4)
        yield simulator


class Watch:
    """Every target count the output file showed, read as often as the loop allows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: list[int] = []

    async def run(self) -> None:
        while True:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                self.counts.append(len(json.loads(self.path.read_text())))
            await asyncio.sleep(0.005)

    async def until(self, count: int, *, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not self.counts or self.counts[-1] != count:
                await asyncio.sleep(0.02)

    async def until_not(self, count: int, *, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not self.counts or self.counts[-1] == count:
                await asyncio.sleep(0.02)


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, "discover", *args, stderr=asyncio.subprocess.PIPE, env=ENV
    )


async def stop(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err.decode()
    return err.decode()


@dataclass
class Running:
    """A ``consul-sd discover --output`` process, the counts its file showed, and (once it
    stopped) its stderr."""

    process: asyncio.subprocess.Process
    watch: Watch
    err: str = ""


@contextlib.asynccontextmanager
async def discovering(*args: str, output: Path) -> AsyncIterator[Running]:
    """Run discover with ``args`` writing ``output``, watched from the start; stopped after."""
    running = Running(await start(*args, "--output", str(output)), Watch(output))
    watcher = asyncio.create_task(running.watch.run())
    try:
        yield running
    finally:
        watcher.cancel()
        running.err = await stop(running.process)


async def test_sighup_reads_the_token_file_again_and_never_shrinks_the_output(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    token, output = tmp_path / "token", tmp_path / "consul.json"
    token.write_text("token-one\n")
    async with discovering(*polling_with_token(sim, token), output=output) as run:
        await run.watch.until(40)
        # The token is rotated, and one service fails when the new run first reads it.
        sim.acl_token = "token-two"
        sim.faults.fail_services = {"svc-00001"}
        token.write_text("token-two\n")
        run.process.send_signal(signal.SIGHUP)
        sim.register({"Node": "late", "Address": "10.9.0.1", "Service": {"Service": "late"}})
        await run.watch.until(41)  # only the new token can have read it
        sim.faults.fail_services = set()
    assert min(run.watch.counts) == 40, run.watch.counts
    assert "SIGHUP: configuration read again; restarting discovery" in run.err
    assert "token-two" not in run.err
    assert "token-one" not in run.err


def polling_with_token(sim: ConsulSimulator, token: Path) -> tuple[str, ...]:
    return (
        "--server", sim.address, "--token-file", str(token), "--mode", "polling",
        "--refresh-interval", "1s",
    )  # fmt: skip


async def until_requests(sim: ConsulSimulator, kind: str, count: int) -> None:
    """Wait until the simulator has seen ``count`` requests of ``kind`` in all."""
    async with asyncio.timeout(30):
        while sim.counters.requests.get(kind, 0) < count:
            await asyncio.sleep(0.02)


async def test_sighups_during_an_outage_never_seed_the_next_run_with_nothing(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    token, output = tmp_path / "token", tmp_path / "consul.json"
    token.write_text("token-one\n")
    async with discovering(*polling_with_token(sim, token), output=output) as run:
        await run.watch.until(40)
        sim.faults.error_rate = 1.0  # Consul answers 500 to everything
        for _ in range(2):
            # Each restarted run fails its datacenter lookup (3 attempts) and publishes an empty
            # snapshot before it tries again: a 4th request means that snapshot was published.
            looked_up = sim.counters.requests.get("agent_self", 0)
            run.process.send_signal(signal.SIGHUP)
            await until_requests(sim, "agent_self", looked_up + 4)
        sim.faults.fail_services = {"svc-00001"}  # the one service the recovery cannot read
        sim.register({"Node": "late", "Address": "10.9.0.1", "Service": {"Service": "late"}})
        sim.faults.error_rate = 0.0
        await run.watch.until_not(40)  # the recovered run's first write
    assert min(run.watch.counts) == 40, run.watch.counts
    assert run.watch.counts[-1] == 41


async def test_sighup_reads_the_spec_file_again(sim: ConsulSimulator, tmp_path: Path) -> None:
    spec, output, token = tmp_path / "spec.yaml", tmp_path / "consul.json", tmp_path / "token"
    token.write_text("token-one")
    spec.write_text("selector: {services: [svc-00001]}\nmode: polling\nrefreshInterval: 1s\n")
    async with discovering(*spec_with_token(sim, spec, token), output=output) as run:
        await run.watch.until(2)
        spec.write_text(
            "selector: {services: [svc-00001, svc-00002]}\nmode: polling\nrefreshInterval: 1s\n"
        )
        run.process.send_signal(signal.SIGHUP)
        await run.watch.until(4)


def spec_with_token(sim: ConsulSimulator, spec: Path, token: Path) -> tuple[str, ...]:
    return ("--server", sim.address, "--token-file", str(token), "--spec", str(spec))


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ("mode: sometimes\n", "SIGHUP: spec.mode: must be one of"),
        ("selector: oops\n", "spec.selector must be a mapping (key: value), not str"),
    ],
)
async def test_a_broken_spec_on_sighup_is_one_error_and_the_run_goes_on(
    sim: ConsulSimulator, tmp_path: Path, broken: str, problem: str
) -> None:
    spec, output, token = tmp_path / "spec.yaml", tmp_path / "consul.json", tmp_path / "token"
    token.write_text("token-one")
    spec.write_text("mode: polling\nrefreshInterval: 1s\n")
    async with discovering(*spec_with_token(sim, spec, token), output=output) as run:
        await run.watch.until(40)
        spec.write_text(broken)
        run.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(1)
        sim.register({"Node": "late", "Address": "10.9.0.1", "Service": {"Service": "late"}})
        await run.watch.until(41)  # the previous configuration still runs
    errors = [line for line in run.err.splitlines() if "ERROR" in line]
    assert len(errors) == 1, run.err
    assert problem in errors[0]
    assert "the previous configuration keeps running" in errors[0]
    assert "Traceback" not in run.err


def test_a_reload_that_fails_unexpectedly_is_one_error_and_keeps_the_configuration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def reconfigure() -> Setup:
        raise TypeError("'int' object is not iterable")

    with caplog.at_level(logging.INFO, logger="consul_sd"):
        assert _reconfigure(reconfigure) is None
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert errors == [
        "SIGHUP: unexpected TypeError: 'int' object is not iterable; "
        "the previous configuration keeps running"
    ]


async def test_sighup_sets_the_sync_interval_and_the_services_of_the_new_configuration(
    sim: ConsulSimulator, tmp_path: Path, unused_tcp_port: int
) -> None:
    spec, token = tmp_path / "spec.yaml", tmp_path / "token"
    token.write_text("token-one")
    spec.write_text("selector: {services: [svc-00001]}\nmode: polling\nrefreshInterval: 1s\n")
    process = await start(
        *spec_with_token(sim, spec, token), "--listen", f"127.0.0.1:{unused_tcp_port}"
    )
    try:
        await served_groups(unused_tcp_port, 2)  # its two instances
        assert sync_interval(await get(unused_tcp_port, "/metrics")) == 1
        spec.write_text(
            "selector: {services: [nothing-here]}\nmode: polling\nrefreshInterval: 7s\n"
        )
        process.send_signal(signal.SIGHUP)
        await served_groups(unused_tcp_port, 0)  # the new configuration ran and published
        assert sync_interval(await get(unused_tcp_port, "/metrics")) == 7
    finally:
        err = await stop(process)
    # The empty result is explained with the services the new configuration asked for.
    assert "no targets: Consul has no instance of nothing-here" in err


def sync_interval(answer: tuple[int, str, bytes]) -> float:
    status, _, body = answer
    assert status == 200
    prefix = b"consul_sd_sync_interval_seconds{"
    (line,) = [line for line in body.splitlines() if line.startswith(prefix)]
    return float(line.rsplit(b" ", 1)[1])
