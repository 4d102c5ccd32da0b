"""A replay Consul: serves recorded answers verbatim, for conformance tests of every mode.

The simulator builds its answers from registrations; this serves JSON exactly as recorded (null
Meta, missing Port, Enterprise fields), so the target builder sees Consul's real shapes. Blocking
queries on an unchanged index park for their wait (instant under looptime). Any request it does
not know is answered 500 and recorded in ``unexpected``, which the tests assert is empty.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

INDEX = 100


class ReplayConsul:
    def __init__(self, recording: dict[str, Any]) -> None:
        self.recording = recording
        self.unexpected: list[str] = []
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> ReplayConsul:
        app = web.Application()
        app.router.add_get("/v1/agent/self", self._agent_self)
        app.router.add_get("/v1/catalog/services", self._services)
        app.router.add_get("/v1/health/service/{name}", self._health)
        app.router.add_get("/v1/health/state/{state}", self._unhealthy_checks)
        app.router.add_get("/v1/catalog/nodes", self._empty_table)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _park_if_unchanged(self, request: web.Request) -> None:
        index = int(request.query.get("index", "0"))
        if index >= INDEX:
            wait = request.query.get("wait", "300000ms")
            await asyncio.sleep(int(wait.removesuffix("ms")) / 1000)

    def _answer(self, data: Any) -> web.Response:
        return web.Response(
            body=json.dumps(data).encode(),
            content_type="application/json",
            headers={"X-Consul-Index": str(INDEX), "X-Consul-Knownleader": "true"},
        )

    async def _agent_self(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        return self._answer({"Config": {"Datacenter": self.recording["datacenter"]}})

    async def _services(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        await self._park_if_unchanged(request)
        return self._answer(self.recording["catalog"])

    async def _health(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        name = request.match_info["name"]
        if name not in self.recording["health"]:
            return await self._unknown(request)
        await self._park_if_unchanged(request)
        return self._answer(self.recording["health"][name])

    async def _empty_table(self, request: web.Request) -> web.Response:
        """The polling change gate reads table indexes with a filter that matches nothing."""
        self.requests.append(request.path_qs)
        if request.query.get("filter") != 'Node == ""':
            return await self._unknown(request)
        return self._answer([])

    async def _unhealthy_checks(self, request: web.Request) -> web.Response:
        """The polling change gate reads the checks that are not passing: none were recorded."""
        self.requests.append(request.path_qs)
        if request.match_info["state"] not in ("critical", "warning"):
            return await self._unknown(request)
        return self._answer([])

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unexpected.append(request.path_qs)
        return web.Response(status=500, text="unexpected request")
