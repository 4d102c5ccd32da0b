"""Prometheus HTTP SD served from memory: the operator's port and ``consul-sd discover --listen``.

A :class:`TargetStore` holds, per discovery, the latest complete snapshot rendered once (by
:func:`consul_sd.outputs.render.render_file_sd`, so the groups and labels equal the file_sd
output) into its JSON bytes and their gzip; a GET answers from those bytes and never renders.
Before a discovery's first complete snapshot its URL answers 503 with one line of text, never
``200 []``: Prometheus keeps the targets it had when a fetch fails, and an empty answer would
drop them all.

Routes: the operator's app serves ``/targets/<namespace>/<name>`` (404 unknown, 401 without the
bearer token a discovery requires, 403 with another, 503 before its first complete snapshot,
else 200 JSON, gzip when the client accepts it) and ``/targets`` (a JSON listing of what is
served); the CLI's app serves its one discovery at ``/targets``. Both serve ``/metrics`` (the
default prometheus_client registry) and ``/healthz``. GET and HEAD only (else 405).
:func:`start_target_server` and :func:`stop_target_server` run either app, and the shutdown is
bounded: in-flight requests get ``shutdown_timeout`` seconds to finish, then are cut.

Limits: memory is two copies of the body per discovery (the JSON and its gzip, ~13 MiB and
~1 MiB for 7000 services x 3), kept for as long as the discovery is served. Rendering and gzip
run on the event loop, once per :meth:`TargetStore.serve`. No access log (a Prometheus fetching
every 15 s would flood it) and tokens or Authorization headers are never logged.

Pure except for the server: no kopf, no Kubernetes client (the operator passes tokens in).
"""

from __future__ import annotations

import gzip
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from consul_sd.discovery.snapshots import Snapshot, is_publishable
from consul_sd.outputs.render import render_file_sd
from consul_sd.targets import TargetGroup, count_targets

__all__ = [
    "CLI_KEY",
    "AppKind",
    "RunningServer",
    "SnapshotServer",
    "TargetStore",
    "build_app",
    "start_target_server",
    "stop_target_server",
]

logger = logging.getLogger(__name__)

Key = tuple[str, str]
AppKind = Literal["operator", "cli"]
CLI_KEY: Key = ("", "")  # the CLI's one discovery
JSON = "application/json"
# Level 6: within a few percent of 9 on this JSON, several times faster on a 13 MiB body.
GZIP_LEVEL = 6
SHUTDOWN_TIMEOUT = 5.0
KEEPALIVE_SECONDS = 75.0


@dataclass(frozen=True)
class Served:
    """What one discovery answers: its token, and its bodies once a snapshot is complete."""

    # Never in a repr: the token is a credential, the bodies are megabytes.
    token: str | None = field(repr=False)
    body: bytes | None = field(default=None, repr=False)
    gzipped: bytes | None = field(default=None, repr=False)
    targets: int = 0
    # Locked until this start's token is known: 503 to every request, the body kept.
    reserved: bool = False


def path_of(key: Key) -> str:
    return "/targets" if key == CLI_KEY else f"/targets/{key[0]}/{key[1]}"


class TargetStore:
    """The HTTP SD bodies of every served discovery, keyed by ``(namespace, name)``."""

    def __init__(self) -> None:
        self._served: dict[Key, Served] = {}

    def reserve(self, key: Key) -> None:
        """Answer 503 to every request for ``key`` until :meth:`expect` gives its token.

        Each start of a CR's worker reserves it before reading its Secrets: a CR that asks for
        HTTP SD answers "not yet" rather than "unknown" (404) meanwhile, and a body served
        under an earlier token (or none) is kept but not answered until the new token is known,
        so a token added or a Secret deleted never leaves the targets readable without it.
        """
        current = self._served.get(key)
        if current is None:
            self._served[key] = Served(token=None, reserved=True)
        else:
            self._served[key] = replace(current, reserved=True)

    def expect(self, key: Key, *, token: str | None) -> None:
        """Serve ``key`` (503 until :meth:`serve`); a served body stays, only the token changes."""
        current = self._served.get(key)
        if current is None:
            self._served[key] = Served(token=token)
        else:
            self._served[key] = Served(
                token=token, body=current.body, gzipped=current.gzipped, targets=current.targets
            )

    def serve(self, key: Key, groups: Mapping[str, TargetGroup], *, token: str | None) -> None:
        """Render ``groups`` once; every GET of ``key`` answers these bytes until the next call."""
        body = render_file_sd(groups)
        current = self._served.get(key)
        if current is not None and current.body == body and current.gzipped is not None:
            gzipped = current.gzipped  # unchanged targets: no second compression
        else:
            gzipped = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        self._served[key] = Served(
            token=token, body=body, gzipped=gzipped, targets=count_targets(groups)
        )

    def forget(self, key: Key) -> None:
        """Stop serving ``key``: 404 from now on."""
        self._served.pop(key, None)

    def describe(self) -> list[dict[str, object]]:
        """What ``GET /targets`` lists: each discovery, its path, whether it is ready, targets."""
        return [
            {
                "namespace": key[0],
                "name": key[1],
                "path": path_of(key),
                "ready": served.body is not None and not served.reserved,
                "targets": served.targets,
            }
            for key, served in sorted(self._served.items())
        ]

    def lookup(self, key: Key) -> Served | None:
        return self._served.get(key)


