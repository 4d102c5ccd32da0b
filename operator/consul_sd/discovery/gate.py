"""Polling's change gate: whether, and where, the catalog moved since the last clean cycle.

The services, checks and nodes tables are every input of a /v1/health/service answer, so when
none of their indexes moved no answer can differ and Polling skips its fetches. When only checks
or nodes moved (health flapping, a node's address or meta), only the services on them are fetched
again; a moved services table (an instance registered, changed or removed) fetches every service,
as Consul has no cheaper way to say which.

The gate only ever narrows: any error, any index going back, any doubt (a ``healthFilter`` on
checks, an Enterprise namespace, too many changed nodes) answers "unknown", and the cycle fetches
everything. Reads go through the client's named reads; no Consul path is built here.
"""

from __future__ import annotations

from dataclasses import dataclass

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.errors import (
    ConsulError,
)
from consul_sd.consul.records import CheckState
from consul_sd.discovery.query import DiscoveryQuery

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
    *, before: ChangeGate, now: ChangeGate, query: DiscoveryQuery, client: ConsulClient
) -> set[str] | None:
    """The services whose answers may differ between two gates; ``None`` means any of them.

    - services moved (an instance registered, changed or gone): any service, as Consul offers
      no per-service index short of asking each service;
    - checks moved: the services of checks that entered, left or changed the unhealthy set, and
      for a node's own checks every service on that node; any service when ``healthFilter``
      reads checks (a passing check can change what it keeps) or a namespace is set;
    - nodes moved: every service on a node whose ModifyIndex is past the previous gate (a node
      removed takes its services with it and moves the services index).

    Node-to-service lookups ask the catalog, not the targets held, so an instance that a filter
    hid before is found too. Any error means ``None``: the cycle fetches everything.
    """
    if now.services != before.services or now.checks < before.checks or now.nodes < before.nodes:
        # An index going back is a different server's older view: nothing can be narrowed.
        return None
    changed: set[str] = set()
    nodes: set[str] = set()
    if now.checks != before.checks:
        if "checks" in query.health_filter.lower() or client.endpoint.namespace not in (
            "",
            "default",
        ):
            # In an Enterprise namespace the gate sees that namespace's checks only, while a
            # node's own checks (which live in the default one) count in every service's health.
            return None
        for check in before.unhealthy ^ now.unhealthy:
            if check.service_name:
                changed.add(check.service_name)
            else:
                nodes.add(check.node)
    try:
        if now.nodes != before.nodes:
            listed, _ = await client.list_nodes()
            nodes.update(name for name, modified in listed if modified > before.nodes)
        if len(nodes) > _MAX_CHANGED_NODES:
            return None
        changed |= await client.services_on_nodes(nodes)
    except ConsulError:
        return None
    return changed
