"""Polling's table watches: four long-polls that wake a cycle as soon as Consul's catalog moves.

With ``wakeOnChange``, Polling holds one blocking query on each table its change gate reads:
the catalog list (``/v1/catalog/services``: names and tags, with the query's node-meta and
filter), the critical and the warning checks (``/v1/health/state/critical`` and ``/warning``:
the checks that decide ``__meta_consul_health``), and the nodes (``/v1/catalog/nodes``: every
node's ModifyIndex). Each answer with a new index is kept and sets :attr:`TableWatches.moved`; the
cycle builds its change gate from the kept answers (:meth:`TableWatches.gate`) instead of reading
the tables again.

Consul's rules for blocking loops hold in each watch: the index is reset when it goes back and
never sent below 1, wake-ups are rate-limited by a token bucket (a burst is followed at once, a
storm at most once per period), and a failure forgets the watch's answer (the cycle then reads
plainly, as without watches) and backs off. Four connections beside ``maxConcurrent``.

Limits: the watches say *that* a table moved and, for checks and nodes, *where*; what changed
inside an existing service (an instance added, removed or edited) no table names, so a services
move the catalog list does not explain is left to the cycle's periodic full read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.errors import ConsulError
from consul_sd.consul.records import CheckState
from consul_sd.discovery.failures import error_backoff, index_went_back, next_index
from consul_sd.discovery.gate import ChangeGate
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.loops import TokenBucket, cancel_and_wait, first_done

logger = logging.getLogger(__name__)

# A watch answers at most twice at once, then once per period: the catalog list costs Consul
# ~46 ms at 7000 services (measured), the other three under 2 ms.
CATALOG_WAKE_PERIOD = 2.0
TABLE_WAKE_PERIOD = 1.0
# The long-polls held beside maxConcurrent reads (see consul_sd.endpoints.connection_cap).
TABLE_WATCHES = 4
_Read = Callable[[int, float], Awaitable[tuple[Any, int]]]


@dataclass(frozen=True)
class Catalog:
    """The matched services with their tags, as the catalog list answered them."""

    services: Mapping[str, tuple[str, ...]]

    @property
    def names(self) -> list[str]:
        return sorted(self.services)


class TableWatches:
    """The four watches' latest answers, and an event set whenever one of them moved."""

    def __init__(self, *, query: DiscoveryQuery, client: ConsulClient) -> None:
        self.query = query
        self.client = client
        self.moved = asyncio.Event()
        self._answers: dict[str, tuple[Any, int]] = {}
        self._down: set[str] = set()  # failing since their last answer (said once)

    async def run(self) -> None:
        """Run the four watches until cancelled (or one raises what is not a Consul error)."""
        reads: dict[str, tuple[_Read, float]] = {
            "catalog": (self.read_catalog, CATALOG_WAKE_PERIOD),
            "critical": (self._read_state("critical"), TABLE_WAKE_PERIOD),
            "warning": (self._read_state("warning"), TABLE_WAKE_PERIOD),
            "nodes": (self._read_nodes, TABLE_WAKE_PERIOD),
        }
        watches = [
            asyncio.create_task(self._watch(table=table, read=read, period=period))
            for table, (read, period) in reads.items()
        ]
        try:
            for done in await first_done(*watches):
                done.result()  # its own exception, not wrapped in a group
        finally:
            await cancel_and_wait(watches)

    def gate(self) -> ChangeGate | None:
        """The change gate of the latest answers; ``None`` while any watch has none."""
        if len(self._answers) < TABLE_WATCHES:
            return None
        catalog, services = self._answers["catalog"]
        critical, at_critical = self._answers["critical"]
        warning, at_warning = self._answers["warning"]
        nodes, at_nodes = self._answers["nodes"]
        if min(services, at_critical, at_warning, at_nodes) <= 0:
            return None
        unhealthy: frozenset[CheckState] = critical | warning
        return ChangeGate(
            services=services,
            checks=min(at_critical, at_warning),
            nodes=at_nodes,
            unhealthy=unhealthy,
            catalog=catalog.services,
            node_indexes=tuple(nodes),
            watched=True,
        )

    async def _watch(self, *, table: str, read: _Read, period: float) -> None:
        index = 0
        wakes = TokenBucket(burst=2, period=period)
        backoff = error_backoff(refresh_interval=self.query.refresh_interval)
        while True:
            await wakes.take()
            try:
                value, answered = await read(index, self.query.watch_timeout)
            except ConsulError as error:
                # The cycle reads plainly while a watch is down, and reports what fails there.
                self._answers.pop(table, None)
                if table not in self._down:
                    self._down.add(table)
                    logger.warning("the %s watch failed, cycles read plainly: %s", table, error)
                index = 0
                await backoff.wait()
                continue
            backoff.reset()
            if table in self._down:
                self._down.discard(table)
                logger.info("the %s watch answers again", table)
            if index_went_back(previous=index, answered=answered):
                index = 0  # Consul's rule: distrust it and read again, plainly
                continue
            held = self._answers.get(table)
            # A new index, or the same index with other content: a catalog filter on node
            # fields keeps other services when only the nodes table moved.
            if held is None or answered != index or held[0] != value:
                self._answers[table] = (value, answered)
                self.moved.set()
            index = next_index(answered)

    async def read_catalog(self, index: int = 0, wait: float = 0.0) -> tuple[Catalog, int]:
        """The matched catalog (blocking when ``index`` is set, up to the refresh interval)."""
        # At least once per refresh interval: a catalog filter on node fields can change what
        # it lists when only the nodes table moves, which does not wake this watch.
        listed, answered = await self.client.list_services(
            index=index,
            wait=min(wait, self.query.refresh_interval) if index else None,
            node_meta=self.query.node_meta,
            filter_expr=self.query.filter,
        )
        matched = {name: tags for name, tags in listed.items() if self.query.matches(name, tags)}
        return Catalog(services=matched), answered

    def _read_state(self, state: str) -> _Read:
        async def read(index: int, wait: float) -> tuple[frozenset[CheckState], int]:
            return await self.client.checks_in_state(
                "critical" if state == "critical" else "warning", index=index, wait=wait
            )

        return read

    async def _read_nodes(self, index: int, wait: float) -> tuple[list[tuple[str, int]], int]:
        return await self.client.list_nodes(index=index, wait=wait)
