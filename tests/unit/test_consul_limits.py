"""What the Consul client does with hostile answers and credentials (issue 10): a bounded read,
no crash on deep or odd JSON, no redirect followed, no credential in any message.

Each test runs a tiny local aiohttp server on 127.0.0.1 standing in for a misbehaving Consul (or
a proxy in front of it). The memory bound of a whole ``consul-sd discover`` process is checked in
tests/e2e/test_consul_limits.py (it takes seconds).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from consul_sd.consul import client as consul_module
from consul_sd.consul.client import MAX_ANSWER_BYTES, ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint, validate_basic_auth, validate_token
from consul_sd.consul.errors import (
    ConsulBadRequest,
    ConsulBadResponse,
    ConsulCredentialError,
    ConsulError,
)
from consul_sd.controller.conditions import consul_problem
from consul_sd.discovery.snapshots import Snapshot
from consul_simulator import ConsulSimulator

pytestmark = pytest.mark.looptime
MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.1, max_delay=0.5)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """A server answering every GET with ``handler``; yields its host:port."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def consul_at(server: str, **endpoint: Any) -> ConsulClient:
    return ConsulClient(
        endpoint=ConsulEndpoint(server=server, datacenter="dc1", **endpoint),
        max_connections=2,
        retry=FAST_RETRY,
    )


def answering(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return handler


# --- size ----------------------------------------------------------------------------------


async def test_a_streamed_answer_is_cut_off_at_the_cap() -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse()  # chunked: no Content-Length to reject it early
        await response.prepare(request)
        chunk = b" " * MiB  # whitespace: what a JSON decoder would happily buffer
        try:
            for _ in range(1024):  # 1 GiB at most
                await response.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return response

    async with serve(endless) as server, consul_at(server) as consul:
        with pytest.raises(ConsulBadResponse) as caught:
            await consul.list_services()
    assert str(caught.value) == "/v1/catalog/services: answer larger than 64 MiB; is this Consul?"
    assert caught.value.reason == "MalformedConsulResponse"
    assert sent < MAX_ANSWER_BYTES + 64 * MiB  # the server could not push its whole gigabyte


async def test_a_declared_length_above_the_cap_is_refused_before_reading() -> None:
    release = asyncio.Event()
    requests = 0

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        response = web.StreamResponse()
        response.content_length = 800 * MiB
        await response.prepare(request)
        await response.write(b"{")
        await asyncio.wait_for(release.wait(), 5)  # the rest never comes
        return response

    try:
        async with serve(huge) as server, consul_at(server) as consul:
            with pytest.raises(ConsulBadResponse, match="answer larger than 64 MiB"):
                await asyncio.wait_for(consul.list_services(), 1)
            release.set()
    finally:
        release.set()
    assert requests == 1  # a permanent answer: not retried


@pytest.mark.parametrize("chunked", [True, False])
async def test_an_answer_of_exactly_the_cap_is_read_and_one_byte_more_is_not(
    chunked: bool,
) -> None:
    limit = MiB

    def padded_to(size: int) -> Handler:
        body = b'{"web": []' + b" " * (size - 11) + b"}"

        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            if chunked:
                response.enable_chunked_encoding()
            else:
                response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return response

        return handler

    async with serve(padded_to(limit)) as exact, serve(padded_to(limit + 1)) as over:
        client = ConsulClient(
            endpoint=ConsulEndpoint(server=exact, datacenter="dc1"),
            max_connections=1,
            max_answer_bytes=limit,
        )
        async with client:
            services, _ = await client.list_services()
        client = ConsulClient(
            endpoint=ConsulEndpoint(server=over, datacenter="dc1"),
            max_connections=1,
            max_answer_bytes=limit,
        )
        async with client:
            with pytest.raises(ConsulBadResponse, match="answer larger than 1 MiB"):
                await client.list_services()
    assert services == {"web": ()}


# --- decoding ------------------------------------------------------------------------------


async def test_deeply_nested_json_is_a_bad_response_not_a_crash() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    async with serve(answering(deep)) as server, consul_at(server) as consul:
        with pytest.raises(ConsulBadResponse, match="answer nested too deeply"):
            await consul.list_services()


async def test_an_unforeseen_error_in_a_parser_is_a_bad_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(data: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(consul_module, "parse_service_list", broken)
    async with serve(answering(b"{}")) as server, consul_at(server) as consul:
        with pytest.raises(ConsulBadResponse, match="unexpected answer \\(KeyError\\)"):
            await consul.list_services()


# --- redirects -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [302, 307, 308])
async def test_a_redirect_is_not_followed_and_no_credential_leaves_the_origin(
    status: int,
) -> None:
    elsewhere: list[dict[str, str]] = []
    asked = 0

    async def other_origin(request: web.Request) -> web.Response:
        elsewhere.append(dict(request.headers))
        return web.json_response({})

    async with serve(other_origin) as other:
        location = f"http://{other}/v1/catalog/services?token=from-the-proxy#frag"

        async def redirecting(request: web.Request) -> web.Response:
            nonlocal asked
            asked += 1
            return web.Response(status=status, headers={"Location": location})

        async with serve(redirecting) as server:
            for credential in ({"token": "s3cret-token"}, {"basic_auth": ("user", "pa55word")}):
                async with consul_at(server, **credential) as consul:
                    with pytest.raises(ConsulError) as caught:
                        await consul.list_services()
                assert str(caught.value) == (
                    f"/v1/catalog/services: HTTP {status} redirect to "
                    f"http://{other}/v1/catalog/services not followed"
                )
    assert elsewhere == []
    assert asked == 2  # once per client: a redirect is not retried either


# --- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("abc def", "token has a character outside visible ASCII (position 4)"),
        ("abc\r\nX-Evil: 1", "token has a character outside visible ASCII (position 4)"),
        ("  tök", "token has a character outside visible ASCII (position 4)"),
        ("abc\x00", "token has a character outside visible ASCII (position 4)"),
        (" \n", "token is empty"),
    ],
)
def test_a_token_that_cannot_be_a_header_is_refused_naming_the_position(
    token: str, message: str
) -> None:
    with pytest.raises(ConsulCredentialError) as caught:
        validate_token(token)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_a_token_with_surrounding_whitespace_is_fine() -> None:
    validate_token("\n 0f7e-aa-Z~!\n")


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        ("us:er", "secret", "basic-auth username has a ':' (position 3)"),
        ("user", "pässwörd€", "basic-auth password has a character outside Latin-1 (position 9)"),
        ("usér€", "secret", "basic-auth username has a character outside Latin-1 (position 5)"),
        ("user", "sec\nret", "basic-auth password has a control character (position 4)"),
        ("u\x00", "secret", "basic-auth username has a control character (position 2)"),
        ("user", "sec\x85", "basic-auth password has a control character (position 4)"),
    ],
)
def test_basic_auth_that_http_cannot_carry_is_refused_without_echoing_it(
    username: str, password: str, message: str
) -> None:
    with pytest.raises(ConsulCredentialError) as caught:
        validate_basic_auth(username, password)
    assert str(caught.value) == message


