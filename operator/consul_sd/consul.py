"""Consul HTTP client for discovery: the catalog list and per-service health entries.

One :class:`ConsulClient` per worker owns one aiohttp session whose connector caps open
connections, so a worker can never open more than ``max_connections`` sockets to Consul; an
adaptive limit below that cap backs off when Consul answers 429 (see ``limiter``). It sends
the parameters Prometheus's consul_sd sends (dc, ns, partition, stale, node-meta, tag, filter) and
the token only in the ``X-Consul-Token`` header, and never follows a redirect, so credentials
reach no other origin. Credentials are checked before any request (:func:`validate_token`,
:func:`validate_basic_auth`) with messages that name the field, never the value. Blocking
queries follow Consul's client rules: the index is reset when it goes backwards and never sent
below 1, and the request timeout is sized to ``wait + wait/16`` (Consul's jitter) plus a margin.
Transient failures (connection errors, 429, 5xx other than a permanent answer) are retried with
exponential backoff and jitter; every other failure raises a :class:`ConsulError` whose
``reason`` is a CR status reason.

Limits: only the read endpoints discovery needs; an answer is read in chunks up to
:data:`MAX_ANSWER_BYTES` (a server streaming gigabytes costs that much memory at most), then
parsed strictly into :class:`Instance` records; anything unexpected (too large, not JSON, nested
too deeply, a wrong shape, an error inside a parser) is a :class:`ConsulBadResponse` naming the
endpoint, never a crash deeper in the engine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from consul_sd.backoff import backoff_delay
from consul_sd.limiter import AdaptiveLimit

HEALTH_PASSING: Final = "passing"
HEALTH_WARNING: Final = "warning"
HEALTH_CRITICAL: Final = "critical"
HEALTH_MAINTENANCE: Final = "maintenance"
NODE_MAINTENANCE_CHECK: Final = "_node_maintenance"
SERVICE_MAINTENANCE_PREFIX: Final = "_service_maintenance:"

# Added to a blocking request's timeout on top of wait + wait/16: time for Consul to build and
# send the answer after its wait expires.
_BLOCKING_MARGIN = 10.0
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The largest answer read from Consul. 7000 services answer /v1/catalog/services in about 1 MiB
# and a 1000-instance service /v1/health/service in a few MiB; 64 MiB is far above any real
# answer, and bounds what a misdirected server (a proxy streaming a file) costs in memory.
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
# Only the start of an error answer is shown in a message, so only that much is read.
_ERROR_BODY_BYTES = 4096
_T = TypeVar("_T")


class ConsulError(Exception):
    """A Consul call that failed; ``reason`` is the CR status reason for it."""

    reason = "ConsulError"
    retryable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConsulUnreachable(ConsulError):
    reason = "ConsulUnreachable"
    retryable = True


class ConsulRateLimited(ConsulError):
    reason = "ConsulRateLimited"
    retryable = True


class ConsulServerError(ConsulError):
    reason = "ConsulServerError"
    retryable = True


class ConsulACLDenied(ConsulError):
    reason = "ACLDenied"


class ConsulDatacenterUnknown(ConsulError):
    reason = "DatacenterUnknown"


class ConsulBadRequest(ConsulError):
    reason = "ConsulBadRequest"


class ConsulBadResponse(ConsulError):
    reason = "MalformedConsulResponse"


class ConsulCredentialError(ValueError):
    """A token or basic-auth credential that cannot be sent; the message never holds the value."""


def validate_token(token: str) -> None:
    """Check an ACL token before it becomes the ``X-Consul-Token`` header.

    After stripping surrounding whitespace, the token must be non-empty visible ASCII (Consul
    tokens are UUIDs; a CR/LF would split the header). Positions count from 1 in the value as
    given, so a user can find the character without the message showing it.
    """
    stripped = token.strip()
    if not stripped:
        raise ConsulCredentialError("token is empty")
    offset = len(token) - len(token.lstrip())
    for i, char in enumerate(stripped):
        if not "!" <= char <= "~":
            raise ConsulCredentialError(
                f"token has a character outside visible ASCII (position {offset + i + 1})"
            )


def validate_basic_auth(username: str, password: str) -> None:
    """Check basic-auth credentials: Latin-1 without control characters, no ':' in the username.

    HTTP encodes ``username:password`` in Latin-1 (as aiohttp does), so anything else cannot be
    sent; checking here keeps encoding errors, whose arguments hold both values, from arising.
    """
    for field_name, value in (("username", username), ("password", password)):
        for i, char in enumerate(value):
            problem = _credential_char_problem(char)
            if problem is None and field_name == "username" and char == ":":
                problem = "a ':'"
            if problem is not None:
                raise ConsulCredentialError(
                    f"basic-auth {field_name} has {problem} (position {i + 1})"
                )


def _credential_char_problem(char: str) -> str | None:
    code = ord(char)
    if code > 0xFF:
        return "a character outside Latin-1"
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return "a control character"
    return None


@dataclass(frozen=True, slots=True)
class Check:
    check_id: str
    status: str


@dataclass(frozen=True, slots=True)
class CheckState:
    """A row of /v1/health/state: one check of one node (of one service, or the node's own)."""

    node: str
    check_id: str
    service_name: str
    status: str


@dataclass(frozen=True, slots=True)
class Instance:
    """One entry of /v1/health/service/NAME: a service instance on a node, with its checks."""

    node: str
    node_address: str
    node_meta: Mapping[str, str]
    node_tagged_addresses: Mapping[str, str]
    service_id: str
    service_address: str
    service_port: int
    tags: tuple[str, ...]
    service_meta: Mapping[str, str]
    namespace: str
    partition: str
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class ConsulEndpoint:
    """How to reach Consul. Credentials are excluded from repr so they never reach a log."""

    server: str
    scheme: str = "http"
    path_prefix: str = ""
    datacenter: str = ""
    namespace: str = ""
    partition: str = ""
    allow_stale: bool = True
    token: str | None = field(default=None, repr=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    server_name: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.server}{self.path_prefix.rstrip('/')}"


@dataclass(frozen=True)
class RetryPolicy:
    """Retries inside one call; the loops above add their own backoff between calls."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 10.0


@dataclass
class RequestStats:
    """Requests sent, by (endpoint, outcome); workers read and reset it per cycle."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def total(self) -> int:
        return sum(self.counts.values())

    def take(self) -> Counter[tuple[str, str]]:
        taken, self.counts = self.counts, Counter()
        return taken


class RequestObserver(Protocol):
    """Called after every request, e.g. to feed metrics."""

    def __call__(self, *, endpoint: str, outcome: str, seconds: float) -> None: ...


def next_index(*, previous: int, answered: int) -> int:
    """The index for the next blocking query, by Consul's client rules.

    An index that went backwards (snapshot restore, a stale read from a lagging server) resets to
    0 so the next query is a plain read; an index below 1 is treated as 1 so a query never spins.
    """
    answered = max(answered, 1)
    if answered < previous:
        return 0
    return answered


def _credential_headers(endpoint: ConsulEndpoint) -> dict[str, str]:
    """Request headers with the endpoint's credentials, checked (:class:`ConsulCredentialError`)."""
    headers = {"Accept": "application/json"}
    if endpoint.token:
        validate_token(endpoint.token)
        headers["X-Consul-Token"] = endpoint.token.strip()
    if endpoint.basic_auth:
        username, password = endpoint.basic_auth
        validate_basic_auth(username, password)
        # Built here rather than by aiohttp.BasicAuth (deprecated): Latin-1, as RFC 7617 allows.
        pair = f"{username}:{password}".encode("latin-1")
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return headers


def _credential_texts(endpoint: ConsulEndpoint, headers: Mapping[str, str]) -> list[str]:
    """Every form in which the endpoint's credentials could come back in an answer."""
    texts = [headers.get("X-Consul-Token", ""), headers.get("Authorization", "")]
    texts.append(headers.get("Authorization", "").removeprefix("Basic "))
    if endpoint.basic_auth:
        texts.extend(endpoint.basic_auth)
    return sorted({t for t in texts if len(t) >= 4}, key=len, reverse=True)


class ConsulClient:
    """Async Consul reads with a connection cap, retries and typed answers."""

    def __init__(
        self,
        *,
        endpoint: ConsulEndpoint,
        max_connections: int,
        retry: RetryPolicy | None = None,
        request_timeout: float = 30.0,
        observer: RequestObserver | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self.max_connections = max_connections
        self.stats = RequestStats()
        self._retry = retry or RetryPolicy()
        self._request_timeout = request_timeout
        self._observer = observer
        self._rng = random.Random()
        self.concurrency = AdaptiveLimit(max_connections)
        self._max_answer_bytes = max_answer_bytes
        self._session: aiohttp.ClientSession | None = None
        self._headers = _credential_headers(endpoint)
        # What an error text must never carry: a server or proxy may echo the request's
        # credentials in its answer, which becomes status, an event and a log line.
        self._secrets = _credential_texts(endpoint, self._headers)

    async def __aenter__(self) -> ConsulClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=self.max_connections,
                ssl=self.endpoint.ssl_context if self.endpoint.ssl_context is not None else True,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
            # aiohttp silently sends a request again, with the same URL, when a connection drops
            # before the answer. For a long-poll that is the old index sent to a Consul that
            # may have restarted without its data: every retry goes through _get instead, which
            # turns it into a plain read. (No public switch; the attribute is aiohttp's own.)
            self._session._retry_connection = False
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _common_params(self) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        ep = self.endpoint
        if ep.datacenter:
            params.append(("dc", ep.datacenter))
        if ep.namespace:
            params.append(("ns", ep.namespace))
        if ep.partition:
            params.append(("partition", ep.partition))
        return params

    def _query_params(
        self,
        *,
        index: int,
        wait: float | None,
        node_meta: Mapping[str, str],
        filter_expr: str,
    ) -> list[tuple[str, str]]:
        params = self._common_params()
        if self.endpoint.allow_stale:
            params.append(("stale", ""))
        if index > 0:
            params.append(("index", str(index)))
            if wait is not None:
                # The Go client sends the wait in milliseconds; Consul parses Go durations.
                params.append(("wait", f"{round(wait * 1000)}ms"))
        params.extend(("node-meta", f"{k}:{v}") for k, v in sorted(node_meta.items()))
        if filter_expr:
            params.append(("filter", filter_expr))
        return params

    async def agent_datacenter(self) -> str:
        """The datacenter of the agent answering us (Prometheus's default for ``dc``)."""
        data, _ = await self._get(endpoint="agent_self", path="/v1/agent/self", params=[])
        try:
            dc = data["Config"]["Datacenter"]
        except (KeyError, TypeError):
            raise ConsulBadResponse("/v1/agent/self: no Config.Datacenter in the answer") from None
        if not isinstance(dc, str):
            raise ConsulBadResponse("/v1/agent/self: Config.Datacenter is not a string")
        return dc

    async def list_services(
        self,
        *,
        index: int = 0,
        wait: float | None = None,
        node_meta: Mapping[str, str] | None = None,
        filter_expr: str = "",
        confirm_empty: bool = True,
    ) -> tuple[dict[str, tuple[str, ...]], int]:
        """Service names with their tags from /v1/catalog/services, and the answer's index.

        An empty list is confirmed (``confirm_empty``): if ACLs hid every service, even
        without the filter and node-meta, the token may read none, and that is a denial, not an
        empty fleet that would clear every target.
        """
        params = self._query_params(
            index=index, wait=wait, node_meta=node_meta or {}, filter_expr=filter_expr
        )
        data, answered = await self._get(
            endpoint="catalog_services",
            path="/v1/catalog/services",
            params=params,
            wait=wait,
            denied_if_empty=confirm_empty and not filter_expr and not node_meta,
        )
        services = _parsed(parse_service_list, data, where="/v1/catalog/services")
        if not services and confirm_empty and (filter_expr or node_meta):
            await self._get(
                endpoint="catalog_services",
                path="/v1/catalog/services",
                params=self._query_params(index=0, wait=None, node_meta={}, filter_expr=""),
                denied_if_empty=True,
            )
        return services, answered

    async def table_index(self, *, endpoint: str, path: str, filter_expr: str) -> int:
        """The index an endpoint reports, with a filter that keeps its body empty.

        /v1/health/state/any reports the checks table's index and /v1/catalog/nodes the nodes
        table's, whatever the filter keeps, so a filter matching nothing reads a table's index
        for a few bytes.
        """
        params = self._query_params(index=0, wait=None, node_meta={}, filter_expr=filter_expr)
        _, answered = await self._get(endpoint=endpoint, path=path, params=params)
        return answered

    async def list_checks(self, *, filter_expr: str) -> tuple[frozenset[CheckState], int]:
        """The checks /v1/health/state/any keeps under ``filter_expr``, and the checks index."""
        params = self._query_params(index=0, wait=None, node_meta={}, filter_expr=filter_expr)
        data, answered = await self._get(
            endpoint="health_state", path="/v1/health/state/any", params=params
        )
        return _parsed(parse_check_states, data, where="/v1/health/state/any"), answered

    async def list_nodes(self) -> tuple[list[tuple[str, int]], int]:
        """Every node of /v1/catalog/nodes with its ModifyIndex, and the nodes index."""
        params = self._query_params(index=0, wait=None, node_meta={}, filter_expr="")
        data, answered = await self._get(
            endpoint="catalog_nodes", path="/v1/catalog/nodes", params=params
        )
        return _parsed(parse_node_indexes, data, where="/v1/catalog/nodes"), answered

    async def service_instances(
        self,
        name: str,
        *,
        tags: Sequence[str] = (),
        index: int = 0,
        wait: float | None = None,
        node_meta: Mapping[str, str] | None = None,
        filter_expr: str = "",
        unchanged_index: int | None = None,
    ) -> tuple[list[Instance] | None, int]:
        """Instances of ``name`` from /v1/health/service in every health state, and the index.

        With ``unchanged_index``, an answer carrying that same index is not decoded and
        ``None`` is returned instead: the caller already holds those instances.
        """
        params = self._query_params(
            index=index, wait=wait, node_meta=node_meta or {}, filter_expr=filter_expr
        )
        params.extend(("tag", tag) for tag in tags)
        path = f"/v1/health/service/{_quote_segment(name)}"
        data, answered = await self._get(
            endpoint="health_service",
            path=path,
            params=params,
            wait=wait,
            unchanged_index=unchanged_index,
        )
        if data is _UNCHANGED:
            return None, answered
        where = f"/v1/health/service/{name}"
        entries = _parsed(lambda d: parse_health_entries(d, where=where), data, where=where)
        return entries, answered

    async def _get(
        self,
        *,
        endpoint: str,
        path: str,
        params: list[tuple[str, str]],
        wait: float | None = None,
        unchanged_index: int | None = None,
        denied_if_empty: bool = False,
    ) -> tuple[Any, int]:
        session = self._open_session()
        url, timeout = self._request_url(path=path, params=params, wait=wait)
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                async with self.concurrency:
                    result = await self._get_once(
                        session=session,
                        url=url,
                        path=path,
                        limits=timeout,
                        unchanged_index=unchanged_index,
                        denied_if_empty=denied_if_empty,
                    )
            except ConsulError as error:
                if isinstance(error, ConsulRateLimited):
                    self.concurrency.record_rejection()
                self._record(endpoint=endpoint, outcome=_outcome(error), started=started)
                attempt += 1
                if not error.retryable or attempt >= self._retry.attempts:
                    raise
                if isinstance(error, ConsulUnreachable) and any(k == "index" for k, _ in params):
                    # Consul may have restarted without its data and replay the same index with
                    # other content: the retry is a plain read, fully decoded.
                    params = [(k, v) for k, v in params if k not in ("index", "wait")]
                    url, timeout = self._request_url(path=path, params=params, wait=None)
                    unchanged_index = None
                await asyncio.sleep(
                    backoff_delay(
                        attempt - 1,
                        base=self._retry.base_delay,
                        cap=self._retry.max_delay,
                        rng=self._rng,
                    )
                )
                continue
            self.concurrency.record_success()
            self._record(endpoint=endpoint, outcome="ok", started=started)
            return result

    def _request_url(
        self, *, path: str, params: list[tuple[str, str]], wait: float | None
    ) -> tuple[URL, aiohttp.ClientTimeout]:
        """The pre-encoded URL and the timeout of one request (a long-poll gets its wait)."""
        # One pre-encoded URL: aiohttp's per-request params merging and re-quoting cost more
        # than the rest of a small request together.
        query = "?" + urlencode(params, quote_via=quote) if params else ""
        url = URL(self.endpoint.base_url + path + query, encoded=True)
        if wait is not None and any(key == "index" for key, _ in params):
            return url, aiohttp.ClientTimeout(total=wait + wait / 16 + _BLOCKING_MARGIN)
        return url, aiohttp.ClientTimeout(total=self._request_timeout)

    def _record(self, *, endpoint: str, outcome: str, started: float) -> None:
        self.stats.counts[(endpoint, outcome)] += 1
        if self._observer is not None:
            self._observer(endpoint=endpoint, outcome=outcome, seconds=time.monotonic() - started)

    async def _get_once(
        self,
        *,
        session: aiohttp.ClientSession,
        url: URL,
        path: str,
        limits: aiohttp.ClientTimeout,
        unchanged_index: int | None,
        denied_if_empty: bool = False,
    ) -> tuple[Any, int]:
        try:
            async with session.get(
                url,
                timeout=limits,
                server_hostname=self.endpoint.server_name or None,
                # Never followed: the token and basic auth would go to whatever origin a proxy
                # names, plain HTTP included.
                allow_redirects=False,
            ) as response:
                status = response.status
                index_header = response.headers.get("X-Consul-Index")
                if status in _REDIRECT_STATUSES:
                    raise _redirect_error(response, url=url, path=path)
                if status != 200:
                    head, _ = await _read_at_most(response, _ERROR_BODY_BYTES)
                    raise _error_for_status(
                        status=status, body=self._scrub(head), path=path, url=url
                    )
                body = await self._read_answer(response, path=path)
                filtered = response.headers.get(_FILTERED_BY_ACLS, "").lower() == "true"
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise ConsulUnreachable(f"{path}: {_describe_connection_error(exc)}") from None
        except TimeoutError:
            raise ConsulUnreachable(f"{path}: timed out after {limits.total:g}s") from None
        index = _parse_index(index_header)
        if unchanged_index is not None and index == unchanged_index:
            return _UNCHANGED, index
        data = _decode_json(body, path=path)
        if denied_if_empty and filtered and not data:
            raise ConsulACLDenied(
                f"{path}: the token may read no service (Consul filtered every one by ACLs): "
                'grant service_prefix "" { policy = "read" } (see the README\'s ACL policy)',
                status=status,
            )
        return data, index

    def _scrub(self, body: bytes | bytearray) -> bytes:
        """``body`` with the client's own credentials replaced by ``***``."""
        text = bytes(body)
        for secret in self._secrets:
            text = text.replace(secret.encode("utf-8", "replace"), b"***")
        return text

    async def _read_answer(self, response: aiohttp.ClientResponse, *, path: str) -> bytearray:
        """The body, or :class:`ConsulBadResponse` once it passes the answer size cap."""
        limit = self._max_answer_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise _too_large(path=path, limit=limit)
        body, more = await _read_at_most(response, limit)
        if more:
            raise _too_large(path=path, limit=limit)
        return body

    async def catalog_datacenter(self) -> str:
        """The ``Datacenter`` the rows of /v1/catalog/nodes carry; "" when the token sees none.

        For a token without ``agent:read`` (/v1/agent/self denied): every node of the catalog
        this agent answers for carries that agent's datacenter, the value Prometheus takes from
        /v1/agent/self, so the ``__meta_consul_dc`` labels come out the same. Needs node:read.
        """
        params = self._query_params(index=0, wait=None, node_meta={}, filter_expr="")
        data, _ = await self._get(endpoint="catalog_nodes", path="/v1/catalog/nodes", params=params)
        if data is None:
            return ""
        if not isinstance(data, list):
            raise ConsulBadResponse(
                f"/v1/catalog/nodes: expected a list, got {type(data).__name__}"
            )
        for row in data:
            datacenter = row.get("Datacenter") if isinstance(row, dict) else None
            if not isinstance(datacenter, str) or not datacenter:
                raise ConsulBadResponse("/v1/catalog/nodes: a node without a Datacenter string")
            return datacenter
        return ""


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> tuple[bytearray, bool]:
    """Up to ``limit`` bytes of the (decompressed) body, and whether the body had more.

    Chunks as they arrive, so memory stays near ``limit`` whatever the server sends; leaving
    the rest unread makes aiohttp close the connection instead of reusing it.
    """
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            del body[limit:]
            return body, True
    return body, False


def _too_large(*, path: str, limit: int) -> ConsulBadResponse:
    mib, rest = divmod(limit, 1024 * 1024)
    size = f"{mib} MiB" if not rest else f"{limit} bytes"
    return ConsulBadResponse(f"{path}: answer larger than {size}; is this Consul?")


def _decode_json(body: bytes | bytearray, *, path: str) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        # The C decoder recurses per nesting level: a proxy's or attacker's answer can be deep.
        raise ConsulBadResponse(f"{path}: answer nested too deeply") from None
    except ValueError as exc:
        raise ConsulBadResponse(f"{path}: answer is not JSON ({exc})") from None
    except Exception as exc:  # anything else the decoder raises is still a bad answer
        raise ConsulBadResponse(
            f"{path}: answer could not be decoded ({type(exc).__name__})"
        ) from None


def _parsed(parse: Callable[[Any], _T], data: Any, *, where: str) -> _T:
    """``parse(data)``, with any error other than a :class:`ConsulBadResponse` turned into one.

    The parsers check every field they read; this guard is for what they did not foresee, so
    that an odd answer is a status reason and never a crash of the worker.
    """
    try:
        return parse(data)
    except ConsulError:
        raise
    except RecursionError:
        raise ConsulBadResponse(f"{where}: answer nested too deeply") from None
    except Exception as exc:
        raise ConsulBadResponse(f"{where}: unexpected answer ({type(exc).__name__})") from None


def _redirect_error(response: aiohttp.ClientResponse, *, url: URL, path: str) -> ConsulError:
    status = response.status
    location = response.headers.get("Location")
    target = _redirect_target(location, base=url) if location else "an empty Location"
    return ConsulError(f"{path}: HTTP {status} redirect to {target} not followed", status=status)


def _redirect_target(location: str, *, base: URL) -> str:
    """Where a redirect points, without user info, query or fragment (they may hold secrets)."""
    try:
        target = base.join(URL(location))
        shown = str(target.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "an unreadable Location"
    return "".join(c if c.isprintable() else "?" for c in shown)[:200]


_UNCHANGED: Final = object()
_FILTERED_BY_ACLS: Final = "X-Consul-Results-Filtered-By-ACLs"
_FILTER_ERROR: Final = "Failed to create boolean expression evaluator"


def _outcome(error: ConsulError) -> str:
    if error.status is not None:
        return str(error.status)
    return error.reason


def _quote_segment(name: str) -> str:
    return quote(name, safe="")


def _parse_index(header: str | None) -> int:
    if header is None:
        return 0
    try:
        return int(header)
    except ValueError:
        return 0


def _describe_connection_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]


def _error_for_status(*, status: int, body: bytes | bytearray, path: str, url: URL) -> ConsulError:
    text = " ".join(body.decode("utf-8", "replace").split())[:300]
    message = f"{path}: HTTP {status}: {text or '(empty body)'}"
    if _FILTER_ERROR in text:
        # Consul 1.16 answers 500 (later versions 400) for a filter it cannot compile; name the
        # expression, which the user wrote, and Consul's reason. Retrying cannot help.
        expression = url.query.get("filter", "")
        reason = text.split(_FILTER_ERROR, 1)[1].lstrip(": ") or text
        return ConsulBadRequest(
            f"{path}: Consul cannot compile the filter {expression[:200]!r}: {reason}",
            status=status,
        )
    if status == 403:
        return ConsulACLDenied(message, status=status)
    if status == 429:
        return ConsulRateLimited(message, status=status)
    if status == 500 and "No path to datacenter" in text:
        return ConsulDatacenterUnknown(message, status=status)
    if status in _RETRYABLE_STATUSES:
        return ConsulServerError(message, status=status)
    if status == 400:
        return ConsulBadRequest(message, status=status)
    return ConsulError(message, status=status)


def parse_service_list(data: Any) -> dict[str, tuple[str, ...]]:
    """/v1/catalog/services: ``{name: [tags]}``; null tags are an empty list."""
    where = "/v1/catalog/services"
    if not isinstance(data, dict):
        raise ConsulBadResponse(f"{where}: expected an object, got {type(data).__name__}")
    services: dict[str, tuple[str, ...]] = {}
    for name, raw_tags in data.items():
        tags = [] if raw_tags is None else raw_tags
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ConsulBadResponse(f"{where}: tags of {name!r} are not a list of strings")
        services[name] = tuple(tags)
    return services


def parse_check_states(data: Any) -> frozenset[CheckState]:
    """/v1/health/state/any rows as :class:`CheckState` records, strictly checked."""
    where = "/v1/health/state/any"
    if data is None:
        return frozenset()
    if not isinstance(data, list):
        raise ConsulBadResponse(f"{where}: expected a list, got {type(data).__name__}")
    states = set()
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ConsulBadResponse(f"{where}: entry {i} is not an object")
        fields = tuple(row.get(key) or "" for key in ("Node", "CheckID", "ServiceName", "Status"))
        if not set(map(type, fields)) <= {str}:
            raise ConsulBadResponse(
                f"{where}: entry {i}: Node, CheckID, ServiceName and Status must be strings"
            )
        states.add(CheckState(*fields))
    return frozenset(states)


def parse_node_indexes(data: Any) -> list[tuple[str, int]]:
    """/v1/catalog/nodes rows as (node name, ModifyIndex), strictly checked."""
    where = "/v1/catalog/nodes"
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConsulBadResponse(f"{where}: expected a list, got {type(data).__name__}")
    nodes = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ConsulBadResponse(f"{where}: entry {i} is not an object")
        name, modified = row.get("Node"), row.get("ModifyIndex")
        if not isinstance(name, str) or not isinstance(modified, int) or isinstance(modified, bool):
            raise ConsulBadResponse(f"{where}: entry {i}: Node or ModifyIndex missing or mistyped")
        nodes.append((name, modified))
    return nodes


def parse_health_entries(data: Any, *, where: str) -> list[Instance]:
    """Entries of /v1/health/service/NAME as :class:`Instance` records, strictly checked."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConsulBadResponse(f"{where}: expected a list, got {type(data).__name__}")
    return [_parse_entry(entry, where=f"{where}: entry {i}") for i, entry in enumerate(data)]


def _parse_entry(entry: Any, *, where: str) -> Instance:
    # The hot path of a cold discovery (21000 entries at 7000 services): checks inline.
    if not isinstance(entry, dict):
        raise ConsulBadResponse(f"{where}: expected an object")
    node = entry.get("Node")
    service = entry.get("Service")
    if not isinstance(node, dict):
        raise ConsulBadResponse(f"{where}: Node is not an object")
    if not isinstance(service, dict):
        raise ConsulBadResponse(f"{where}: Service is not an object")
    checks_raw = entry.get("Checks") or ()
    if not isinstance(checks_raw, list | tuple):
        raise ConsulBadResponse(f"{where}: Checks is not a list")
    checks = []
    for check in checks_raw:
        if not isinstance(check, dict):
            raise ConsulBadResponse(f"{where}: Checks has an element that is not an object")
        check_id = check.get("CheckID") or ""
        status = check.get("Status") or ""
        if not isinstance(check_id, str) or not isinstance(status, str):
            raise ConsulBadResponse(f"{where}: Checks has a CheckID or Status that is no string")
        checks.append(Check(check_id, status))
    port = service.get("Port") or 0
    if not isinstance(port, int) or isinstance(port, bool):
        raise ConsulBadResponse(f"{where}: Service.Port is not an integer")
    tags = service.get("Tags") or ()
    if not isinstance(tags, list | tuple) or not set(map(type, tags)) <= {str}:
        raise ConsulBadResponse(f"{where}: Service.Tags is not a list of strings")
    strings = (
        node.get("Node") or "",
        node.get("Address") or "",
        service.get("ID") or "",
        service.get("Address") or "",
        service.get("Namespace") or "",
        service.get("Partition") or "",
    )
    if not set(map(type, strings)) <= {str}:
        raise ConsulBadResponse(
            f"{where}: Node.Node, Node.Address, Service.ID, "
            "Service.Address, Namespace and Partition must be strings"
        )
    return Instance(
        node=strings[0],
        node_address=strings[1],
        node_meta=_str_map(node.get("Meta"), where=f"{where}: Node.Meta"),
        node_tagged_addresses=_str_map(
            node.get("TaggedAddresses"), where=f"{where}: Node.TaggedAddresses"
        ),
        service_id=strings[2],
        service_address=strings[3],
        service_port=port,
        tags=tuple(tags),
        service_meta=_str_map(service.get("Meta"), where=f"{where}: Service.Meta"),
        namespace=strings[4],
        partition=strings[5],
        checks=tuple(checks),
    )


def _str_map(value: Any, *, where: str) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not set(map(type, value.values())) <= {str}:
        raise ConsulBadResponse(f"{where} is not a map of strings")
    return value


def aggregated_status(checks: Sequence[Check]) -> str:
    """Consul's ``HealthChecks.AggregatedStatus``, the value of ``__meta_consul_health``.

    Maintenance checks win; otherwise critical > warning > passing; no checks is passing; any
    other status value gives "" (as the Go client does).
    """
    warning = critical = maintenance = False
    for check in checks:
        if check.check_id == NODE_MAINTENANCE_CHECK or check.check_id.startswith(
            SERVICE_MAINTENANCE_PREFIX
        ):
            maintenance = True
            continue
        if check.status == HEALTH_PASSING:
            continue
        if check.status == HEALTH_WARNING:
            warning = True
        elif check.status == HEALTH_CRITICAL:
            critical = True
        else:
            return ""
    if maintenance:
        return HEALTH_MAINTENANCE
    if critical:
        return HEALTH_CRITICAL
    if warning:
        return HEALTH_WARNING
    # "No checks" and "all passing" both aggregate to passing, as in the Go client.
    return HEALTH_PASSING
