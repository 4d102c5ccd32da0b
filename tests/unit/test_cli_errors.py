"""Every failure a user of ``consul-sd`` can cause or meet is one line, as a real process shows it.

Each case runs the command (``python -m consul_sd.cli``) and asserts the exit code and that stderr
is exactly ``consul-sd: error: ...`` (plus, for usage errors, one line of usage pointing at
``--help``): no traceback, no usage block, no regular expression. Consul is the in-process
simulator or a plain HTTP server that is not Consul, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from consul_simulator import ConsulSimulator
from tests.unit.test_cli import CLI, ENV, run

TOKEN = "s3cr3t-token-value"


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(services=10, instances=2, nodes=2)
        yield simulator


def error_line(err: str) -> str:
    """The one line of stderr, which must be the error."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("consul-sd: error: "), err
    return lines[0]


def usage_error(err: str, command: str = "discover") -> str:
    """A usage error: the error line, then one line of usage that points at --help."""
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("consul-sd: error: "), err
    assert lines[1] == f"usage: consul-sd {command} [OPTIONS] (see consul-sd {command} --help)"
    return lines[0]


async def test_an_output_in_a_missing_directory_is_refused_before_any_request(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    output = tmp_path / "missing" / "consul.json"
    code, out, err = await run(
        "discover", "--server", sim.address, "--once", "--output", str(output)
    )
    assert code == 2
    assert out == ""
    line = usage_error(err)
    assert f"--output {output}: directory {output.parent} does not exist" in line
    assert sim.counters.requests == {}  # checked before discovery, not after


async def test_an_output_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    code, _, err = await run("discover", "--server", "127.0.0.1:1", "--output", str(tmp_path))
    assert code == 2
    assert "is a directory" in usage_error(err)


async def test_a_broken_spec_file_names_the_file_and_the_line(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text("consul:\n  server: [a\n")
    code, _, err = await run("discover", "--spec", str(spec), "--once")
    assert code == 2
    line = usage_error(err)
    assert f"--spec {spec}: invalid YAML at line 3 column 1" in line
    assert "<unicode string>" not in err


async def test_a_spec_without_end_is_refused_after_64_mib_not_read_into_memory() -> None:
    code, _, err = await run("discover", "--spec", "/dev/zero", "--once")
    assert code == 2
    assert "--spec /dev/zero: larger than 64 MiB; is this the right file?" in usage_error(err)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("consul: [1]\n", "spec.consul must be a mapping (key: value), not list"),
        ("selector: 5\n", "spec.selector must be a mapping (key: value), not int"),
        ("selector: oops\n", "spec.selector must be a mapping (key: value), not str"),
        (
            "kind: ConsulDiscovery\nmetadata: 5\nspec: {}\n",
            "metadata must be a mapping (key: value), not int",
        ),
    ],
)
async def test_a_spec_field_of_the_wrong_shape_is_one_usage_line_naming_it(
    tmp_path: Path, text: str, problem: str
) -> None:
    spec = tmp_path / "shape.yaml"
    spec.write_text(text)
    code, _, err = await run("discover", "--spec", str(spec), "--once")
    assert code == 2
    assert usage_error(err) == f"consul-sd: error: --spec {spec}: {problem}"


async def test_a_bad_flag_value_is_one_error_and_one_usage_line() -> None:
    code, _, err = await run("discover", "--mode", "sometimes", "--once")
    assert code == 2
    assert "argument --mode: invalid choice: 'sometimes'" in usage_error(err)


async def test_no_command_points_at_the_top_level_help() -> None:
    code, _, err = await run()
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == "consul-sd: error: the following arguments are required: COMMAND"
    assert lines[1:] == [
        "usage: consul-sd [--log-level LEVEL] COMMAND ... (consul-sd --help lists them)"
    ]


@pytest.mark.parametrize("mode", ["Polling", "BLOCKING", "auto"])
async def test_modes_are_accepted_in_any_case(sim: ConsulSimulator, mode: str) -> None:
    code, out, err = await run("discover", "--server", sim.address, "--mode", mode, "--once")
    assert code == 0, err
    assert len(json.loads(out)) == 20


async def test_server_accepts_an_http_url(sim: ConsulSimulator) -> None:
    code, out, err = await run("discover", "--server", f"http://{sim.address}/", "--once")
    assert code == 0, err
    assert len(json.loads(out)) == 20


async def test_an_address_that_is_not_one_is_said_in_words(tmp_path: Path) -> None:
    code, _, err = await run("discover", "--server", "ftp://127.0.0.1:8500", "--once")
    assert code == 2
    assert "scheme ftp:// is not supported" in usage_error(err)
    code, _, err = await run("discover", "--server", "127.0.0.1:port", "--once")
    assert code == 2
    line = usage_error(err)
    assert "'127.0.0.1:port': the port must be a number from 1 to 65535" in line
    assert "^(" not in line  # never the spec's regular expression
    code, _, err = await run("discover", "--server", "http://", "--once")
    assert code == 2
    assert "not an address: give host:port" in usage_error(err)


