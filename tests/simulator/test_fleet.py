"""``generate``: a deterministic synthetic fleet."""

from __future__ import annotations

import json
import re

from consul_simulator import ConsulSimulator

from .conftest import Client


def fleet(seed: int) -> ConsulSimulator:
    sim = ConsulSimulator(jitter=False)
    sim.generate(services=12, instances=3, nodes=5, seed=seed)
    return sim


def test_the_same_seed_generates_the_same_fleet_and_another_seed_does_not() -> None:
    one, again, other = fleet(1), fleet(1), fleet(2)
    bodies = [
        (s.catalog.services_body(), [s.catalog.health_body(n) for n in sorted(s.catalog.by_name)])
        for s in (one, again, other)
    ]
    assert bodies[0] == bodies[1]
    assert bodies[0] != bodies[2]


async def test_a_generated_fleet_has_the_requested_shape(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.generate(services=12, instances=3, nodes=5, seed=1)
    services = (await client.get("/v1/catalog/services")).json()
    assert list(services) == [f"svc-{i:05d}" for i in range(12)]
    assert all(1 <= len(tags) <= 3 for tags in services.values())
    nodes = (await client.get("/v1/catalog/nodes")).json()
    assert [n["Node"] for n in nodes] == [f"node-{i:03d}" for i in range(5)]
    assert all(re.fullmatch(r"10\.\d+\.\d+\.\d+", n["Address"]) for n in nodes)
    for name in services:
        entries = (await client.get(f"/v1/health/service/{name}")).json()
        assert len(entries) == 3
        assert len({e["Node"]["Node"] for e in entries}) == 3  # spread over nodes
        assert all([c["Status"] for c in e["Checks"]] == ["passing"] for e in entries)
        assert all(e["Service"]["Port"] > 0 and e["Service"]["Meta"] for e in entries)
        assert len({json.dumps(e["Service"]["Tags"]) for e in entries}) == 1
