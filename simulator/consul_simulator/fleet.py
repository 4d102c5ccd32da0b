"""Deterministic synthetic fleets for the simulator, as PUT /v1/catalog/register bodies.

The same (services, instances, nodes, seed) always yields the same bodies, so benchmarks and tests
can be compared run to run. Addresses are 10.x.y.z strings that are data only: nothing ever
connects to them. Each instance gets one passing service check and nothing else (no node checks).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = ["fleet_registrations", "node_address", "node_name", "service_name"]

_TAG_POOL = ("prod", "staging", "http", "grpc", "metrics", "canary", "v1", "v2", "edge", "batch")
_TEAMS = ("payments", "search", "identity", "storage", "platform", "data")
_ZONES = ("zone-a", "zone-b", "zone-c")


def service_name(i: int) -> str:
    return f"svc-{i:05d}"


def node_name(i: int) -> str:
    return f"node-{i:03d}"


def node_address(i: int) -> str:
    # Offset by one so that no node gets a network address (10.0.0.0).
    n = i + 1
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def fleet_registrations(
    *, services: int, instances: int, nodes: int, seed: int
) -> Iterator[dict[str, Any]]:
    """One register body per instance; instances of a service land on consecutive nodes."""
    if services < 0 or instances < 0 or nodes < 1:
        raise ValueError("services and instances must be >= 0 and nodes >= 1")
    rng = random.Random(seed)
    node_records = [_node_record(i, rng) for i in range(nodes)]
    slot = 0
    for s in range(services):
        name = service_name(s)
        tags = sorted(rng.sample(_TAG_POOL, rng.randint(1, 3)))
        meta = {"team": rng.choice(_TEAMS), "version": f"1.{rng.randint(0, 9)}.0"}
        base_port = 8000 + rng.randint(0, 999)
        for k in range(instances):
            record = node_records[slot % nodes]
            slot += 1
            service_id = f"{name}-{k}"
            body = dict(record)
            body["Service"] = {
                "ID": service_id,
                "Service": name,
                "Tags": tags,
                # Every other instance leaves Address empty, so the node address is used.
                "Address": record["Address"] if k % 2 else "",
                "Port": base_port + k,
                "Meta": meta,
            }
            body["Check"] = {
                "CheckID": f"service:{service_id}",
                "Name": f"Service '{name}' check",
                "Status": "passing",
                "ServiceID": service_id,
            }
            yield body


def _node_record(i: int, rng: random.Random) -> dict[str, Any]:
    address = node_address(i)
    return {
        "ID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "Node": node_name(i),
        "Address": address,
        "TaggedAddresses": {"lan": address, "lan_ipv4": address, "wan": address},
        "NodeMeta": {"rack": f"r{i % 8}", "zone": _ZONES[i % len(_ZONES)]},
    }