def test_the_client_checks_credentials_before_any_request() -> None:
    secret = "pässwörd€-do-not-log"
    with pytest.raises(ConsulCredentialError) as caught:
        ConsulClient(
            endpoint=ConsulEndpoint(server="127.0.0.1:1", basic_auth=("user", secret)),
            max_connections=1,
        )
    assert "password" in str(caught.value)
    assert all("do-not-log" not in str(arg) for arg in caught.value.args)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    with pytest.raises(ConsulCredentialError, match="position 6"):
        ConsulClient(
            endpoint=ConsulEndpoint(server="127.0.0.1:1", token="token\nwith-newline"),
            max_connections=1,
        )


async def test_latin1_basic_auth_and_a_padded_token_are_sent_as_http_wants() -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def recording(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), request.headers.get("X-Consul-Token")))
        return web.json_response({})

    async with serve(recording) as server:
        async with consul_at(server, basic_auth=("usér", "pässwörd")) as consul:
            await consul.list_services()
        async with consul_at(server, token="  s3cret-token\n") as consul:
            await consul.list_services()
    expected = "Basic " + base64.b64encode("usér:pässwörd".encode("latin-1")).decode()
    assert seen == [(expected, None), (None, "s3cret-token")]


# --- filters -------------------------------------------------------------------------------


async def test_a_health_filter_consul_cannot_compile_names_the_filter_and_is_not_retried() -> None:
    async with ConsulSimulator(jitter=False) as sim:
        sim.register({"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "web"}})
        async with consul_at(sim.address) as consul:
            with pytest.raises(ConsulBadRequest) as caught:
                await consul.service_instances("web", filter_expr="Service.Port ==")
        assert sim.counters.requests["health_service"] == 1
    message = str(caught.value)
    assert message.startswith(
        "/v1/health/service/web: Consul cannot compile the filter 'Service.Port ==': "
    )
    assert "boolean expression evaluator" not in message  # Consul's reason, not its preamble
    assert caught.value.reason == "ConsulBadRequest"


# --- a restart under a long-poll -----------------------------------------------------------


async def test_a_long_poll_broken_by_a_restart_is_retried_as_a_plain_fully_decoded_read() -> None:
    """A Consul restarted without its data answers the old index with other content."""
    asked: list[dict[str, str]] = []

    async def restarting(request: web.Request) -> web.StreamResponse:
        asked.append(dict(request.query))
        if len(asked) == 1:
            assert request.transport is not None
            request.transport.close()  # the agent died with the long-poll parked
            return web.Response()
        entry = {"Node": {"Node": "n", "Address": "10.0.0.2"}, "Service": {"ID": "a", "Port": 81}}
        return web.json_response([entry], headers={"X-Consul-Index": "19"})

    async with serve(restarting) as server, consul_at(server) as client:
        instances, index = await client.service_instances(
            "web", index=19, wait=10.0, unchanged_index=19
        )
    assert len(asked) == 2, asked
    assert "index" in asked[0]
    assert "index" not in asked[1]
    assert "wait" not in asked[1]
    assert index == 19
    assert instances is not None
    assert [i.service_port for i in instances] == [81]


# --- credentials echoed back ------------------------------------------------------------


ECHOED_TOKEN = "8f0c1c2e-secret-token-value"


async def test_a_server_echoing_the_token_never_puts_it_into_status() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(
            status=401, text=f"invalid credentials: {request.headers.get('X-Consul-Token')}"
        )

    app = web.Application()
    app.router.add_get("/v1/health/service/{name}", echo)
    async with TestServer(app, host="127.0.0.1") as test_server:
        endpoint = ConsulEndpoint(server=f"127.0.0.1:{test_server.port}", token=ECHOED_TOKEN)
        async with ConsulClient(
            endpoint=endpoint, max_connections=2, retry=RetryPolicy(attempts=1)
        ) as client:
            with pytest.raises(ConsulError) as raised:
                await client.service_instances("web")
    snapshot = Snapshot(
        groups={}, mode="Polling", complete=False, matched=1, failed={"web": raised.value}
    )
    problem = consul_problem(snapshot)
    assert problem is not None
    assert ECHOED_TOKEN not in problem.message, f"status message: {problem.message}"