class SnapshotServer:
    """The CLI's sink: each publishable snapshot of one discovery into the store.

    ``log_problems``: log Consul problems as they start and end (when no file writer does).
    """

    def __init__(self, store: TargetStore, *, key: Key = CLI_KEY, log_problems: bool) -> None:
        self.store = store
        self.key = key
        self.served = 0
        self._log_problems = log_problems
        self._problem: str | None = None
        store.expect(key, token=None)

    async def publish(self, snapshot: Snapshot) -> None:
        if self._log_problems:
            self._log_transition(snapshot)
        if not is_publishable(snapshot, published_before=self.served > 0):
            return
        self.store.serve(self.key, snapshot.groups, token=None)
        self.served += 1

    def _log_transition(self, snapshot: Snapshot) -> None:
        problem = snapshot.problem
        described = f"{problem.reason}: {problem}" if problem is not None else None
        if described == self._problem:
            return
        if described is not None:
            logger.warning("%s (previous targets kept)", described)
        else:
            logger.info("recovered from %s", self._problem)
        self._problem = described


# ------------------------------------------------------------------------------------ answers

_STORE = web.AppKey("store", TargetStore)


def _text(status: int, line: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=line + "\n", headers=headers)


def _accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding value accepts gzip (``gzip;q=0`` refuses it)."""
    for item in header.split(","):
        name, *params = item.split(";")
        if name.strip().lower() != "gzip":
            continue
        for param in params:
            field, _, value = param.partition("=")
            if field.strip().lower() == "q":
                return _positive(value.strip())
        return True
    return False


def _positive(quality: str) -> bool:
    try:
        return float(quality) > 0
    except ValueError:
        return False


def _refused(request: web.Request, token: str | None) -> web.Response | None:
    """401 without a bearer token, 403 with another, None when allowed."""
    if token is None:
        return None
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not sent.strip():
        return _text(401, "consul-sd: bearer token required", **{"WWW-Authenticate": "Bearer"})
    # surrogateescape: a header that is not UTF-8 is just another wrong token, never a 500.
    if not hmac.compare_digest(sent.strip().encode("utf-8", "surrogateescape"), token.encode()):
        return _text(403, "consul-sd: wrong bearer token")
    return None


def answer(request: web.Request, store: TargetStore, key: Key) -> web.Response:
    """The HTTP SD answer for ``key``, from the bytes :meth:`TargetStore.serve` rendered."""
    served = store.lookup(key)
    if served is None:
        return _text(404, f"consul-sd: {key[0]}/{key[1]}: not served here")
    if served.reserved:
        return _text(
            503, f"consul-sd: {key[0]}/{key[1]}: not ready (its credentials are not read yet)"
        )
    if (refused := _refused(request, served.token)) is not None:
        return refused
    if served.body is None or served.gzipped is None:
        name = "" if key == CLI_KEY else f" {key[0]}/{key[1]}:"
        return _text(503, f"consul-sd:{name} no complete discovery yet (first sync pending)")
    headers = {"Vary": "Accept-Encoding"}
    if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=served.gzipped, content_type=JSON, headers=headers)
    return web.Response(body=served.body, content_type=JSON, headers=headers)


# ------------------------------------------------------------------------------------- routes


async def _one(request: web.Request) -> web.Response:
    key = (request.match_info["namespace"], request.match_info["name"])
    return answer(request, request.app[_STORE], key)


async def _listing(request: web.Request) -> web.Response:
    body = json.dumps(request.app[_STORE].describe(), indent=1) + "\n"
    return web.Response(body=body.encode(), content_type=JSON)


async def _cli_targets(request: web.Request) -> web.Response:
    return answer(request, request.app[_STORE], CLI_KEY)


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _healthz(_: web.Request) -> web.Response:
    return _text(200, "ok")


def build_app(store: TargetStore, *, app_kind: AppKind) -> web.Application:
    """The operator's app (``/targets/<ns>/<name>`` and a listing) or the CLI's (``/targets``).

    Routes are GET (HEAD included); aiohttp answers other methods 405 with ``Allow``.
    """
    app = web.Application()
    app[_STORE] = store
    if app_kind == "operator":
        app.router.add_get("/targets", _listing)
        app.router.add_get("/targets/{namespace}/{name}", _one)
    else:
        app.router.add_get("/targets", _cli_targets)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


# ------------------------------------------------------------------------------------- server


@dataclass(frozen=True)
class RunningServer:
    """A started app: stop it with :func:`stop_target_server`."""

    runner: web.AppRunner
    host: str
    port: int  # the bound port (the chosen one when asked for 0)


async def start_target_server(
    store: TargetStore,
    *,
    host: str,
    port: int,
    app_kind: AppKind,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> RunningServer:
    """Serve ``store`` on ``host:port`` (0: any free port) until :func:`stop_target_server`.

    ``shutdown_timeout``: how long a stop waits for in-flight requests before it cuts them (a
    stop takes at most about twice this: aiohttp waits, then waits again for the cancellation).
    """
    runner = web.AppRunner(
        build_app(store, app_kind=app_kind),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        # aiohttp's default keeps an idle connection an hour: idle clients would hold sockets
        # the operator also needs for the apiserver and Consul. Prometheus reconnects at will.
        keepalive_timeout=KEEPALIVE_SECONDS,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host=host, port=port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        bound = int(address[1])
        break
    logger.info("serving %s HTTP SD on %s:%d", app_kind, host, bound)
    return RunningServer(runner=runner, host=host, port=bound)


async def stop_target_server(server: RunningServer) -> None:
    """Stop accepting, give in-flight requests the shutdown timeout, then close everything."""
    await server.runner.cleanup()
