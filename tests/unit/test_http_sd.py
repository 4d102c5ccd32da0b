"""The HTTP SD endpoint as Prometheus sees it: a real aiohttp server on 127.0.0.1, real GETs.

Each test starts the server on a free port with :func:`start_target_server` and talks to it with
an aiohttp client that does not decompress, so what is checked is the bytes on the wire. Waits
are real (sockets), each bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest

from consul_sd.outputs import http_sd
from consul_sd.outputs.http_sd import (
    CLI_KEY,
    RunningServer,
    TargetStore,
    start_target_server,
    stop_target_server,
)
from consul_sd.outputs.render import render_file_sd
from consul_sd.targets import Target, TargetGroup, group_targets

KEY = ("monitoring", "fleet")
PATH = "/targets/monitoring/fleet"
TOKEN = "s3cr3t-http-sd-token"


def group(service: str, *ports: int, meta: str = "") -> TargetGroup:
    labels = {"__meta_consul_service": service, "__meta_consul_service_metadata_x": meta}
    return tuple(Target.of(f"10.0.0.1:{port}", labels) for port in ports)


GROUPS: Mapping[str, TargetGroup] = {"web": group("web", 80, 81), "db": group("db", 5432)}


@pytest.fixture
async def store() -> TargetStore:
    return TargetStore()


@pytest.fixture
async def server(store: TargetStore) -> AsyncIterator[RunningServer]:
    running = await start_target_server(store, host="127.0.0.1", port=0, app_kind="operator")
    yield running
    await stop_target_server(running)


@pytest.fixture
async def get(server: RunningServer) -> AsyncIterator[Callable[..., Any]]:
    """``get(path, token=None, gzip=False, method="GET")``: (status, headers, raw body)."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def request(
            path: str, *, token: str | None = None, gzip: bool = False, method: str = "GET"
        ) -> tuple[int, Mapping[str, str], bytes]:
            headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            url = f"http://127.0.0.1:{server.port}{path}"
            async with asyncio.timeout(10):
                async with session.request(method, url, headers=headers) as response:
                    return response.status, response.headers, await response.read()

        yield request


async def test_before_the_first_snapshot_it_is_503_with_one_line_never_an_empty_list(
    store: TargetStore, get: Callable[..., Any]
) -> None:
    store.expect(KEY, token=None)
    status, headers, body = await get(PATH)
    assert status == 503
    assert headers["Content-Type"].startswith("text/plain")
    assert body.decode().count("\n") == 1
    assert "monitoring/fleet" in body.decode()
    assert "first sync pending" in body.decode()


async def test_a_served_snapshot_is_the_file_sd_json_of_its_groups(
    store: TargetStore, get: Callable[..., Any]
) -> None:
    store.serve(KEY, GROUPS, token=None)
    status, headers, body = await get(PATH)
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert "Content-Encoding" not in headers
    assert body == render_file_sd(GROUPS)
    assert len(json.loads(body)) == 3


async def test_gzip_when_the_client_accepts_it_and_the_same_json_inside(
    store: TargetStore, get: Callable[..., Any]
) -> None:
    store.serve(KEY, GROUPS, token=None)
    status, headers, body = await get(PATH, gzip=True)
    assert (status, headers["Content-Encoding"]) == (200, "gzip")
    assert headers["Content-Type"] == "application/json"
    assert gzip.decompress(body) == render_file_sd(GROUPS)


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [("gzip", True), ("deflate, GZIP;q=0.5", True), ("gzip;q=0", False), ("br", False)],
)
def test_accept_encoding_is_read_with_its_quality(accept: str, gzipped: bool) -> None:
    assert http_sd._accepts_gzip(accept) is gzipped


async def test_an_unknown_or_forgotten_discovery_is_404(
    store: TargetStore, get: Callable[..., Any]
) -> None:
    assert (await get("/targets/monitoring/unknown"))[0] == 404
    store.serve(KEY, GROUPS, token=None)
    store.forget(KEY)
    status, _, body = await get(PATH)
    assert status == 404
    assert body.decode().count("\n") == 1


async def test_a_token_is_required_when_the_discovery_has_one(
    store: TargetStore, get: Callable[..., Any]
) -> None:
    store.serve(KEY, GROUPS, token=TOKEN)
    status, headers, _ = await get(PATH)
    assert (status, headers["WWW-Authenticate"]) == (401, "Bearer")
    assert (await get(PATH, token="not-the-token"))[0] == 403
    assert (await get(PATH, token="é-not-ascii"))[0] == 403
    status, _, body = await get(PATH, token=TOKEN)
    assert (status, body) == (200, render_file_sd(GROUPS))


async def test_the_token_is_checked_before_saying_whether_a_snapshot_exists(
    store: TargetStore, get: Callable[..., Any]
) -> None:
    store.expect(KEY, token=TOKEN)
    assert (await get(PATH))[0] == 401
    assert (await get(PATH, token=TOKEN))[0] == 503


async def test_expect_after_serve_keeps_the_body_and_takes_the_new_token(
    store: TargetStore, get: Callable[..., Any]
) -> None:
    """A restarted worker (new credentials) keeps answering the last targets."""
    store.serve(KEY, GROUPS, token="old")
    store.expect(KEY, token="new")
    assert (await get(PATH, token="old"))[0] == 403
    assert (await get(PATH, token="new"))[2] == render_file_sd(GROUPS)


