"""``consul-sd`` as users run it: a real process against the simulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consul_simulator import ConsulSimulator

CLI = [sys.executable, "-m", "consul_sd.cli"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "operator")}


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False, acl_token="s3cr3t-token") as simulator:
        simulator.generate(services=30, instances=2, nodes=4)
        yield simulator


async def run(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_discover_once_prints_file_sd_json_and_exits_zero(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t-token\n")
    code, out, err = await run(
        "discover",
        "--server",
        sim.address,
        "--token-file",
        str(token),
        "--once",
        "--mode",
        "polling",
    )
    assert code == 0, err
    groups = json.loads(out)
    assert len(groups) == 60
    assert {g["labels"]["__meta_consul_dc"] for g in groups} == {"dc1"}
    assert "s3cr3t-token" not in err


async def test_the_token_never_reaches_the_logs_even_on_errors(sim: ConsulSimulator) -> None:
    code, _, err = await run(
        "--log-level",
        "debug",
        "discover",
        "--server",
        sim.address,
        "--token",
        "wrong-token",
        "--once",
    )
    assert code == 1
    assert "ACL not found" in err
    assert "wrong-token" not in err


async def test_discover_once_fails_with_one_clear_line_when_consul_is_down(
    unused_tcp_port: int,
) -> None:
    code, out, err = await run("discover", "--server", f"127.0.0.1:{unused_tcp_port}", "--once")
    assert code == 1
    assert out == ""
    errors = [line for line in err.splitlines() if line.startswith("consul-sd: error:")]
    assert len(errors) == 1
    assert "cannot reach Consul at http://127.0.0.1:" in errors[0]


async def test_an_invalid_flag_value_names_the_field(sim: ConsulSimulator) -> None:
    code, _, err = await run("discover", "--server", sim.address, "--once", "--max-concurrent", "0")
    assert code == 2
    assert "spec.maxConcurrent: must be >= 1" in err


async def test_a_spec_file_is_read_and_flags_override_it(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    spec = tmp_path / "cr.yaml"
    spec.write_text(
        "apiVersion: consul-sd.io/v1alpha1\nkind: ConsulDiscovery\nmetadata: {name: x}\n"
        "spec:\n  consul: {server: 127.0.0.1:1}\n  selector: {services: [svc-00001, svc-00002]}\n"
        "  tagSeparator: '|'\n  output: {configMap: {name: x}}\n"
    )
    code, out, err = await run(
        "discover",
        "--spec",
        str(spec),
        "--server",
        sim.address,
        "--token",
        "s3cr3t-token",
        "--once",
    )
    assert code == 0, err
    groups = json.loads(out)
    assert {g["labels"]["__meta_consul_service"] for g in groups} == {"svc-00001", "svc-00002"}
    assert all(g["labels"]["__meta_consul_tags"].startswith("|") for g in groups)


async def test_discover_keeps_the_output_file_current_until_sigterm(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    output = tmp_path / "consul.json"
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "discover",
        "--server",
        sim.address,
        "--token",
        "s3cr3t-token",
        "--mode",
        "blocking",
        "--refresh-interval",
        "1s",
        "--output",
        str(output),
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    try:
        async with asyncio.timeout(30):
            while not output.exists():
                await asyncio.sleep(0.05)
            assert len(json.loads(output.read_text())) == 60
            sim.register(
                {"Node": "late", "Address": "10.9.0.1", "Service": {"Service": "late", "Port": 1}}
            )
            while len(json.loads(output.read_text())) != 61:
                await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, err.decode()
    assert [p.name for p in tmp_path.iterdir()] == ["consul.json"]  # no temporary file left


async def test_version_and_help_answer_without_a_server() -> None:
    code, out, _ = await run("--version")
    assert code == 0
    assert out.startswith("consul-sd ")
    for command in ("discover", "operator"):
        code, out, _ = await run(command, "--help")
        assert code == 0
        assert "usage: consul-sd " + command in out
    # The simulator is its own command now (consul-simulator), not part of the product.
    code, _, err = await run("simulate", "--help")
    assert code == 2
    assert "invalid choice: 'simulate'" in err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xffs3cr3t-bytes", "not UTF-8 text (byte 0)"),
        (b"abc\ns3cr3t-bytes", "token has a character"),
    ],
)
async def test_an_unusable_token_file_is_one_usage_line_without_its_bytes(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    code, out, err = await run(
        "discover", "--server", "127.0.0.1:1", "--token-file", str(token_file), "--once"
    )
    assert code == 2
    assert out == ""
    line, usage = err.strip().splitlines()
    assert usage.startswith("usage: consul-sd discover ")
    assert line.startswith("consul-sd: error: --token-file: ") or line.startswith(
        f"consul-sd: error: --token-file {token_file}: "
    ), line
    assert problem in line
    assert "s3cr3t-bytes" not in err
