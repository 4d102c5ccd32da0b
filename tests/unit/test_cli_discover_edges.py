"""Odd inputs a user of ``consul-sd discover`` meets: real processes against the simulator.

An address holding a password in a form the command refuses, token files that are empty or far
too large (a device such as /dev/zero among them), an ``--output`` that is not a regular file,
standard output that cannot be written, a service skipped for an answer that is not JSON, and an
output file removed while no target changes. Each ends in one line naming what to fix, never
leaks the secret, and never damages what the user pointed the command at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consul_simulator import ConsulSimulator
from tests.unit.test_cli import CLI, ENV, run
from tests.unit.test_cli_errors import error_line, usage_error

TOKEN = "s3cr3t-token-value"


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False, acl_token=TOKEN) as simulator:
        simulator.generate(services=10, instances=2, nodes=2)
        yield simulator


@pytest.mark.parametrize(
    "address",
    [f"ftp://user:{TOKEN}@127.0.0.1:8500", f"http://127.0.0.1:8500/?token={TOKEN}"],
)
async def test_an_address_is_never_echoed_when_it_holds_a_secret(address: str) -> None:
    for args, env in (
        (["--server", address], ENV),
        ([], {**ENV, "CONSUL_HTTP_ADDR": address}),
    ):
        process = await asyncio.create_subprocess_exec(
            *CLI, "discover", "--once", *args, stderr=asyncio.subprocess.PIPE, env=env
        )
        _, raw = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 2
        assert "not shown" in usage_error(raw.decode())
        assert TOKEN not in raw.decode()


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
async def test_a_port_out_of_range_says_so(port: str) -> None:
    code, _, err = await run("discover", "--once", "--server", f"127.0.0.1:{port}")
    assert code == 2
    assert usage_error(err) == (
        f"consul-sd: error: --server '127.0.0.1:{port}': the port must be a number from 1 to 65535"
    )


@pytest.mark.parametrize("content", ["", "  \n\n"])
async def test_an_empty_token_file_is_refused_naming_it(
    sim: ConsulSimulator, tmp_path: Path, content: str
) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    code, _, err = await run(
        "discover", "--once", "--server", sim.address, "--token-file", str(token)
    )
    assert code == 2
    assert usage_error(err).startswith(f"consul-sd: error: --token-file {token}: the file is empty")
    assert sim.counters.requests == {}


async def test_a_token_file_too_large_is_refused_and_never_sent(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    # A server refuses a 20000-byte header by echoing its start: a piece of the secret.
    long_token = tmp_path / "long"
    long_token.write_text(TOKEN * 1000 + "\n")
    code, _, err = await run(
        "discover", "--once", "--server", sim.address, "--token-file", str(long_token)
    )
    assert code == 2
    assert "characters long; a Consul ACL token is a 36-character UUID" in usage_error(err)
    assert "s3cr3t" not in err
    assert sim.counters.requests == {}
    # A device that never ends is read no further than 1 MiB.
    code, _, err = await run(
        "discover", "--once", "--server", sim.address, "--token-file", "/dev/zero", timeout=30
    )
    assert code == 2
    assert (
        usage_error(err)
        == "consul-sd: error: --token-file /dev/zero: larger than 1 MiB; is this the right file?"
    )


async def test_an_output_that_is_not_a_regular_file_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, _, err = await run("discover", "--once", "--server", "127.0.0.1:1", "--output", str(fifo))
    assert code == 2
    assert f"--output {fifo}: not a regular file" in usage_error(err)
    assert fifo.is_fifo()  # not replaced by a rename, as /dev/null would have been


async def test_standard_output_that_cannot_be_written_is_one_line(sim: ConsulSimulator) -> None:
    with open("/dev/full", "wb") as full:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            "discover",
            "--once",
            stdout=full,
            stderr=asyncio.subprocess.PIPE,
            env={**ENV, "CONSUL_HTTP_ADDR": sim.address, "CONSUL_HTTP_TOKEN": TOKEN},
        )
        _, raw = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    lines = [line for line in raw.decode().splitlines() if " INFO " not in line]
    assert error_line("\n".join(lines)) == (
        "consul-sd: error: cannot write the targets to standard output "
        "(No space left on device); use --output FILE"
    )


async def test_a_service_skipped_for_an_answer_that_is_not_json_is_named(
    sim: ConsulSimulator,
) -> None:
    sim.faults.malformed_services = {"svc-00003"}
    code, out, err = await run(
        "discover", "--once", "--mode", "polling", "--server", sim.address, "--token", TOKEN
    )
    assert code == 0, err  # as Prometheus: the other services are discovered
    assert len(json.loads(out)) == 18
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, err
    assert "service svc-00003 skipped: " in warnings[0]
    assert "/v1/health/service/svc-00003: answer is not JSON" in warnings[0]


# Polling publishes every cycle (the writer sees the file gone); Blocking on a quiet fleet
# publishes nothing after the first, so only the sink's retry loop can notice.
@pytest.mark.parametrize("mode", ["polling", "blocking"])
async def test_an_output_file_removed_while_nothing_changes_is_written_again(
    sim: ConsulSimulator, tmp_path: Path, mode: str
) -> None:
    output = tmp_path / "consul.json"
    token = tmp_path / "token"
    token.write_text(TOKEN)
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "discover",
        "--server",
        sim.address,
        "--token-file",
        str(token),
        "--mode",
        mode,
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
            output.unlink()
            while not output.exists():  # within the 5 s retry
                await asyncio.sleep(0.05)
        assert len(json.loads(output.read_text())) == 20
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        _, raw = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, raw.decode()
    assert f"--output {output}: removed or replaced by another; written again" in raw.decode()


async def test_a_service_name_consul_does_not_have_is_named_among_found_ones(
    sim: ConsulSimulator,
) -> None:
    code, out, err = await run(
        "discover", "--once", "--server", sim.address, "--token", TOKEN,
        "--services", "svc-00001,svc-0001",
    )  # fmt: skip
    assert code == 0, err
    assert len(json.loads(out)) == 2
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, err
    assert warnings[0].endswith(
        "consul_sd: Consul has no instance of svc-0001 "
        "(--services takes exact names; see `consul catalog services`)"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--datacenter", "dc9"], "check --datacenter (or spec.consul.datacenter)"),
        (["--scheme", "https"], "the server does not speak TLS there"),
    ],
)
async def test_a_consul_failure_says_what_to_change(
    sim: ConsulSimulator, args: list[str], expected: str
) -> None:
    code, _, err = await run("discover", "--once", "--server", sim.address, "--token", TOKEN, *args)
    assert code == 1
    assert expected in error_line(err)


async def test_an_ipv6_listen_address_in_use_is_named_as_written(sim: ConsulSimulator) -> None:
    try:
        taken = await asyncio.start_server(lambda r, w: None, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = taken.sockets[0].getsockname()[1]
    try:
        code, _, err = await run("discover", "--server", sim.address, "--listen", f"[::1]:{port}")
    finally:
        taken.close()
        await taken.wait_closed()
    assert code == 2
    assert usage_error(err) == f"consul-sd: error: --listen [::1]:{port}: Address already in use"


async def test_a_consul_server_error_says_to_retry_or_check_consul(sim: ConsulSimulator) -> None:
    sim.faults.fail_services = {"svc-00004"}
    code, _, err = await run("discover", "--once", "--server", sim.address, "--token", TOKEN)
    assert code == 1
    assert error_line(err) == (
        f"consul-sd: error: 1 of 10 services not discovered: Consul at http://{sim.address}: "
        "ConsulServerError: /v1/health/service/svc-00004: HTTP 500: simulated error; "
        "retry later, or check the Consul servers"
    )


@pytest.mark.parametrize("address", ["http://[::1", "[zz]:8500", "[::1:8500"])
async def test_a_broken_ipv6_address_is_a_usage_line(address: str) -> None:
    code, _, err = await run("discover", "--once", "--server", address)
    assert code == 2
    assert usage_error(err) == (
        f"consul-sd: error: --server {address!r}: not an address: an IPv6 address goes in "
        "brackets, as [::1]:8500"
    )


async def test_a_continuous_run_tells_a_consul_problem_with_what_to_fix(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    process = await asyncio.create_subprocess_exec(
        *CLI, "discover", "--server", f"127.0.0.1:{unused_tcp_port}",
        "--output", str(tmp_path / "consul.json"),
        stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 15)
    assert " WARNING " in line
    assert f"cannot reach Consul at http://127.0.0.1:{unused_tcp_port} (" in line
    assert "ssl:" not in line  # plain HTTP: no TLS setting named
    assert line.rstrip().endswith(
        "Set the address with --server or CONSUL_HTTP_ADDR (nothing written yet)"
    )
