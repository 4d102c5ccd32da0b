"""The Consul HTTP client: every read discovery makes, named by what it reads.

One :class:`ConsulClient` per worker owns one aiohttp session whose connector caps open
connections, so a worker can never open more than ``max_connections`` sockets to Consul; an
adaptive limit below that cap backs off when Consul answers 429 (see :mod:`.limiter`). It sends
the parameters Prometheus's consul_sd sends (dc, ns, partition, stale, node-meta, tag, filter) and
the token only in the ``X-Consul-Token`` header, and never follows a redirect, so credentials
reach no other origin. Credentials are checked before any request (:func:`validate_token`,
:func:`validate_basic_auth`) with messages that name the field, never the value. Blocking
queries follow Consul's client rules: the index is reset when it goes backwards and never sent
below 1, and the request timeout is sized to ``wait + wait/16`` (Consul's jitter) plus a margin.
Transient failures (connection errors, 429, 5xx other than a permanent answer) are retried with
exponential backoff and jitter; every other failure raises a :class:`ConsulError` whose
``reason`` is a CR status reason.

No URL or filter string leaves this module: callers ask for the services list, a service's
instances, the unhealthy checks, a table's index or the services on some nodes.

Limits: only the read endpoints discovery needs; an answer is read in chunks up to
:data:`MAX_ANSWER_BYTES` (a server streaming gigabytes costs that much memory at most), then
parsed strictly into :class:`Instance` records; anything unexpected (too large, not JSON, nested
too deeply, a wrong shape, an error inside a parser) is a :class:`ConsulBadResponse` naming the
endpoint, never a crash deeper in the engine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from consul_sd.consul.endpoint import ConsulEndpoint, credential_headers, credential_texts
from consul_sd.consul.errors import (
    ConsulACLDenied,
    ConsulBadRequest,
    ConsulBadResponse,
    ConsulDatacenterUnknown,
    ConsulError,
    ConsulRateLimited,
    ConsulServerError,
    ConsulUnreachable,
)
from consul_sd.consul.limiter import AdaptiveLimit
from consul_sd.consul.records import (
    CheckState,
    Instance,
    parse_check_states,
    parse_health_entries,
    parse_node_indexes,
    parse_service_checks,
    parse_service_list,
    parsed,
)
from consul_sd.loops import backoff_delay

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
# Filters no row can match (Consul has no node or service with an empty name): the read
# returns an empty body and only the table's index.
_NO_NODE: Final = 'Node == ""'
_NO_SERVICE: Final = 'ServiceName == ""'
# The checks that decide __meta_consul_health (Consul's AggregatedStatus): any check not passing,
# and maintenance checks whatever their status.
# The health states /v1/health/state reads for the gate: maintenance checks are critical.
CheckStatus = Literal["critical", "warning"]
# Node names per catalog read in services_on_nodes (a filter of this many alternatives).
NODES_PER_LOOKUP: Final = 64


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
        self.concurrency = AdaptiveLimit(max_connections)
        self._max_answer_bytes = max_answer_bytes
        self._session: aiohttp.ClientSession | None = None
        self._headers = credential_headers(endpoint)
        # What an error text must never carry: a server or proxy may echo the request's
        # credentials in its answer, which becomes status, an event and a log line.
        self._secrets = credential_texts(endpoint, self._headers)

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
        services = parsed(parse_service_list, data, where="/v1/catalog/services")
        if not services and confirm_empty and (filter_expr or node_meta):
            await self._get(
                endpoint="catalog_services",
                path="/v1/catalog/services",
                params=self._query_params(index=0, wait=None, node_meta={}, filter_expr=""),
                denied_if_empty=True,
            )
        return services, answered

    async def services_table_index(self) -> int:
        """The services table's index, for a few bytes: a filter that keeps no row."""
        return await self._table_index(
            endpoint="catalog_services", path="/v1/catalog/services", filter_expr=_NO_SERVICE
        )

    async def nodes_table_index(self) -> int:
        """The nodes table's index, for a few bytes: a filter that keeps no row."""
        return await self._table_index(
            endpoint="catalog_nodes", path="/v1/catalog/nodes", filter_expr=_NO_NODE
        )

    async def unhealthy_checks(self) -> tuple[frozenset[CheckState], int]:
        """Every check that decides a service's health label, and the checks table's index.

        That is every critical or warning check (maintenance checks are critical): a passing
        check coming or going, or a change of its output, leaves every label as it was. Two
        indexed reads, made together: 0.2 ms of Consul CPU each at 21000 checks, where one
        filtered read of every check cost 18.8 ms. The index is the lower of the two, so a change
        landing between them is seen by the next comparison.
        """
        answers = await asyncio.gather(
            self.checks_in_state("critical"),
            self.checks_in_state("warning"),
            return_exceptions=True,
        )
        checks: set[CheckState] = set()
        indexes: list[int] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer  # both have ended: nothing of this read outlives it
            checks |= answer[0]
            indexes.append(answer[1])
        return frozenset(checks), min(indexes)

    async def checks_in_state(
        self, state: CheckStatus, *, index: int = 0, wait: float | None = None
    ) -> tuple[frozenset[CheckState], int]:
        """The checks in ``state`` (/v1/health/state/STATE) and the checks table's index."""
        params = self._query_params(index=index, wait=wait, node_meta={}, filter_expr="")
        where = f"/v1/health/state/{state}"
        data, answered = await self._get(
            endpoint="health_state", path=where, params=params, wait=wait
        )
        return parsed(parse_check_states, data, where=where), answered

    async def service_checks(self) -> dict[str, frozenset[tuple[str, str]]]:
        """Every service's checks as (node, CheckID), from one read of every check.

        The only table-level read naming the instances added or removed inside a listed
        service (those with a check); it is also the heaviest the gate makes: 173 ms of Consul
        CPU and 11 MB at 21000 checks (measured), against 0.56 ms for one service's answer.
        """
        params = self._query_params(index=0, wait=None, node_meta={}, filter_expr="")
        data, _ = await self._get(
            endpoint="health_state_any", path="/v1/health/state/any", params=params
        )
        return parsed(parse_service_checks, data, where="/v1/health/state/any")

    async def services_on_nodes(self, nodes: Iterable[str]) -> set[str]:
        """The names of the services with an instance on any of ``nodes``.

        One catalog read per :data:`NODES_PER_LOOKUP` nodes. A node name holding a backtick
        cannot be quoted in a filter: :class:`ConsulBadRequest` before any request.
        """
        ordered = sorted(set(nodes))
        if any("`" in name for name in ordered):
            raise ConsulBadRequest("a node name with a backtick cannot be quoted in a filter")
        found: set[str] = set()
        for at in range(0, len(ordered), NODES_PER_LOOKUP):
            chunk = ordered[at : at + NODES_PER_LOOKUP]
            on_nodes, _ = await self.list_services(
                filter_expr=" or ".join(f"Node == `{name}`" for name in chunk),
                confirm_empty=False,  # a node without services is common
            )
            found.update(on_nodes)
        return found

    async def _table_index(self, *, endpoint: str, path: str, filter_expr: str) -> int:
        # /v1/catalog/services and /v1/catalog/nodes report their table's index whatever the
        # filter keeps, so a filter matching nothing reads the index alone.
        params = self._query_params(index=0, wait=None, node_meta={}, filter_expr=filter_expr)
        _, answered = await self._get(endpoint=endpoint, path=path, params=params)
        return answered

    async def list_nodes(
        self, *, index: int = 0, wait: float | None = None
    ) -> tuple[list[tuple[str, int]], int]:
        """Every node of /v1/catalog/nodes with its ModifyIndex, and the nodes index."""
        params = self._query_params(index=index, wait=wait, node_meta={}, filter_expr="")
        data, answered = await self._get(
            endpoint="catalog_nodes", path="/v1/catalog/nodes", params=params, wait=wait
        )
        return parsed(parse_node_indexes, data, where="/v1/catalog/nodes"), answered

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
        entries = parsed(lambda d: parse_health_entries(d, where=where), data, where=where)
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
