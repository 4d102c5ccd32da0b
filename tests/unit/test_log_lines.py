"""Log lines about a CR name it; probe requests leave no access-log line (issue 17).

Five CRs used to log five identical ``starting discovery`` lines, and every kubelet probe of
kopf's liveness server logged an aiohttp access line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consul_sd.controller import handlers, runner
from consul_sd.controller.runner import CURRENT_CR, NameTheCR, run_generation
from consul_sd.loops import cancel_and_wait
from tests.unit.fake_kube import REF, FakeKube


class Lines(logging.Handler):
    """Every formatted line its filters let through."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.crs: list[str | None] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.crs.append(getattr(record, "cr", None))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    handler.addFilter(NameTheCR())
    root = logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.INFO
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


async def test_a_line_from_a_task_the_cr_started_is_prefixed_with_the_cr(lines: Lines) -> None:
    async def worker() -> None:
        logging.getLogger("consul_sd.discovery.run").warning("datacenter taken from the nodes")

    async def generation() -> None:
        CURRENT_CR.set("ns/cr")
        await asyncio.create_task(worker())  # the worker inherits the CR

    await asyncio.create_task(generation())
    logging.getLogger("consul_sd.discovery.run").warning("no CR here")
    assert lines.lines == ["ns/cr: datacenter taken from the nodes", "no CR here"]
    assert lines.crs == ["ns/cr", None]


async def test_a_line_that_names_its_cr_already_is_left_alone(lines: Lines) -> None:
    async def generation() -> None:
        CURRENT_CR.set("ns/cr")
        logging.getLogger("consul_sd.controller.runner").info("%s: invalid spec", "ns/cr")

    await asyncio.create_task(generation())
    assert lines.lines == ["ns/cr: invalid spec"]


def test_kopfs_per_object_lines_are_prefixed_with_their_object(lines: Lines) -> None:
    ref = {"namespace": "team-a", "name": "web", "kind": "ConsulDiscovery"}
    logging.getLogger("kopf.objects").info("Handler succeeded.", extra={"k8s_ref": ref})
    assert lines.lines == ["team-a/web: Handler succeeded."]


@pytest.mark.looptime
async def test_every_line_of_a_running_generation_names_it(
    lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def discovery_that_logs(**_: Any) -> None:
        logging.getLogger("consul_sd.discovery.run").info("the token may not read the agent")
        await asyncio.Event().wait()

    monkeypatch.setattr(runner, "run_discovery", discovery_that_logs)
    spec = {"consul": {"server": "c:8500"}, "output": {"configMap": {"name": "cr"}}}
    task = asyncio.create_task(
        run_generation(kube=FakeKube(), ref=REF, generation=1, spec_data=spec)
    )
    try:
        async with asyncio.timeout(60):
            while not lines.lines:
                await asyncio.sleep(1)
    finally:
        await cancel_and_wait([task])
    assert lines.lines == ["ns/cr: the token may not read the agent"]


@pytest.fixture
def installed() -> Iterator[None]:
    """The startup handler's filters, removed afterwards (they are process-wide)."""
    handlers.install_log_filters()
    yield
    for handler in logging.getLogger().handlers:
        for named in [f for f in handler.filters if isinstance(f, NameTheCR)]:
            handler.removeFilter(named)
    access = logging.getLogger("aiohttp.access")
    for probes in [f for f in access.filters if isinstance(f, handlers.DropProbes)]:
        access.removeFilter(probes)


async def test_probe_requests_are_not_access_logged_and_other_requests_are(
    caplog: pytest.LogCaptureFixture, installed: None
) -> None:
    handlers.install_log_filters()  # idempotent: a second startup adds nothing
    access = logging.getLogger("aiohttp.access")
    assert sum(isinstance(f, handlers.DropProbes) for f in access.filters) == 1
    app = web.Application()
    app.router.add_get("/healthz", _ok)
    app.router.add_get("/other", _ok)
    server = web.AppRunner(app)  # aiohttp's default access log, as kopf's liveness server
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    port = server.addresses[0][1]
    try:
        with caplog.at_level(logging.INFO, logger="aiohttp.access"):
            async with aiohttp.ClientSession() as session:
                for path in ("/healthz", "/healthz?verbose=1", "/other"):
                    async with session.get(f"http://127.0.0.1:{port}{path}") as answer:
                        assert answer.status == 200
    finally:
        await server.cleanup()
    logged = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(logged) == 1
    assert "GET /other " in logged[0]


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")