async def test_the_listing_names_each_discovery_its_path_readiness_and_targets(
    store: TargetStore, get: Callable[..., Any]
) -> None:
    store.serve(KEY, GROUPS, token=TOKEN)
    store.expect(("apps", "pending"), token=None)
    status, headers, body = await get("/targets")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == [
        {"namespace": "apps", "name": "pending", "path": "/targets/apps/pending", "ready": False,
         "targets": 0},
        {"namespace": "monitoring", "name": "fleet", "path": PATH, "ready": True, "targets": 3},
    ]  # fmt: skip


async def test_only_get_and_head_are_answered(store: TargetStore, get: Callable[..., Any]) -> None:
    store.serve(KEY, GROUPS, token=None)
    status, headers, body = await get(PATH, method="HEAD")
    assert (status, body) == (200, b"")
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = await get(PATH, method=method)
        assert status == 405, method
        assert "GET" in headers["Allow"]
        assert body.decode().count("\n") <= 1


async def test_healthz_and_metrics_are_served_beside_the_targets(get: Callable[..., Any]) -> None:
    status, _, body = await get("/healthz")
    assert (status, body) == (200, b"ok\n")
    status, headers, body = await get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert b"python_info" in body


async def test_serve_renders_once_and_gets_answer_from_memory(
    store: TargetStore, get: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counting(groups: Mapping[str, TargetGroup]) -> bytes:
        calls.append(len(groups))
        return render_file_sd(groups)

    monkeypatch.setattr(http_sd, "render_file_sd", counting)
    store.serve(KEY, GROUPS, token=None)
    for gzipped in (False, True, False, True):
        assert (await get(PATH, gzip=gzipped))[0] == 200
    assert calls == [2]


async def test_neither_tokens_nor_requests_reach_the_logs(
    store: TargetStore, get: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store.serve(KEY, GROUPS, token=TOKEN)
    store.expect(("apps", "other"), token="another-s3cr3t")
    caplog.clear()
    for token in (None, "wrong-s3cr3t", TOKEN):
        await get(PATH, token=token)
    await get("/targets/apps/other", token="guess-s3cr3t")
    await get("/targets")
    assert "s3cr3t" not in caplog.text
    assert [r for r in caplog.records if r.name.startswith(("aiohttp", "consul_sd"))] == []


async def test_the_cli_app_serves_its_one_discovery_at_targets() -> None:
    store = TargetStore()
    running = await start_target_server(store, host="127.0.0.1", port=0, app_kind="cli")
    try:
        store.expect(CLI_KEY, token=None)
        async with aiohttp.ClientSession() as session, asyncio.timeout(10):
            url = f"http://127.0.0.1:{running.port}"
            async with session.get(f"{url}/targets") as response:
                assert response.status == 503
                assert await response.text() == (
                    "consul-sd: no complete discovery yet (first sync pending)\n"
                )
            store.serve(CLI_KEY, GROUPS, token=None)
            async with session.get(f"{url}/targets") as response:
                assert response.status == 200
                assert await response.read() == render_file_sd(GROUPS)
            async with session.get(f"{url}/targets/monitoring/fleet") as response:
                assert response.status == 404
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200
    finally:
        await stop_target_server(running)


# --------------------------------------------------------------------------------- shutdown


async def slow_reader(port: int, request: bytes) -> tuple[asyncio.StreamReader, Any]:
    """A client with a tiny receive buffer that sends ``request`` and then reads nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(request)
    await writer.drain()
    return reader, writer


async def test_a_request_in_flight_during_stop_does_not_hang_it_or_its_client() -> None:
    """A client that stops reading a large body, one that never finishes its request: the stop
    ends within its bound, both clients see their connection end, and new ones are refused."""
    store = TargetStore()
    big = {f"s{i}": group(f"s{i}", 80, meta=f"{i}" + "x" * 100_000) for i in range(200)}
    store.serve(CLI_KEY, big, token=None)
    running = await start_target_server(
        store, host="127.0.0.1", port=0, app_kind="cli", shutdown_timeout=0.5
    )
    reader, writer = await slow_reader(running.port, b"GET /targets HTTP/1.1\r\nHost: x\r\n\r\n")
    partial, partial_writer = await slow_reader(running.port, b"GET /targets HTTP/1.1\r\n")
    async with asyncio.timeout(10):
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")  # the body is under way
    async with asyncio.timeout(5):  # about 2 x 0.5 s: aiohttp waits, then cancels and waits
        await stop_target_server(running)
    async with asyncio.timeout(5):
        # Both reach the end of their stream: what was already written, then the close.
        await reader.read()
        assert await partial.read() == b""
    writer.close()
    partial_writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", running.port)


async def test_an_idle_keep_alive_connection_does_not_hold_the_stop() -> None:
    running = await start_target_server(TargetStore(), host="127.0.0.1", port=0, app_kind="cli")
    async with aiohttp.ClientSession() as session, asyncio.timeout(5):
        # A keep-alive connection left idle in the client's pool.
        async with session.get(f"http://127.0.0.1:{running.port}/healthz") as response:
            assert response.status == 200
        await stop_target_server(running)


async def raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


async def test_a_non_utf8_bearer_token_is_refused_403_not_a_500_with_a_logged_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = TargetStore()
    groups = {"web": group_targets([Target.of("10.0.0.1:80", {"__meta_consul_service": "web"})])}
    store.serve(("ns", "cr"), groups, token="right-token")
    server = await start_target_server(store, host="127.0.0.1", port=0, app_kind="operator")
    try:
        with caplog.at_level(logging.ERROR):
            answer = await raw(
                server.port,
                b"GET /targets/ns/cr HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                b"Connection: close\r\n\r\n",
            )
    finally:
        await stop_target_server(server)
    status = answer.split(b"\r\n", 1)[0]
    assert b"403" in status or b"401" in status, status
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
