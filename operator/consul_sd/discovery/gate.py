"""Polling's change gate: whether, and where, the catalog moved since the last clean cycle.

The services, checks and nodes tables are every input of a /v1/health/service answer, so when
none of their indexes moved no answer can differ and Polling skips its fetches. When only checks
or nodes moved (health flapping, a node's address or meta), only the services on them are fetched
again; a moved services table (an instance registered, changed or removed) fetches every service,
as Consul has no cheaper way to say which. With the table watches (:mod:`.tables`) the gate also
holds the matched catalog and every node's ModifyIndex: a moved services table then fetches the
services added or whose tags changed, and is reported *unexplained* (Polling reads everything
within ``refreshInterval``), and a moved nodes table needs no extra read.

The gate only ever narrows: any error, any index going back, any doubt (a ``healthFilter`` on
checks, an Enterprise namespace, too many changed nodes) answers "unknown", and the cycle fetches
everything. Reads go through the client's named reads; no Consul path is built here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.errors import (
    ConsulError,
)
from consul_sd.consul.records import Check, CheckState, aggregated_status
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.targets import TargetGroup

# Past this many changed nodes, a full refetch is cheaper than mapping them to services.
_MAX_CHANGED_NODES = 512


@dataclass(frozen=True)
class ChangeGate:
    """What a polling cycle reads first: whether, and where, the catalog moved since the last.

    The services, checks and nodes table indexes are every input of a /v1/health/service
    answer; ``unhealthy`` is every check that is not passing (with the checks index it came
    with), so a moved checks index can be narrowed to the services whose health changed.
    """

    services: int
    checks: int
    nodes: int
    unhealthy: frozenset[CheckState]
    # With wakeOnChange only: the matched catalog (names and tags), so a services move is
    # narrowed by names; and, from the table watches, every node's ModifyIndex (a nodes move
    # needs no read). ``watched``: built from the watches, whose checks index is the last one
    # each state list answered, comparable only with another watched gate's.
    catalog: Mapping[str, tuple[str, ...]] | None = None
    node_indexes: tuple[tuple[str, int], ...] | None = None
    watched: bool = False


@dataclass(frozen=True)
class Narrowed:
    """The services a cycle must fetch, and whether a services move is left unexplained.

    ``unexplained``: the services table moved and only the catalog list was compared, so an
    instance added, removed or edited inside a listed service may not be among ``services``.
    """

    services: set[str]
    unexplained: bool = False


async def read_change_gate(
    *, query: DiscoveryQuery, client: ConsulClient, services_index: int
) -> ChangeGate | None:
    """The change gate; ``None`` (a Consul that refuses the filters, or any error) = unknown.

    When nothing in it moved since the previous cycle's gate, no service's answer can differ
    and the cycle is skipped; when only checks or nodes moved, :func:`changed_services` names
    the few services to fetch again.
    """
    try:
        if not query.uses_catalog:
            services_index = await client.services_table_index()
        unhealthy, checks = await client.unhealthy_checks()
        nodes = await client.nodes_table_index()
    except ConsulError:
        return None
    if min(services_index, checks, nodes) <= 0:
        return None
    return ChangeGate(services=services_index, checks=checks, nodes=nodes, unhealthy=unhealthy)


async def changed_services(
    *,
    before: ChangeGate,
    now: ChangeGate,
    query: DiscoveryQuery,
    client: ConsulClient,
    held: Callable[[set[str]], set[str]] | None = None,
) -> Narrowed | None:
    """The services whose answers may differ between two gates; ``None`` means any of them.

    - services moved (an instance registered, changed or gone): any service, as Consul offers
      no per-service index short of asking each service; with the watched catalog, the services
      added or whose tags changed, and the move reported unexplained;
    - checks moved: the services of checks that entered, left or changed the unhealthy set, and
      for a node's own checks every service on that node; any service when ``healthFilter``
      reads checks (a passing check can change what it keeps) or a namespace is set;
    - nodes moved: every service on a node whose ModifyIndex is past the previous gate (a node
      removed takes its services with it and moves the services index).

    Node-to-service lookups ask the catalog, so an instance that a filter hid before is found
    too; ``held`` (the services whose targets sit on some nodes) answers instead when no filter
    can hide an instance by its node (no node-meta, no ``healthFilter``): no request, where a
    catalog lookup by node costs Consul a filtered read of every instance (102 ms at 21000). It
    also names the services of a node that is gone. Any error means ``None``: the cycle fetches
    everything.
    """
    waking = now.catalog is not None and before.catalog is not None
    checks_back = now.checks < before.checks and now.watched == before.watched
    if now.services < before.services or checks_back or now.nodes < before.nodes:
        # An index going back is a different server's older view: nothing can be narrowed.
        return None
    # With wakeOnChange a cycle may run every second: what cannot be narrowed is left
    # unexplained (read by the full cycle within the refresh interval), never "fetch all now".
    unexplained = now.services != before.services
    if unexplained and not waking:
        return None
    checks_moved = now.checks != before.checks or now.watched != before.watched
    if checks_moved and not _health_narrows(query=query, client=client):
        if not waking:
            return None
        unexplained = True
    changed, nodes = _unhealthy_changes(before=before, now=now)
    if now.catalog is not None and before.catalog is not None:
        changed |= catalog_changes(before=before.catalog, now=now.catalog)
    try:
        nodes |= await _moved_nodes(before=before, now=now, client=client)
        if held is not None and (waking or not (query.node_meta or query.health_filter)):
            changed |= held(nodes)
            # A filter on node fields may now keep an instance on these nodes that none held.
            unexplained |= bool(nodes) and bool(query.node_meta or query.health_filter)
        elif len(nodes) > _MAX_CHANGED_NODES:
            return None
        else:
            changed |= await client.services_on_nodes(nodes)
    except ConsulError:
        return None
    return Narrowed(services=changed, unexplained=unexplained)


def _unhealthy_changes(*, before: ChangeGate, now: ChangeGate) -> tuple[set[str], set[str]]:
    """The services, and the nodes (a node's own check), of checks whose health changed."""
    services: set[str] = set()
    nodes: set[str] = set()
    for check in before.unhealthy ^ now.unhealthy:
        if check.service_name:
            services.add(check.service_name)
        else:
            nodes.add(check.node)
    return services, nodes


async def _moved_nodes(*, before: ChangeGate, now: ChangeGate, client: ConsulClient) -> set[str]:
    """The nodes whose ModifyIndex passed the previous gate (the watches' list, or a read)."""
    if now.nodes == before.nodes:
        return set()
    listed = now.node_indexes
    if listed is None:
        listed = tuple((await client.list_nodes())[0])
    moved = {name for name, modified in listed if modified > before.nodes}
    if before.node_indexes is not None:
        moved |= {name for name, _ in before.node_indexes} - {name for name, _ in listed}
    return moved


def _health_narrows(*, query: DiscoveryQuery, client: ConsulClient) -> bool:
    """Whether a checks move can be narrowed by the unhealthy set.

    Not when ``healthFilter`` reads checks (a passing check can change what it keeps), nor in an
    Enterprise namespace: the gate sees that namespace's checks only, while a node's own checks
    (which live in the default one) count in every service's health.
    """
    if "checks" in query.health_filter.lower():
        return False
    return client.endpoint.namespace in ("", "default")


def catalog_changes(
    *, before: Mapping[str, tuple[str, ...]], now: Mapping[str, tuple[str, ...]]
) -> set[str]:
    """Services listed now that were not before, gone since, or whose tags changed.

    A service gone is fetched too: with services given by name only the names stay the same,
    and its answer, now empty, is what removes its targets.
    """
    return {name for name in now.keys() | before.keys() if before.get(name) != now.get(name)}


class HeldNodes:
    """The nodes each held service has targets on, parsed once per target group."""

    def __init__(self) -> None:
        self._nodes: dict[str, tuple[TargetGroup, frozenset[str]]] = {}

    def services_on(self, *, nodes: set[str], known: Mapping[str, TargetGroup]) -> set[str]:
        """The held services with a target on any of ``nodes``."""
        found: set[str] = set()
        for name, group in known.items():
            cached = self._nodes.get(name)
            if cached is None or cached[0] is not group:
                on = frozenset(target.label_dict()["__meta_consul_node"] for target in group)
                cached = self._nodes[name] = (group, on)
            if cached[1] & nodes:
                found.add(name)
        for gone in set(self._nodes) - set(known):
            del self._nodes[gone]
        return found


def health_disagrees(group: TargetGroup, unhealthy: frozenset[CheckState]) -> bool:
    """Whether a fetched service shows a health the listed unhealthy checks do not give.

    The rate-limited state lists may coalesce a flip and its undoing: a fetch that caught the
    middle of it shows a state they will never name, and a fetch made between a recovery and
    a relapse shows "passing" while the lists, unchanged, say unhealthy. Either way the next
    cycle asks the service again; listed and fetched agree again once the flapping stops.
    """
    by_instance: dict[tuple[str, str], list[Check]] = {}
    for state in unhealthy:
        key = (state.node, state.service_id if state.service_name else "")
        by_instance.setdefault(key, []).append(Check(check_id=state.check_id, status=state.status))
    for target in group:
        labels = target.label_dict()
        node = labels.get("__meta_consul_node", "")
        listed = by_instance.get((node, labels.get("__meta_consul_service_id", "")), [])
        listed = listed + by_instance.get((node, ""), [])
        if labels.get("__meta_consul_health", "") != (aggregated_status(listed) or "passing"):
            return True
    return False
