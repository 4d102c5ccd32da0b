"""The varied Consul state the oracle tests register, as PUT bodies.

``catalog_bodies()`` gives PUT /v1/catalog/register bodies (external nodes, the way consul-esm
or a registrator writes them); ``AGENT_SERVICES`` are PUT /v1/agent/service/register bodies for
the agent's own node, needed where only the agent API can produce a state (service maintenance
with PUT /v1/agent/service/maintenance, node maintenance with PUT /v1/agent/maintenance).

What it covers: tags (including one with a comma and one with a semicolon, so the tag separator
matters), service meta with hyphens and an empty value, node meta with dots and slashes (Consul
refuses dots and slashes in *service* meta keys: ``Key contains invalid characters``), node
tagged addresses, IPv6 node and service addresses (one with a zone), services without address
and without port, service names with dots, slashes, spaces, ``?``, ``%``, ``#``, ``+`` and
non-ASCII letters, passing/warning/critical service checks, node-level checks (critical,
warning, an unknown status, a catalog-registered ``_node_maintenance`` and
``_service_maintenance:`` check), and a 30-instance service. Three rules no other state pins: a
service in maintenance that also has a critical check (maintenance outranks critical), a node
meta key with ``:`` (valid in metric names, not in label names), and a full IPv6 service address
without ``::`` (bracketed all the same). ``SELECTORS`` are the selector
settings given to both sides, with the target counts the fleet implies.

Addresses are data only: the Prometheus jobs of the oracle rewrite ``__address__`` to a closed
loopback port before any scrape, so nothing ever connects to them.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.oracle.harness import Selector

Body = dict[str, Any]

NODES: dict[str, Body] = {
    "node-a": {
        "Node": "node-a",
        "Address": "10.20.0.1",
        "TaggedAddresses": {
            "lan": "10.20.0.1",
            "lan_ipv4": "10.20.0.1",
            "wan": "203.0.113.1",
            "wan_ipv4": "203.0.113.1",
        },
        "NodeMeta": {
            "rack": "r1",
            "topology.kubernetes.io/zone": "zone-a",
            "app/tier": "front",
            "empty": "",
        },
    },
    "node-b": {
        "Node": "node-b",
        "Address": "10.20.0.2",
        "TaggedAddresses": {"lan": "10.20.0.2"},
        "NodeMeta": {"rack": "r2", "topology.kubernetes.io/zone": "zone-b"},
    },
    "node-c": {
        "Node": "node-c",
        "Address": "2001:db8::c",
        "TaggedAddresses": {"lan": "2001:db8::c", "lan_ipv6": "2001:db8::c"},
        "NodeMeta": {"rack": "r1"},
    },
    # No meta, no tagged addresses; a critical node-level check.
    "node-d": {"Node": "node-d", "Address": "10.20.0.4"},
    # A warning node check plus a catalog-registered node maintenance check.
    "node-e": {"Node": "node-e", "Address": "10.20.0.5", "NodeMeta": {"rack": "r2"}},
    # A node check with a status Consul stores but does not know: health aggregates to "".
    "node-f": {"Node": "node-f", "Address": "10.20.0.6", "NodeMeta": {"rack": "r3"}},
    # A ':' in a node meta key (Consul refuses it in service meta keys, not in node meta).
    "node-g": {
        "Node": "node-g",
        "Address": "10.20.0.7",
        "NodeMeta": {"rack": "r4", "k8s:zone": "g"},
    },
}

NODE_CHECKS: list[Body] = [
    {"Node": "node-d", "CheckID": "serf-like", "Name": "node alive", "Status": "critical"},
    {"Node": "node-e", "CheckID": "disk", "Name": "disk space", "Status": "warning"},
    {
        "Node": "node-e",
        "CheckID": "_node_maintenance",
        "Name": "Node Maintenance Mode",
        "Status": "critical",
        "Notes": "planned",
    },
    {"Node": "node-f", "CheckID": "custom", "Name": "custom state", "Status": "degraded"},
]

CACHE_INSTANCES = 30
# Service names Consul accepts that need escaping in a URL path (or are not ASCII).
ODD_NAMES = ("a/b", "sp ace", "q?x", "pc%41", "hash#x", "plus+x", "ünï")
_CACHE_NODES = ("node-a", "node-b", "node-c", "node-d", "node-e", "node-f")
_STATUSES = ("passing", "warning", "critical")


def _service(node: str, service: Body, *checks: Body) -> Body:
    body = copy.deepcopy(NODES[node])
    body["Service"] = service
    if checks:
        body["Checks"] = [dict(check, Node=node) for check in checks]
    return body


def _check(service_id: str, status: str, *, check_id: str | None = None) -> Body:
    return {
        "CheckID": check_id or f"service:{service_id}",
        "Name": f"{service_id} check",
        "Status": status,
        "ServiceID": service_id,
    }


def _web(node: str, number: int, status: str, *, address: str = "") -> Body:
    service_id = f"web-{number}"
    return _service(
        node,
        {
            "ID": service_id,
            "Service": "web",
            "Address": address,
            "Port": 8080,
            "Tags": ["prod", "http", "team:sre"],
            "Meta": {"version": "1.2.3", "owner-team": "sre", "git_sha": "abc123", "note": ""},
        },
        _check(service_id, status),
    )


def _cache(number: int) -> Body:
    service_id = f"cache-{number:02d}"
    node = _CACHE_NODES[number % len(_CACHE_NODES)]
    service: Body = {
        "ID": service_id,
        "Service": "cache",
        "Port": 6379 + number,
        "Tags": ["cache", f"shard-{number % 3}"],
        "Meta": {"shard": str(number % 3)},
    }
    if number % 3 == 0:
        service["Address"] = f"10.30.0.{number + 1}"
    return _service(node, service, _check(service_id, _STATUSES[number % 3]))


def catalog_bodies() -> list[Body]:
    """Every catalog registration, nodes (with their node checks) first; fresh copies."""
    bodies: list[Body] = []
    for name, node in NODES.items():
        body = copy.deepcopy(node)
        checks = [dict(check) for check in NODE_CHECKS if check["Node"] == name]
        if checks:
            body["Checks"] = checks
        bodies.append(body)
    bodies += [
        _web("node-a", 1, "passing"),
        _web("node-b", 2, "warning", address="10.20.1.2"),
        _web("node-c", 3, "critical"),  # no service address: the node's IPv6 address is used
        _service(
            "node-a",
            {
                "ID": "api-1",
                "Service": "api",
                "Address": "2001:db8::10",
                "Port": 443,
                "Tags": ["prod", "v2", "a,b", "x;y"],
                "Meta": {"proto": "https"},
                "TaggedAddresses": {"lan": {"Address": "10.20.0.1", "Port": 443}},
            },
            _check("api-1", "passing"),
        ),
        _service(
            "node-b",
            {
                "ID": "api-2",
                "Service": "api",
                "Address": "fe80::1%eth0",
                "Port": 443,
                "Tags": ["prod", "v2"],
                "Meta": {"proto": "https"},
            },
        ),
        # No address, no port, no tags, no meta, no checks.
        _service("node-b", {"ID": "db-1", "Service": "db"}),
        _service(
            "node-d",
            {"ID": "batch-1", "Service": "batch", "Port": 9000, "Tags": ["batch", "staging"]},
            _check("batch-1", "passing"),
        ),
        _service(
            "node-e",
            {"ID": "legacy-1", "Service": "legacy", "Port": 8000, "Tags": ["legacy"]},
            _check("legacy-1", "passing"),
        ),
        _service(
            "node-f",
            {"ID": "odd-1", "Service": "metrics.v1", "Port": 9102, "Tags": ["metrics"]},
            _check("odd-1", "passing"),
        ),
        # A service in maintenance the way the agent writes it to the catalog.
        _service(
            "node-a",
            {"ID": "worker-1", "Service": "worker", "Port": 7000, "Tags": ["batch"]},
            _check("worker-1", "passing"),
            _check("worker-1", "critical", check_id="_service_maintenance:worker-1"),
        ),
        # Maintenance and a critical check at once; a full IPv6 address (no "::"). Selected by
        # no SELECTORS entry, so EXPECTED_COUNTS stay as they are.
        _service(
            "node-g",
            {
                "ID": "strict-1",
                "Service": "strict",
                "Address": "2001:db8:0:0:1:2:3:4",
                "Port": 9300,
                "Tags": ["strict"],
            },
            _check("strict-1", "critical"),
            _check("strict-1", "critical", check_id="_service_maintenance:strict-1"),
        ),
    ]
    bodies += [
        _service("node-f", {"ID": f"odd-{number}", "Service": name, "Port": 9200 + number})
        for number, name in enumerate(ODD_NAMES, start=2)
    ]
    bodies += [_cache(number) for number in range(CACHE_INSTANCES)]
    return bodies


AGENT_SERVICES: list[Body] = [
    {
        "ID": "agent-web-1",
        "Name": "agent-web",
        "Port": 9100,
        "Tags": ["agent", "prod"],
        "Meta": {"source": "agent"},
    },
    {"ID": "agent-maint-1", "Name": "agent-maint", "Port": 9101, "Tags": ["agent"]},
]
AGENT_MAINTENANCE_SERVICE = "agent-maint-1"


def registered_service_ids() -> set[str]:
    """Service IDs of ``catalog_bodies()`` (what the simulator cross-check compares)."""
    return {body["Service"]["ID"] for body in catalog_bodies() if "Service" in body}


def catalog_targets() -> int:
    return len(registered_service_ids())


# Selector settings the oracle gives to both sides (Prometheus's consul_sd and ours).
SELECTORS: dict[str, Selector] = {
    # Only names: no catalog request on either side; a name nobody registered gives nothing.
    "services": Selector(services=("web", "db", "metrics.v1", "absent")),
    "tags": Selector(tags=("prod",), tag_separator=";"),
    "node-meta": Selector(node_meta={"rack": "r1"}),
    # Catalog only: selects which services are watched, not which instances.
    "filter": Selector(filter='ServiceTags contains "cache" or NodeMeta.rack == "r2"'),
    # Health endpoint only: selects instances (a node without meta passes the "!=").
    "health-filter": Selector(
        health_filter='Node.Meta.rack != "r2" and Service.ID matches "^(web|cache-0|api|batch)"'
    ),
    "combined": Selector(
        services=("web", "cache", "api"),
        tags=("prod",),
        node_meta={"rack": "r1"},
        health_filter='Service.Tags contains "http"',
        tag_separator="|",
    ),
}


# Targets per selector, from the fleet: web x3 + db + metrics.v1; prod-tagged web x3, api x2,
# agent-web; node-a's 8 + node-c's 6; every service with an instance on an r2 node (whole) plus
# cache; rack != r2 among the matching IDs; web on r1 nodes (api lacks "http", cache "prod").
EXPECTED_COUNTS = {
    "services": 5,
    "tags": 6,
    "node-meta": 14,
    "filter": 37,
    "health-filter": 11,
    "combined": 2,
}
