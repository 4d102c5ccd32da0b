"""``consul-sd discover --listen``: the CLI as a process serving HTTP SD, Consul played by the
in-process simulator, everything on 127.0.0.1 and fetched with real GETs.

Waits are real (a process and sockets), each bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consul_simulator import ConsulSimulator
from tests.unit.test_cli import CLI, ENV, run


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(services=30, instances=2, nodes=4)
        yield simulator


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, "discover", *args, stderr=asyncio.subprocess.PIPE, env=ENV
    )


async def stop(process: asyncio.subprocess.Process) -> str:
    """SIGTERM; the process must exit 0 within 15 s. Returns its log."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err.decode()
    return err.decode()


async def get(port: int, path: str = "/targets") -> tuple[int, str, bytes]:
    """One GET, retried only while the process has not started listening yet."""
    async with asyncio.timeout(30):
        while True:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}{path}") as response,
                ):
                    return response.status, response.content_type, await response.read()
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)


async def served_groups(port: int, count: int) -> list[dict[str, Any]]:
    """Poll ``/targets`` until it serves ``count`` groups."""
    async with asyncio.timeout(30):
        while True:
            status, _, body = await get(port)
            if status == 200 and len(groups := json.loads(body)) == count:
                return list(groups)
            await asyncio.sleep(0.05)


async def test_listen_answers_503_until_the_first_complete_snapshot_then_the_targets(
    sim: ConsulSimulator, unused_tcp_port: int
) -> None:
    sim.faults.fail_services = {"svc-00003"}  # one service never answers: never complete
    process = await start(
        "--server", sim.address, "--mode", "polling", "--refresh-interval", "1s",
        "--listen", f"127.0.0.1:{unused_tcp_port}",
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            # A second cycle began: the first one, without svc-00003, was published.
            while sim.counters.requests.get("catalog_services", 0) < 2:
                await asyncio.sleep(0.05)
        status, content_type, body = await get(unused_tcp_port)
        assert (status, content_type) == (503, "text/plain")
        assert body == b"consul-sd: no complete discovery yet (first sync pending)\n"
        sim.faults.fail_services = set()
        groups = await served_groups(unused_tcp_port, 60)
        assert {g["labels"]["__meta_consul_dc"] for g in groups} == {"dc1"}
        assert (await get(unused_tcp_port, "/healthz"))[0] == 200
        status, _, metrics = await get(unused_tcp_port, "/metrics")
        assert status == 200
        assert b"python_info" in metrics
        # What users alert on, for the CLI's one discovery as for each CR of the operator.
        synced = [
            line
            for line in metrics.splitlines()
            if line.startswith(b"consul_sd_last_success_timestamp_seconds{")
        ]
        assert len(synced) == 1
        assert b'name="discover"' in synced[0]
        assert float(synced[0].rsplit(b" ", 1)[1]) > 0
    finally:
        log = await stop(process)
    assert "serving cli HTTP SD on 127.0.0.1" in log


async def test_listen_with_output_serves_what_the_file_holds_and_follows_changes(
    sim: ConsulSimulator, unused_tcp_port: int, tmp_path: Path
) -> None:
    output = tmp_path / "consul.json"
    process = await start(
        "--server", sim.address, "--mode", "blocking", "--refresh-interval", "1s",
        "--output", str(output), "--listen", f"127.0.0.1:{unused_tcp_port}",
    )  # fmt: skip
    try:
        await served_groups(unused_tcp_port, 60)
        assert (await get(unused_tcp_port))[2] == output.read_bytes()
        sim.register(
            {"Node": "late", "Address": "10.9.0.1", "Service": {"Service": "late", "Port": 1}}
        )
        groups = await served_groups(unused_tcp_port, 61)
        assert "late" in {g["labels"]["__meta_consul_service"] for g in groups}
    finally:
        await stop(process)


async def test_listen_with_once_is_one_usage_line(sim: ConsulSimulator) -> None:
    code, out, err = await run(
        "discover", "--server", sim.address, "--once", "--listen", "127.0.0.1:0"
    )
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "consul-sd: error: --listen serves until stopped: it does not go with --once",
        "usage: consul-sd discover [OPTIONS] (see consul-sd discover --help)",
    ]


async def test_a_port_in_use_is_one_usage_line(sim: ConsulSimulator) -> None:
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        code, _, err = await run(
            "discover", "--server", sim.address, "--listen", f"127.0.0.1:{port}"
        )
    finally:
        taken.close()
        await taken.wait_closed()
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("consul-sd: error:")]
    assert errors == [f"consul-sd: error: --listen 127.0.0.1:{port}: Address already in use"]


@pytest.mark.parametrize("value", ["9100", "host:port", "127.0.0.1:70000"])
async def test_a_listen_address_that_is_not_host_port_is_refused(value: str) -> None:
    code, _, err = await run("discover", "--server", "127.0.0.1:1", "--listen", value)
    assert code == 2
    assert "is not HOST:PORT" in err
