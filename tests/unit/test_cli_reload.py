"""SIGHUP makes ``consul-sd discover`` read its spec and token files again without losing targets.

Real processes against the simulator on 127.0.0.1. The no-loss rule is the operator's for a
Secret rotation: the restarted discovery is seeded with the last targets, so a service it cannot
read yet keeps them, and the output file never shrinks because of the reload. A watcher reads the
file every few milliseconds for the whole test to catch a shrink however short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consul_simulator import ConsulSimulator
from tests.unit.test_cli import CLI, ENV


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


async def test_sighup_reads_the_token_file_again_and_never_shrinks_the_output(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    token, output = tmp_path / "token", tmp_path / "consul.json"
    token.write_text("token-one\n")
    process = await start(
        "--server", sim.address, "--token-file", str(token), "--mode", "polling",
        "--refresh-interval", "1s", "--output", str(output),
    )  # fmt: skip
    watch = Watch(output)
    watcher = asyncio.create_task(watch.run())
    try:
        await watch.until(40)
        # The token is rotated, and one service fails when the new run first reads it.
        sim.acl_token = "token-two"
        sim.faults.fail_services = {"svc-00001"}
        token.write_text("token-two\n")
        process.send_signal(signal.SIGHUP)
        sim.register({"Node": "late", "Address": "10.9.0.1", "Service": {"Service": "late"}})
        await watch.until(41)  # only the new token can have read it
        sim.faults.fail_services = set()
    finally:
        watcher.cancel()
        err = await stop(process)
    assert min(watch.counts) == 40, watch.counts
    assert "SIGHUP: configuration read again; restarting discovery" in err
    assert "token-two" not in err
    assert "token-one" not in err


async def test_sighup_reads_the_spec_file_again(sim: ConsulSimulator, tmp_path: Path) -> None:
    spec, output, token = tmp_path / "spec.yaml", tmp_path / "consul.json", tmp_path / "token"
    token.write_text("token-one")
    spec.write_text("selector: {services: [svc-00001]}\nmode: polling\nrefreshInterval: 1s\n")
    process = await start(
        "--server", sim.address, "--token-file", str(token), "--spec", str(spec),
        "--output", str(output),
    )  # fmt: skip
    watch = Watch(output)
    watcher = asyncio.create_task(watch.run())
    try:
        await watch.until(2)
        spec.write_text(
            "selector: {services: [svc-00001, svc-00002]}\nmode: polling\nrefreshInterval: 1s\n"
        )
        process.send_signal(signal.SIGHUP)
        await watch.until(4)
    finally:
        watcher.cancel()
        await stop(process)


async def test_a_broken_spec_on_sighup_is_one_error_and_the_run_goes_on(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    spec, output, token = tmp_path / "spec.yaml", tmp_path / "consul.json", tmp_path / "token"
    token.write_text("token-one")
    spec.write_text("mode: polling\nrefreshInterval: 1s\n")
    process = await start(
        "--server", sim.address, "--token-file", str(token), "--spec", str(spec),
        "--output", str(output),
    )  # fmt: skip
    watch = Watch(output)
    watcher = asyncio.create_task(watch.run())
    try:
        await watch.until(40)
        spec.write_text("mode: sometimes\n")
        process.send_signal(signal.SIGHUP)
        await asyncio.sleep(1)
        sim.register({"Node": "late", "Address": "10.9.0.1", "Service": {"Service": "late"}})
        await watch.until(41)  # the previous configuration still runs
    finally:
        watcher.cancel()
        err = await stop(process)
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1, err
    assert "SIGHUP: spec.mode: must be one of" in errors[0]
    assert "the previous configuration keeps running" in errors[0]
    assert "Traceback" not in err
