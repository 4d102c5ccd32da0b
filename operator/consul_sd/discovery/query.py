"""What a discovery asks Consul for, resolved from the spec, and its two reads.

:class:`DiscoveryQuery` is the spec in a worker's terms (durations in seconds, the Auto
thresholds, the full-resync period). Matching follows Prometheus's ``shouldWatch``: a listed
name (or no list) and every required tag; with only exact service names the catalog is never
read. :func:`list_matched_services` and :func:`fetch_target_group` are the two reads every mode
makes, through the client's named reads (no Consul path or filter string is built here).

Plain data and two awaits: no loop, no retry (the modes own those).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from consul_sd.api.spec import ConsulDiscoverySpec, Mode
from consul_sd.consul.client import ConsulClient
from consul_sd.targets import TargetGroup, build_target_group

EffectiveMode = Literal["Polling", "Blocking"]
AUTO_POLLING_AT = 1000
AUTO_BLOCKING_BELOW = 900
# Every loop reads everything again this often, whatever the indexes say: an index equal to the
# last one does not prove the content is (a Consul restarted without its data replays the same
# index sequence with new content). A request that broke (Consul unreachable) triggers a full read
# at once; this bounds what no request saw.
FULL_RESYNC_SECONDS = 600.0


@dataclass(frozen=True)
class DiscoveryQuery:
    """What a worker discovers and how, resolved from the spec (durations in seconds)."""

    mode: Mode = "Auto"
    services: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    node_meta: Mapping[str, str] = field(default_factory=dict)
    filter: str = ""
    health_filter: str = ""
    tag_separator: str = ","
    datacenter: str = ""
    refresh_interval: float = 30.0
    max_concurrent: int = 100
    watch_timeout: float = 120.0
    resync_interval: float = FULL_RESYNC_SECONDS
    auto_polling_at: int = AUTO_POLLING_AT
    auto_blocking_below: int = AUTO_BLOCKING_BELOW
    # False here (a query built directly cycles every refresh interval); the spec's default is on.
    wake_on_change: bool = False

    @classmethod
    def from_spec(cls, spec: ConsulDiscoverySpec) -> DiscoveryQuery:
        selector = spec.selector
        return cls(
            mode=spec.mode,
            services=tuple(selector.services),
            tags=tuple(selector.tags),
            node_meta=dict(selector.node_meta),
            filter=selector.filter,
            health_filter=selector.health_filter,
            tag_separator=spec.tag_separator,
            datacenter=spec.consul.datacenter,
            refresh_interval=spec.refresh_seconds,
            max_concurrent=spec.max_concurrent,
            watch_timeout=spec.watch_seconds,
            resync_interval=spec.resync_seconds,
            wake_on_change=spec.wake_on_change,
            **auto_thresholds(max_concurrent=spec.max_concurrent, wake=spec.wake_on_change),
        )

    @property
    def uses_catalog(self) -> bool:
        """Prometheus skips the catalog when only exact service names are configured."""
        return not self.services or bool(self.tags) or bool(self.filter)

    def matches(self, name: str, tags: Iterable[str]) -> bool:
        """Prometheus's ``shouldWatch``: listed name (or no list) and every required tag."""
        if self.services and name not in self.services:
            return False
        present = set(tags)
        return all(tag in present for tag in self.tags)


def auto_thresholds(*, max_concurrent: int, wake: bool) -> dict[str, int]:
    """Auto's switch points: where Polling wins, with hysteresis.

    Polling that wakes on change sees every kind of change in about a second at any fleet size
    for a few requests per change; Blocking wins only while every watch holds its own slot
    (``max_concurrent``): above that its watches share slots and a change waits for its turn
    (35-75 s measured at 7000 services). Without the wake-up, Polling sees a change only at its
    next cycle, so Auto keeps Blocking up to :data:`AUTO_POLLING_AT`.
    """
    if not wake:
        return {"auto_polling_at": AUTO_POLLING_AT, "auto_blocking_below": AUTO_BLOCKING_BELOW}
    polling_at = max_concurrent + 1
    return {"auto_polling_at": polling_at, "auto_blocking_below": max(1, polling_at * 9 // 10)}


async def list_matched_services(
    *, query: DiscoveryQuery, client: ConsulClient, index: int = 0, wait: float | None = None
) -> tuple[list[str], int]:
    """Matched service names (sorted) and the catalog index; no request without the catalog."""
    if not query.uses_catalog:
        return sorted(set(query.services)), 0
    services, answered = await client.list_services(
        index=index, wait=wait, node_meta=query.node_meta, filter_expr=query.filter
    )
    return sorted(name for name, tags in services.items() if query.matches(name, tags)), answered


async def fetch_target_group(
    *,
    name: str,
    query: DiscoveryQuery,
    client: ConsulClient,
    index: int = 0,
    wait: float | None = None,
    unchanged_index: int | None = None,
) -> tuple[TargetGroup | None, int]:
    """The targets of one service (``None`` when its index is ``unchanged_index``)."""
    instances, answered = await client.service_instances(
        name,
        tags=query.tags,
        index=index,
        wait=wait,
        node_meta=query.node_meta,
        filter_expr=query.health_filter,
        unchanged_index=unchanged_index,
    )
    if instances is None:
        return None, answered
    group = build_target_group(
        service=name,
        datacenter=query.datacenter,
        instances=instances,
        tag_separator=query.tag_separator,
    )
    return group, answered
