"""``ConsulSimulator``: an in-process HTTP server that answers like a Consul 1.16 CE agent.

It serves the read endpoints Prometheus-style service discovery uses (catalog services, health and
catalog per service, health state, catalog nodes, agent self, status leader) with Consul's indexes,
blocking queries, headers, query parameters and error bodies, plus the catalog register/deregister
writes, so tests can drive it exactly as they would drive a real Consul. ``/_sim/*`` endpoints
expose counters and faults. Behaviour chosen where Consul is ambiguous is listed in the package
docstring.

Limits: HTTP/1.1 only, no TLS, one datacenter, no KV/agent-local services/prepared queries/Connect,
ACLs reduced to a single all-powerful token, one event loop (nothing here is thread-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from multidict import MultiMapping

from . import bexpr
from .catalog import Catalog, SimulatedConsulError, dump_json
from .duration import parse_go_duration
from .fleet import fleet_registrations
from .model import Counters, Faults

__all__ = ["VERSION", "ConsulSimulator"]

VERSION = "1.16.4-sim"
DEFAULT_WAIT = 300.0  # Consul's default_query_time
MAX_WAIT = 600.0  # Consul's max_query_time
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"

_TOO_MANY_MESSAGE = (
    b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
)
# What hashicorp/go-connlimit writes on the raw connection before closing it.
_TOO_MANY_RESPONSE = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: " + str(len(_TOO_MANY_MESSAGE)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _TOO_MANY_MESSAGE
)
# Keep a refused socket readable a little while so that the client's request bytes arriving after
# the 429 do not make the kernel answer with an RST that could destroy the unread 429.
_REFUSED_LINGER = 1.0

_EXACT_ROUTES = {
    "/v1/catalog/services": "catalog_services",
    "/v1/catalog/nodes": "catalog_nodes",
    "/v1/agent/self": "agent_self",
    "/v1/status/leader": "status_leader",
    "/v1/catalog/register": "register",
    "/v1/catalog/deregister": "deregister",
}
_PREFIX_ROUTES = (
    ("/v1/health/service/", "health_service"),
    ("/v1/catalog/service/", "catalog_service"),
    ("/v1/health/state/", "health_state"),
)
_WRITES = frozenset({"register", "deregister"})
_TEXT = "text/plain; charset=utf-8"


def _route(path: str) -> tuple[str, str]:
    kind = _EXACT_ROUTES.get(path)
    if kind is not None:
        return kind, ""
    for prefix, kind in _PREFIX_ROUTES:
        if path.startswith(prefix):
            return kind, path[len(prefix) :]
    return "other", ""


def _resolve(fut: asyncio.Future[bool], woken: bool) -> None:
    if not fut.done():
        fut.set_result(woken)


class _Watchers:
    """Parked blocking queries, one future per query, filed under the index scopes it watches.

    A write wakes every future of every scope it moved; each woken query re-reads its index and
    parks again if that index did not pass its ``?index``. A future plus a timer handle per query
    keeps 7000 parked queries cheap.
    """

    def __init__(self) -> None:
        self._by_scope: dict[str, set[asyncio.Future[bool]]] = {}

    def notify(self, scopes: Iterable[str]) -> None:
        for scope in scopes:
            for fut in self._by_scope.pop(scope, ()):
                _resolve(fut, True)

    def wake_all(self) -> None:
        self.notify(list(self._by_scope))

    async def wait(self, scopes: Iterable[str], *, deadline: float) -> bool:
        """Park until a write moves one of ``scopes`` (True) or the loop clock reaches
        ``deadline`` (False)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        scopes = tuple(scopes)
        for scope in scopes:
            self._by_scope.setdefault(scope, set()).add(fut)
        timer = loop.call_at(deadline, _resolve, fut, False)
        try:
            return await fut
        finally:
            timer.cancel()
            for scope in scopes:
                waiters = self._by_scope.get(scope)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._by_scope[scope]


