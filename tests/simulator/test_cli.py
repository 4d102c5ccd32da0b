"""The ``consul-simulator`` command: argument defaults and a real run, as the console script
installed by ``make venv`` and as ``python -m consul_simulator``."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from consul_simulator import cli

SIMULATOR_DIR = Path(cli.__file__).resolve().parents[1]
# The console script sits beside the interpreter of the venv that installed the distribution.
CONSOLE_SCRIPT = Path(sys.executable).with_name("consul-simulator")


def test_defaults_match_a_local_consul_agent() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.datacenter) == ("127.0.0.1", 8500, "dc1")
    assert args.max_conns_per_client is None
    assert args.no_jitter is False
    assert parser.parse_args(["--latency", "250ms"]).latency == 0.25
    assert parser.parse_args(["--latency", "1.5"]).latency == 1.5


@pytest.mark.parametrize(
    "command",
    [[str(CONSOLE_SCRIPT)], [sys.executable, "-m", "consul_simulator"]],
    ids=["consul-simulator", "python-m"],
)
async def test_the_command_serves_a_generated_fleet_until_sigterm(command: list[str]) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(SIMULATOR_DIR), os.environ.get("PYTHONPATH", "")]),
    )
    proc = await asyncio.create_subprocess_exec(
        *command,
        "--port=0",
        "--services=4",
        "--instances=2",
        "--nodes=3",
        "--max-conns-per-client=50",
        "--no-jitter",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout=30)).decode()
        match = re.fullmatch(
            r"consul simulator listening on (127\.0\.0\.1:\d+) \(4 services, 2 instances\)\n", line
        )
        assert match, line
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{match[1]}/v1/catalog/services") as resp,
        ):
            assert len(await resp.json()) == 4
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
