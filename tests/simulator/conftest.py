"""Fixtures for the Consul simulator tests: a started simulator and a client bound to it.

The simulator is real HTTP on 127.0.0.1 (an ephemeral port), so these tests exercise the same
wire behaviour a Consul client sees. Blocking-query tests mark themselves ``looptime`` so that
minutes of ``wait`` pass in virtual time.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

try:
    import consul_simulator  # noqa: F401
except ImportError:  # the distribution is not installed (make venv does): use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "simulator"))

from consul_simulator import ConsulSimulator

Params = Mapping[str, str] | Sequence[tuple[str, str]] | None


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def index(self) -> int:
        return int(self.headers["X-Consul-Index"])

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class Client:
    """A thin aiohttp wrapper that returns status, headers and body without raising."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(
        self, path: str, *, params: Params = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        async with self.session.get(self.base + path, params=params, headers=headers) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def put(self, path: str, *, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
        async with self.session.put(self.base + path, json=body, headers=headers) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def post(self, path: str) -> Reply:
        async with self.session.post(self.base + path) as resp:
            return Reply(resp.status, resp.headers, await resp.read())


def node_body(node: str = "node-a", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"Node": node, "Address": "10.1.0.1", "NodeMeta": {"rack": "r1"}}
    body.update(extra)
    return body


def instance_body(
    name: str,
    *,
    node: str = "node-a",
    service_id: str | None = None,
    tags: list[str] | None = None,
    status: str = "passing",
    port: int | None = 8080,
    meta: dict[str, str] | None = None,
    node_meta: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A register body for one instance with one service check, as an agent would sync it."""
    sid = service_id or f"{name}-1"
    service: dict[str, Any] = {"ID": sid, "Service": name, "Tags": tags or [], "Meta": meta}
    if port is not None:
        service["Port"] = port
    extra: dict[str, Any] = {} if node_meta is None else {"NodeMeta": node_meta}
    return node_body(
        node,
        **extra,
        Service=service,
        Check={"CheckID": f"service:{sid}", "Name": "svc", "Status": status, "ServiceID": sid},
    )


async def until(condition: Callable[[], bool], *, what: str = "condition") -> None:
    """Poll ``condition`` (a server-side state change racing the client) for up to ~5 s."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: ConsulSimulator) -> AsyncIterator[Client]:
    # force_close: a test that holds connections open must see exactly the ones it opened.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    # Longer than Consul's 10-minute maximum wait plus jitter (virtual time under looptime).
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield Client(session, f"http://{sim.address}")
