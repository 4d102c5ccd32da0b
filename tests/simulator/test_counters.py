"""Counters: connections, in-flight requests (parked blocking queries included), requests per
endpoint kind, responses per status, and their reset."""

from __future__ import annotations

import asyncio

import pytest

from consul_simulator import ConsulSimulator, Counters

from .conftest import Client, instance_body, until


@pytest.mark.looptime
async def test_peak_in_flight_counts_parallel_parked_blocking_queries(
    sim: ConsulSimulator, client: Client
) -> None:
    parallel = 25
    sim.register(instance_body("web"))
    index = (await client.get("/v1/health/service/web")).index
    await until(lambda: sim.counters.open_connections == 0, what="the first connection to close")
    sim.counters.reset()
    parked = [
        asyncio.create_task(
            client.get("/v1/health/service/web", params={"index": str(index), "wait": "5m"})
        )
        for _ in range(parallel)
    ]
    await until(lambda: sim.counters.in_flight == parallel, what="all queries to park")

    seen = (await client.get("/_sim/counters")).json()

    assert seen["in_flight"] == seen["peak_in_flight"] == parallel
    assert seen["open_connections"] == parallel + 1  # the /_sim request's own connection
    sim.set_check_status(node="node-a", check_id="service:web-1", status="critical")
    replies = await asyncio.gather(*parked)
    assert {r.index for r in replies} == {sim.catalog.service_index["web"]}
    assert sim.counters.in_flight == 0
    assert sim.counters.peak_in_flight == parallel
    assert sim.counters.requests == {"health_service": parallel}
    assert sim.counters.responses_by_status == {200: parallel}


async def test_requests_are_counted_per_endpoint_kind_and_responses_per_status(
    sim: ConsulSimulator, client: Client
) -> None:
    await client.get("/v1/catalog/services")
    await client.get("/v1/health/service/a")
    await client.get("/v1/health/service/b", params={"dc": "elsewhere"})
    await client.get("/v1/catalog/service/a")
    await client.get("/v1/health/state/any")
    await client.get("/v1/catalog/nodes")
    await client.get("/v1/agent/self")
    await client.get("/v1/status/leader")
    await client.put("/v1/catalog/register", body=instance_body("web"))
    await client.put("/v1/catalog/deregister", body={"Node": "node-a"})
    await client.get("/v1/nope")
    assert sim.counters.requests == {
        "catalog_services": 1,
        "health_service": 2,
        "catalog_service": 1,
        "health_state": 1,
        "catalog_nodes": 1,
        "agent_self": 1,
        "status_leader": 1,
        "register": 1,
        "deregister": 1,
        "other": 1,
    }
    assert sim.counters.responses_by_status == {200: 9, 500: 1, 404: 1}
    assert sim.counters.peak_connections >= 1


async def test_reset_zeroes_totals_and_restarts_peaks_from_the_current_gauges(
    client: Client,
) -> None:
    counters = Counters(
        open_connections=3,
        peak_connections=9,
        requests={"register": 4},
        in_flight=2,
        peak_in_flight=7,
        responses_by_status={200: 4},
        connections_refused_429=1,
        resets=2,
    )
    counters.reset()
    assert counters.as_dict() == {
        "open_connections": 3,
        "peak_connections": 3,
        "requests": {},
        "in_flight": 2,
        "peak_in_flight": 2,
        "responses_by_status": {},
        "connections_refused_429": 0,
        "resets": 0,
    }
    await client.get("/v1/status/leader")
    reset = await client.post("/_sim/counters/reset")
    assert reset.json()["requests"] == {}
    assert (await client.get("/_sim/counters")).json()["responses_by_status"] == {}
