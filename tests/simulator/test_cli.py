"""The ``simulate`` command: argument defaults and a real run as ``python -m``."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from consul_sd.simulator import cli

OPERATOR_DIR = Path(cli.__file__).resolve().parents[2]


def test_defaults_match_a_local_consul_agent() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.datacenter) == ("127.0.0.1", 8500, "dc1")
    assert args.max_conns_per_client is None
    assert args.no_jitter is False
    assert parser.parse_args(["--latency", "250ms"]).latency == 0.25
    assert parser.parse_args(["--latency", "1.5"]).latency == 1.5


async def test_python_dash_m_serves_a_generated_fleet_until_sigterm() -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(OPERATOR_DIR), os.environ.get("PYTHONPATH", "")]),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consul_sd.simulator",
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