async def test_a_plain_http_connection_failure_says_where_and_never_mentions_ssl(
    unused_tcp_port: int,
) -> None:
    address = f"127.0.0.1:{unused_tcp_port}"
    code, out, err = await run("discover", "--server", address, "--once")
    assert code == 1
    assert out == ""
    line = error_line(err)
    assert f"cannot reach Consul at http://{address}" in line
    assert "CONSUL_HTTP_ADDR" in line
    assert "ssl" not in line.lower()
    assert "0 of 0" not in line


@pytest.fixture
async def not_consul() -> AsyncIterator[str]:
    """A web server that answers 404 to everything, as a mistyped port often does."""
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_server_that_is_not_consul_says_it_does_not_look_like_consul(
    not_consul: str,
) -> None:
    code, _, err = await run("discover", "--server", not_consul, "--once")
    assert code == 1
    line = error_line(err)
    assert f"http://{not_consul} does not look like Consul (HTTP 404 on /v1/agent/self)" in line


async def test_services_that_match_nothing_are_named_in_a_warning(sim: ConsulSimulator) -> None:
    code, out, err = await run(
        "discover", "--server", sim.address, "--services", "nosuch", "--once"
    )
    assert code == 0
    assert json.loads(out) == []
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, err
    assert "Consul has no instance of nosuch" in warnings[0]


async def test_operator_without_kubernetes_credentials_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)
    process = await asyncio.create_subprocess_exec(
        *CLI, "operator", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    line = error_line(err.decode())
    assert f"no kubeconfig at {tmp_path}/.kube/config" in line


async def test_log_flags_are_accepted_after_the_command(sim: ConsulSimulator) -> None:
    code, _, err = await run(
        "discover", "--server", sim.address, "--once", "--log-level", "warning"
    )
    assert code == 0
    assert err == ""  # the INFO summary is below the threshold given after the command
    code, _, err = await run("discover", "--server", sim.address, "--once", "--log-format", "json")
    assert code == 0
    (record,) = [json.loads(line) for line in err.splitlines()]
    assert record["level"] == "info"
    assert record["msg"].startswith("discovered 20 targets")


async def test_the_token_is_in_no_line_even_at_debug_when_consul_refuses_it(
    tmp_path: Path,
) -> None:
    async with ConsulSimulator(jitter=False, acl_token="the-right-token") as simulator:
        simulator.generate(services=3, instances=1, nodes=1)
        process = await asyncio.create_subprocess_exec(
            *CLI,
            "discover",
            "--once",
            "--log-level",
            "debug",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**ENV, "CONSUL_HTTP_ADDR": simulator.address, "CONSUL_HTTP_TOKEN": TOKEN},
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    text = err.decode()
    assert "denied the request" in text
    assert TOKEN not in text


async def test_a_continuous_run_survives_its_output_directory_vanishing(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    directory = tmp_path / "sd"
    directory.mkdir()
    output = directory / "consul.json"
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "discover",
        "--server",
        sim.address,
        "--mode",
        "polling",
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
            shutil.rmtree(directory)
            sim.register({"Node": "late", "Address": "10.9.0.1", "Service": {"Service": "late"}})
            await asyncio.sleep(2.5)  # two polling cycles publish into the missing directory
            assert process.returncode is None  # still running
            directory.mkdir()
            while not output.exists():
                await asyncio.sleep(0.05)
            assert len(json.loads(output.read_text())) == 21
    finally:
        process.send_signal(signal.SIGTERM)
        _, raw = await asyncio.wait_for(process.communicate(), 15)
    err = raw.decode()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    failures = [line for line in err.splitlines() if "cannot write" in line]
    assert len(failures) == 1, err  # said once, not every cycle
    assert f"--output {output}: cannot write in {directory}" in failures[0]
    assert f"--output {output}: written again" in err


def test_an_unexpected_error_is_one_line_and_its_traceback_only_at_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consul_sd import cli  # noqa: PLC0415 - patched below

    def explode(_: object) -> int:
        raise ExceptionGroup("unhandled errors in a TaskGroup", [RuntimeError("disk on fire")])

    monkeypatch.setattr(cli, "_run", explode)
    assert cli.main(["discover", "--once"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "consul-sd: error: unexpected RuntimeError: disk on fire (--log-level debug shows where)"
    )
    assert cli.main(["--log-level", "debug", "discover", "--once"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == "consul-sd: error: unexpected RuntimeError: disk on fire"
