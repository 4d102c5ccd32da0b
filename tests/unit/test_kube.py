"""The Kubernetes facade's own rules, against a recording stand-in for the generated client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import pytest
import urllib3
from kubernetes import client as k8s

from consul_sd.kube import REQUEST_TIMEOUT, DiscoveryRef, Kube, KubeError

REF = DiscoveryRef(namespace="ns", name="cr", uid="uid-cr")


class Response:
    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()


class RecordingCore:
    """Answers every call with an object carrying a uid, and records the call's arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Response:
            self.calls.append((name, args, kwargs))
            return Response({"metadata": {"uid": "uid-1"}})

        return call


def kube_with(core: Any) -> Kube:
    kube = Kube.__new__(Kube)
    kube._core = core
    kube._custom = core
    return kube


async def test_every_apiserver_call_is_bounded_by_a_timeout() -> None:
    core = RecordingCore()
    kube = kube_with(core)
    await kube.apply_output(owner=REF, kind="ConfigMap", name="cr-0", labels={}, payload={})
    await kube.create_output(owner=REF, kind="ScrapeConfig", name="sc-0", labels={}, payload={})
    await kube.patch_status(ref=REF, status={})
    await kube.post_event(ref=REF, kind="Normal", reason="R", message="m")
    assert len(core.calls) == 4
    assert all(kwargs["_request_timeout"] == REQUEST_TIMEOUT for _, _, kwargs in core.calls)


async def test_a_delete_names_the_uid_it_may_delete() -> None:
    core = RecordingCore()
    await kube_with(core).delete_output(namespace="ns", kind="ConfigMap", name="cr-3", uid="u-3")
    ((name, args, kwargs),) = core.calls
    assert (name, args) == ("delete_namespaced_config_map", ("cr-3", "ns"))
    assert kwargs["body"] == {"preconditions": {"uid": "u-3"}}


async def test_a_connection_that_breaks_is_a_kube_error_not_a_crash() -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                raise urllib3.exceptions.ProtocolError("Connection aborted.")

            return call

    with pytest.raises(KubeError, match="apiserver unreachable: ProtocolError"):
        await kube_with(Broken()).patch_status(ref=REF, status={})


STALL = 1.5


def serve_once(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.recv(65536)
        body = json.dumps({"metadata": {"name": "cr-0", "uid": "u"}, "data": {}}).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        time.sleep(STALL)  # headers sent, body late
        conn.sendall(body)


async def test_a_stalled_apiserver_body_never_blocks_the_event_loop() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    thread = threading.Thread(target=serve_once, args=(listener,), daemon=True)
    thread.start()
    configuration = k8s.Configuration()
    configuration.host = f"http://127.0.0.1:{listener.getsockname()[1]}"
    kube = Kube(k8s.ApiClient(configuration))
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    try:
        result = await kube.read_output(namespace="ns", kind="ConfigMap", name="cr-0")
        await asyncio.sleep(0.2)  # let the ticker see the gap, if any
    finally:
        ticking.cancel()
        listener.close()
    assert result["metadata"]["name"] == "cr-0"
    assert max(gaps) < 0.5, f"the event loop was blocked for {max(gaps):.2f}s"