class _ConnServer(web.Server):
    """aiohttp's low-level server, plus connection counting and Consul's per-IP connection limit."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        sim: ConsulSimulator,
    ) -> None:
        super().__init__(handler, access_log=None)
        self._sim = sim
        self._per_ip: dict[str, int] = {}
        self._accepted: dict[RequestHandler, str] = {}

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        limit = self._sim.faults.max_conns_per_client
        if limit is not None and self._per_ip.get(ip, 0) >= limit:
            self._refuse(handler, transport)
            return
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._accepted[handler] = ip
        self._sim.counters.connection_opened()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        ip = self._accepted.pop(handler, None)
        if ip is None:
            return
        left = self._per_ip[ip] - 1
        if left:
            self._per_ip[ip] = left
        else:
            del self._per_ip[ip]
        self._sim.counters.connection_closed()

    def _refuse(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        # Like go-connlimit: answer before reading anything, then close; the request never runs.
        counters = self._sim.counters
        counters.connections_refused_429 += 1
        counters.responded(429)
        handler.close()  # from now on the handler ignores incoming bytes
        transport.write(_TOO_MANY_RESPONSE)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(_REFUSED_LINGER, handler.force_close)


@dataclass(slots=True)
class _Query:
    """Query options every read endpoint shares (Consul's parseDC/parseWait/parseConsistency)."""

    stale: bool
    consistent: bool
    cached: bool
    pretty: bool
    min_index: int
    wait: float
    node_meta: dict[str, str]
    filter: str

    @classmethod
    def parse(cls, request: web.BaseRequest, *, datacenter: str) -> _Query:
        query = request.query
        dc = query.get("dc", "")
        if dc and dc != datacenter:
            raise SimulatedConsulError(500, "No path to datacenter")
        _reject_enterprise(request)
        min_index = 0
        if "index" in query:
            try:
                min_index = int(query["index"])
            except ValueError:
                raise SimulatedConsulError(400, "Invalid index") from None
            if min_index < 0:
                raise SimulatedConsulError(400, "Invalid index")
        wait = DEFAULT_WAIT
        if query.get("wait"):
            try:
                wait = parse_go_duration(query["wait"])
            except ValueError:
                raise SimulatedConsulError(400, "Invalid wait time") from None
            if wait <= 0:
                wait = DEFAULT_WAIT
            wait = min(wait, MAX_WAIT)
        node_meta: dict[str, str] = {}
        for item in query.getall("node-meta", ()):
            key, _, value = item.partition(":")
            node_meta[key] = value
        return cls(
            stale="stale" in query,
            consistent="consistent" in query,
            cached="cached" in query,
            pretty="pretty" in query,
            min_index=min_index,
            wait=wait,
            node_meta=node_meta,
            filter=query.get("filter", ""),
        )


def _reject_enterprise(request: web.BaseRequest) -> None:
    # Consul CE's parseEntMeta: any non-empty namespace or partition is a 400.
    if request.headers.get("X-Consul-Namespace"):
        raise SimulatedConsulError(
            400, 'Invalid header: "X-Consul-Namespace" - Namespaces are a Consul Enterprise feature'
        )
    if request.query.get("ns"):
        raise SimulatedConsulError(
            400, 'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature'
        )
    if request.headers.get("X-Consul-Partition"):
        raise SimulatedConsulError(
            400, 'Invalid header: "X-Consul-Partition" - Partitions are a Consul Enterprise feature'
        )
    if request.query.get("partition"):
        raise SimulatedConsulError(
            400,
            'Invalid query parameter: "partition" - Partitions are a Consul Enterprise feature',
        )


def _bool_param(query: MultiMapping[str], name: str) -> bool:
    # Consul's getBoolQueryParam: present and empty means true, otherwise strconv.ParseBool.
    if name not in query:
        return False
    value = query[name].lower()
    if value in ("", "1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise SimulatedConsulError(400, f"Invalid value for ?{name}")


def _meta_matches(meta: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    have = meta or {}
    return all(have.get(k) == v for k, v in wanted.items())


def _has_tags(tags: Iterable[str] | None, wanted: Iterable[str]) -> bool:
    # Consul matches ?tag= case-insensitively.
    have = {t.lower() for t in tags or ()}
    return all(t.lower() in have for t in wanted)


def _malformed(body: bytes) -> bytes:
    return body[: max(1, len(body) // 2)]


class ConsulSimulator:
    """A fake Consul agent over real HTTP on 127.0.0.1, for tests and benchmarks.

    Mutate it with ``register``/``deregister``/``set_check_status``/``generate`` (or the same
    writes over HTTP), inject failures through ``faults``, observe it through ``counters``.
    """

    def __init__(
        self,
        *,
        datacenter: str = "dc1",
        node_name: str = "sim",
        jitter: bool = True,
        acl_token: str | None = None,
        faults: Faults | None = None,
        seed: int = 0,
    ) -> None:
        self.datacenter = datacenter
        self.node_name = node_name
        self.jitter = jitter
        self.acl_token = acl_token
        """When set, ACLs are on with default deny and this is the only (management) token."""
        self.faults = faults if faults is not None else Faults()
        self.counters = Counters()
        self._rng = random.Random(seed)
        self._watchers = _Watchers()
        self.catalog = Catalog(datacenter=datacenter, on_change=self._watchers.notify)
        """The state store, for read-only introspection (indexes, rows) by tests."""
        self._runner: web.ServerRunner | None = None
        self._host = ""
        self._port = 0
        self._closing = False
        self._backwards_by: int | None = None  # how far ``index_backwards`` lowers indexes
        node_id = str(uuid.UUID(int=random.Random(f"{seed}:{node_name}").getrandbits(128)))
        self._agent_self = dump_json(
            {
                "Config": {
                    "Datacenter": datacenter,
                    "PrimaryDatacenter": datacenter,
                    "NodeName": node_name,
                    "NodeID": node_id,
                    "Revision": "simulated",
                    "Server": True,
                    "Version": VERSION,
                },
                "Member": {
                    "Name": node_name,
                    "Addr": "127.0.0.1",
                    "Port": 8301,
                    "Tags": {
                        "build": VERSION,
                        "dc": datacenter,
                        "id": node_id,
                        "port": "8300",
                        "role": "consul",
                        "vsn": "2",
                    },
                    "Status": 1,
                    "ProtocolMin": 1,
                    "ProtocolMax": 5,
                    "ProtocolCur": 2,
                    "DelegateMin": 2,
                    "DelegateMax": 5,
                    "DelegateCur": 4,
                },
                "Meta": {},
                "Stats": {},
            }
        )

    # --- lifecycle ---

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 picks a free port; read it back from ``port``)."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        self._closing = False
        runner = web.ServerRunner(
            _ConnServer(self._handle, sim=self), handle_signals=False, shutdown_timeout=2.0
        )
        await runner.setup()
        try:
            # A deep backlog: benchmarks open hundreds of connections at once.
            site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Answer parked blocking queries at once, close every connection, stop listening."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        self._watchers.wake_all()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def address(self) -> str:
        """``host:port``, as Prometheus's consul_sd ``server`` field wants it."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    # --- writes (the same as PUT /v1/catalog/register and /deregister) ---

    def register(self, body: Mapping[str, Any]) -> int:
        """Apply a catalog register body; returns its raft index. Raises SimulatedConsulError."""
        return self.catalog.register(body)

    def deregister(self, body: Mapping[str, Any]) -> int:
        """Apply a catalog deregister body; returns its raft index. Raises SimulatedConsulError."""
        return self.catalog.deregister(body)

    def set_check_status(self, *, node: str, check_id: str, status: str) -> int:
        """Flip one check to passing/warning/critical; returns the raft index of the write."""
        return self.catalog.set_check_status(node=node, check_id=check_id, status=status)

    def generate(self, *, services: int, instances: int, nodes: int, seed: int = 1) -> None:
        """Register a deterministic fleet (see ``fleet.fleet_registrations``)."""
        for body in fleet_registrations(
            services=services, instances=instances, nodes=nodes, seed=seed
        ):
            self.catalog.register(body)

    # --- HTTP ---

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await self._handle_control(request)
        kind, arg = _route(request.path)
        self.counters.request_started(kind)
        try:
            return await self._handle_consul(request, kind=kind, arg=arg)
        finally:
            self.counters.request_finished()

    async def _handle_consul(
        self, request: web.BaseRequest, *, kind: str, arg: str
    ) -> web.StreamResponse:
        if kind == "other":
            return self._text(404, "404 page not found\n")
        allowed = ("PUT",) if kind in _WRITES else ("GET", "HEAD")
        if request.method not in allowed:
            return self._text(405, f"method {request.method} not allowed")
        faults = self.faults
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        if faults.reset_rate > 0 and self._rng.random() < faults.reset_rate:
            return self._reset(request)
        if kind in ("health_service", "catalog_service") and arg in faults.reset_services:
            return self._reset(request)
        if faults.error_rate > 0 and self._rng.random() < faults.error_rate:
            return self._text(faults.error_status, "simulated error")
        try:
            if kind in _WRITES:
                return await self._write(request, kind)
            return await self._read(request, kind=kind, arg=arg)
        except SimulatedConsulError as exc:
            return self._text(exc.status, exc.message)

    def _reset(self, request: web.BaseRequest) -> web.StreamResponse:
        self.counters.resets += 1
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0 turns the close into an RST, as a crashed or cut-off server would.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # aiohttp fails to write this to the aborted transport and drops it quietly.
        return web.Response(status=204)

    def _text(self, status: int, message: str) -> web.Response:
        self.counters.responded(status)
        return web.Response(status=status, body=message.encode(), headers={"Content-Type": _TEXT})

    def _acl_anonymous(self, request: web.BaseRequest) -> bool:
        """True when results must be filtered for the anonymous token; raises for a bad token."""
        if self.acl_token is None:
            return False
        token = request.headers.get("X-Consul-Token", "")
        if not token:
            auth = request.headers.get("Authorization", "")
            if auth[:7].lower() == "bearer ":
                token = auth[7:].strip()
        if not token:
            token = request.query.get("token", "")
        if not token:
            return True
        if token != self.acl_token:
            raise SimulatedConsulError(403, "ACL not found")
        return False

    def _visible(self, index: int) -> int:
        # Consul never reports an index below 1.
        if not self.faults.index_backwards:
            self._backwards_by = None
            return max(1, index)
        if self._backwards_by is None:
            # One drop per episode, as a restore makes: halving each index instead would let a
            # write that moves an index by one leave its lowered value unchanged, and a client
            # that reset its index would then miss the change.
            self._backwards_by = (self.catalog.raft_index + 1) // 2
        return max(1, index - self._backwards_by)

    async def _block(
        self,
        q: _Query,
        *,
        index_of: Callable[[], int],
        scopes_of: Callable[[], Iterable[str]],
    ) -> int:
        """Consul's blockingQuery: return once the index passes ``?index`` or ``wait`` elapses.

        The index is read again only when a watched scope fires, as Consul re-runs the query only
        then: a wait that times out answers the index of the last run, even if a write no scope
        watches (a passing check beside a non-empty /v1/health/state/critical) moved it since.
        """
        index = self._visible(index_of())
        if q.min_index == 0 or index > q.min_index:
            return index
        wait = q.wait
        if self.jitter:
            wait += self._rng.uniform(0, wait / 16)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not self._closing and loop.time() < deadline:
            if not await self._watchers.wait(scopes_of(), deadline=deadline):
                break
            index = self._visible(index_of())
            if index > q.min_index:
                break
        return index

    async def _read(self, request: web.BaseRequest, *, kind: str, arg: str) -> web.StreamResponse:
        q = _Query.parse(request, datacenter=self.datacenter)
        if kind == "status_leader":
            # Status endpoints skip ACLs entirely; without a leader Consul answers "".
            body = b'""' if self.faults.no_leader else b'"127.0.0.1:8300"'
            return await self._send(request, body=body)
        anonymous = self._acl_anonymous(request)
        if kind == "agent_self":
            if anonymous:
                raise SimulatedConsulError(
                    403, self._permission_denied("agent:read", self.node_name)
                )
            return await self._send(request, body=self._agent_self, q=q)
        if self.faults.no_leader and not q.stale:
            raise SimulatedConsulError(500, "No cluster leader")
        if kind == "health_service":
            return await self._health_service(request, q=q, name=arg, anonymous=anonymous)
        if kind == "catalog_service":
            return await self._catalog_service(request, q=q, name=arg, anonymous=anonymous)
        if kind == "catalog_services":
            return await self._catalog_services(request, q=q, anonymous=anonymous)
        if kind == "health_state":
            return await self._health_state(request, q=q, state=arg, anonymous=anonymous)
        return await self._catalog_nodes(request, q=q, anonymous=anonymous)

    @staticmethod
    def _permission_denied(permission: str, resource: str) -> str:
        return (
            f"Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR}' "
            f"lacks permission '{permission}' on \"{resource}\""
        )

    @staticmethod
    def _compile(expression: str, schema: bexpr.Schema) -> bexpr.Predicate | None:
        if not expression:
            return None
        try:
            return bexpr.compile_filter(expression, schema)
        except bexpr.FilterError as exc:
            # Consul 1.16 answers a filter it cannot compile with a 500, not a 400.
            raise SimulatedConsulError(500, str(exc)) from None

    def _service_faults(self, name: str) -> None:
        if not name:
            raise SimulatedConsulError(400, "Missing service name")
        if name in self.faults.fail_services:
            raise SimulatedConsulError(self.faults.error_status, "simulated error")

    async def _health_service(
        self, request: web.BaseRequest, *, q: _Query, name: str, anonymous: bool
    ) -> web.StreamResponse:
        passing = _bool_param(request.query, "passing")
        tags = request.query.getall("tag", [])
        predicate = self._compile(q.filter, bexpr.HEALTH_SERVICE_ENTRY)
        self._service_faults(name)
        catalog = self.catalog
        index = await self._block(
            q,
            index_of=lambda: catalog.index_for_service(name, checks=True),
            scopes_of=lambda: catalog.scopes_for_service(name),
        )
        filtered = False
        if name in self.faults.malformed_services:
            body = _malformed(catalog.health_body(name))
        elif anonymous:
            filtered = bool(catalog.health_entries(name))
            body = b"[]"
        elif not (passing or tags or q.node_meta or predicate):
            body = catalog.health_body(name)
        else:
            body = dump_json(
                [
                    entry
                    for entry in catalog.health_entries(name)
                    if _has_tags(entry["Service"]["Tags"], tags)
                    and _meta_matches(entry["Node"]["Meta"], q.node_meta)
                    and (not passing or all(c["Status"] == "passing" for c in entry["Checks"]))
                    and (predicate is None or predicate(entry))
                ]
            )
        return await self._send(request, body=body, q=q, index=index, filtered=filtered, cache=True)

    async def _catalog_service(
        self, request: web.BaseRequest, *, q: _Query, name: str, anonymous: bool
    ) -> web.StreamResponse:
        tags = request.query.getall("tag", [])
        predicate = self._compile(q.filter, bexpr.SERVICE_NODE)
        self._service_faults(name)
        catalog = self.catalog
        index = await self._block(
            q,
            index_of=lambda: catalog.index_for_service(name, checks=False),
            scopes_of=lambda: catalog.scopes_for_service(name),
        )
        filtered = False
        if name in self.faults.malformed_services:
            body = _malformed(catalog.catalog_body(name))
        elif anonymous:
            filtered = bool(catalog.catalog_rows(name))
            body = b"[]"
        elif not (tags or q.node_meta or predicate):
            body = catalog.catalog_body(name)
        else:
            body = dump_json(
                [
                    row
                    for row in catalog.catalog_rows(name)
                    if _has_tags(row["ServiceTags"], tags)
                    and _meta_matches(row["NodeMeta"], q.node_meta)
                    and (predicate is None or predicate(row))
                ]
            )
        return await self._send(request, body=body, q=q, index=index, filtered=filtered, cache=True)

    async def _catalog_services(
        self, request: web.BaseRequest, *, q: _Query, anonymous: bool
    ) -> web.StreamResponse:
        predicate = self._compile(q.filter, bexpr.SERVICE_NODE)
        catalog = self.catalog
        if q.node_meta:
            # Consul's ServicesByNodeMeta: the services and nodes tables' index, and narrower
            # watches (see Catalog.scopes_for_node_meta).
            tables = catalog.table_index
            index = await self._block(
                q,
                index_of=lambda: max(tables["services"], tables["nodes"]),
                scopes_of=lambda: catalog.scopes_for_node_meta(q.node_meta),
            )
        else:
            index = await self._block(
                q, index_of=lambda: catalog.table_index["services"], scopes_of=lambda: ("services",)
            )
        filtered = False
        if anonymous:
            filtered = bool(catalog.by_name)
            body = b"{}"
        elif not (q.node_meta or predicate):
            body = catalog.services_body()
        else:
            # Consul filters the ServiceNode rows and lists the services that keep a row, with
            # the tags of the rows kept.
            kept: dict[str, set[str]] = {}
            for name in sorted(catalog.service_names()):
                for row in catalog.catalog_rows(name):
                    if _meta_matches(row["NodeMeta"], q.node_meta) and (
                        predicate is None or predicate(row)
                    ):
                        kept.setdefault(name, set()).update(row["ServiceTags"])
            body = dump_json({name: sorted(tags) for name, tags in kept.items()})
        return await self._send(request, body=body, q=q, index=index, filtered=filtered, cache=True)

    async def _health_state(
        self, request: web.BaseRequest, *, q: _Query, state: str, anonymous: bool
    ) -> web.StreamResponse:
        if not state:
            raise SimulatedConsulError(400, "Missing check state")
        predicate = self._compile(q.filter, bexpr.HEALTH_CHECK)
        catalog = self.catalog
        index = await self._block(
            q,
            index_of=lambda: catalog.table_index["checks"],
            scopes_of=lambda: catalog.scopes_for_state(state),
        )
        rows = catalog.check_rows(state)
        filtered = False
        if anonymous:
            filtered = bool(rows)
            rows = []
        rows = [
            row
            for row in rows
            if _meta_matches(catalog.nodes[row["Node"]].meta, q.node_meta)
            and (predicate is None or predicate(row))
        ]
        return await self._send(request, body=dump_json(rows), q=q, index=index, filtered=filtered)

    async def _catalog_nodes(
        self, request: web.BaseRequest, *, q: _Query, anonymous: bool
    ) -> web.StreamResponse:
        predicate = self._compile(q.filter, bexpr.CATALOG_NODE)
        catalog = self.catalog
        index = await self._block(
            q, index_of=lambda: catalog.table_index["nodes"], scopes_of=lambda: ("nodes",)
        )
        rows = catalog.node_rows()
        filtered = False
        if anonymous:
            filtered = bool(rows)
            rows = []
        rows = [
            row
            for row in rows
            if _meta_matches(row["Meta"], q.node_meta) and (predicate is None or predicate(row))
        ]
        return await self._send(request, body=dump_json(rows), q=q, index=index, filtered=filtered)

    async def _write(self, request: web.BaseRequest, kind: str) -> web.StreamResponse:
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError as exc:
            raise SimulatedConsulError(400, f"Request decode failed: {exc}") from None
        if not isinstance(body, dict):
            raise SimulatedConsulError(400, "Request decode failed: expected a JSON object")
        dc = request.query.get("dc", "")
        if dc and dc != self.datacenter:
            raise SimulatedConsulError(500, "No path to datacenter")
        _reject_enterprise(request)
        if self.faults.no_leader:
            raise SimulatedConsulError(500, "No cluster leader")
        if self._acl_anonymous(request):
            node = body.get("Node")
            raise SimulatedConsulError(
                403, self._permission_denied("node:write", node if isinstance(node, str) else "")
            )
        if kind == "register":
            self.catalog.register(body)
        else:
            self.catalog.deregister(body)
        return await self._send(request, body=b"true")

    async def _send(
        self,
        request: web.BaseRequest,
        *,
        body: bytes,
        q: _Query | None = None,
        index: int | None = None,
        filtered: bool = False,
        cache: bool = False,
    ) -> web.StreamResponse:
        headers = {"Content-Type": "application/json"}
        if index is not None and q is not None:
            headers["X-Consul-Index"] = str(index)
            headers["X-Consul-Knownleader"] = "false" if self.faults.no_leader else "true"
            headers["X-Consul-Lastcontact"] = "0"
            headers["X-Consul-Effective-Consistency"] = (
                "stale" if q.stale else "consistent" if q.consistent else "leader"
            )
            if cache and q.cached:
                headers["X-Cache"] = "MISS"
        if filtered:
            # Go canonicalises X-Consul-Results-Filtered-By-ACLs to this spelling on the wire.
            headers["X-Consul-Results-Filtered-By-Acls"] = "true"
        if q is not None and q.pretty and body[:1] in (b"[", b"{"):
            with contextlib.suppress(ValueError):
                body = json.dumps(json.loads(body), indent=4).encode()
        self.counters.responded(200)
        slow = self.faults.slow_body
        if slow <= 0 or not body:
            return web.Response(body=body, headers=headers)
        return await self._dribble(request, body=body, headers=headers, seconds=slow)

    async def _dribble(
        self, request: web.BaseRequest, *, body: bytes, headers: dict[str, str], seconds: float
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        chunks = min(10, len(body))
        step = math.ceil(len(body) / chunks)
        try:
            for start in range(0, len(body), step):
                await response.write(body[start : start + step])
                await asyncio.sleep(seconds / chunks)
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up on the slow body; nothing left to do
        return response

    async def _handle_control(self, request: web.BaseRequest) -> web.StreamResponse:
        path, method = request.path, request.method
        try:
            if path == "/_sim/counters" and method == "GET":
                return _json(self.counters.as_dict())
            if path == "/_sim/counters/reset" and method == "POST":
                self.counters.reset()
                return _json(self.counters.as_dict())
            if path == "/_sim/faults" and method == "GET":
                return _json(self.faults.as_dict())
            if path == "/_sim/faults" and method == "PUT":
                self.faults.update(await _read_object(request))
                return _json(self.faults.as_dict())
            if path == "/_sim/check" and method == "PUT":
                data = await _read_object(request)
                index = self.set_check_status(
                    node=_field(data, "Node", "node"),
                    check_id=_field(data, "CheckID", "check_id"),
                    status=_field(data, "Status", "status"),
                )
                return _json({"Index": index})
        except SimulatedConsulError as exc:
            return web.Response(status=exc.status, text=exc.message)
        except ValueError as exc:
            return web.Response(status=400, text=str(exc))
        return web.Response(status=404, text="404 page not found\n")


def _json(value: Any) -> web.Response:
    return web.Response(body=dump_json(value), content_type="application/json")


async def _read_object(request: web.BaseRequest) -> dict[str, Any]:
    data = json.loads(await request.read() or b"null")
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _field(data: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = data.get(name)
        if isinstance(value, str):
            return value
    raise ValueError(f"missing string field {names[0]}")
