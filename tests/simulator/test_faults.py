"""Injected faults: connection limit, resets, errors, backwards indexes, broken services, no
leader, latency and slow bodies. Each is switched on through ``sim.faults`` or ``/_sim/faults``."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from consul_simulator import ConsulSimulator

from .conftest import Client, instance_body, node_body, until

TOO_MANY = "Your IP is issuing too many concurrent connections, please rate limit your calls\n"


@pytest.mark.looptime
async def test_connections_past_the_per_client_limit_get_consuls_429_and_are_closed(
    sim: ConsulSimulator, client: Client
) -> None:
    index = (await client.get("/v1/catalog/nodes")).index
    await until(lambda: sim.counters.open_connections == 0, what="the first connection to close")
    sim.faults.max_conns_per_client = 2
    parked = [
        asyncio.create_task(
            client.get("/v1/catalog/nodes", params={"index": str(index), "wait": "1m"})
        )
        for _ in range(2)
    ]
    await until(lambda: sim.counters.in_flight == 2, what="two parked queries")

    refused = await client.get("/v1/status/leader")

    assert refused.status == 429
    assert refused.text == TOO_MANY
    assert refused.headers["Connection"] == "close"
    assert sim.counters.connections_refused_429 == 1
    assert sim.counters.open_connections == 2
    assert "status_leader" not in sim.counters.requests  # the request itself never ran
    sim.register(node_body())
    assert [(await p).status for p in parked] == [200, 200]
    await until(lambda: sim.counters.open_connections == 0, what="parked connections to close")
    assert (await client.get("/v1/status/leader")).status == 200


async def test_reset_rate_aborts_the_connection_without_a_response(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.faults.reset_rate = 1.0
    with pytest.raises(aiohttp.ClientError):
        await client.get("/v1/catalog/services")
    # aiohttp retries an idempotent request once after a disconnect: every attempt was reset.
    assert sim.counters.resets == sim.counters.requests["catalog_services"] >= 1
    assert sim.counters.responses_by_status == {}
    sim.faults.reset_rate = 0.0
    assert (await client.get("/v1/catalog/services")).status == 200


async def test_error_rate_one_answers_every_consul_request_with_the_error_status(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.faults.error_rate = 1.0
    for path in ("/v1/catalog/services", "/v1/health/service/web", "/v1/agent/self"):
        reply = await client.get(path)
        assert (reply.status, reply.text) == (500, "simulated error")
    sim.faults.error_status = 503
    assert (await client.get("/v1/catalog/nodes")).status == 503
    # The control endpoints stay usable so a test can switch the fault off again.
    assert (await client.get("/_sim/counters")).status == 200
    assert sim.counters.responses_by_status == {500: 3, 503: 1}


async def test_a_partial_error_rate_fails_some_requests_and_not_others(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.faults.error_rate = 0.5
    statuses = [(await client.get("/v1/status/leader")).status for _ in range(40)]
    assert 5 < statuses.count(500) < 35
    assert statuses.count(200) == 40 - statuses.count(500)


@pytest.mark.looptime
async def test_index_backwards_reports_a_lower_index_and_parks_a_client_that_keeps_the_old_one(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    before = (await client.get("/v1/health/service/web")).index
    sim.faults.index_backwards = True
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await client.get("/v1/health/service/web", params={"index": str(before), "wait": "30s"})
    assert loop.time() - start == pytest.approx(30, abs=0.5)
    assert 1 <= reply.index < before
    assert (await client.get("/v1/catalog/services")).index < before


async def test_fail_services_breaks_only_the_named_services_endpoints(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    sim.register(instance_body("db", service_id="db-1"))
    sim.faults.fail_services = {"web"}
    for path in ("/v1/health/service/web", "/v1/catalog/service/web"):
        reply = await client.get(path)
        assert (reply.status, reply.text) == (500, "simulated error")
    assert (await client.get("/v1/health/service/db")).status == 200
    assert (await client.get("/v1/catalog/services")).json() == {"db": [], "web": []}


async def test_reset_services_abort_only_the_named_services_connections(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    sim.register(instance_body("db", service_id="db-1"))
    sim.faults.reset_services = {"web"}
    for path in ("/v1/health/service/web", "/v1/catalog/service/web"):
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.get(path)
    assert (await client.get("/v1/health/service/db")).status == 200
    assert (await client.get("/v1/catalog/services")).status == 200


async def test_malformed_services_answer_200_with_invalid_json(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    sim.faults.malformed_services = {"web", "ghost"}
    for path in ("/v1/health/service/web", "/v1/catalog/service/web", "/v1/health/service/ghost"):
        reply = await client.get(path)
        assert reply.status == 200
        assert "X-Consul-Index" in reply.headers
        with pytest.raises(json.JSONDecodeError):
            reply.json()


async def test_without_a_leader_only_stale_reads_work(sim: ConsulSimulator, client: Client) -> None:
    sim.register(instance_body("web"))
    sim.faults.no_leader = True
    default = await client.get("/v1/health/service/web")
    assert (default.status, default.text) == (500, "No cluster leader")
    stale = await client.get("/v1/health/service/web", params={"stale": ""})
    assert stale.status == 200
    assert stale.headers["X-Consul-Knownleader"] == "false"
    assert (await client.get("/v1/status/leader")).body == b'""'
    write = await client.put("/v1/catalog/register", body=instance_body("db"))
    assert (write.status, write.text) == (500, "No cluster leader")


@pytest.mark.looptime
async def test_latency_delays_every_answer(sim: ConsulSimulator, client: Client) -> None:
    sim.faults.latency = 2.5
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert (await client.get("/v1/status/leader")).status == 200
    assert loop.time() - start == pytest.approx(2.5, abs=0.2)


@pytest.mark.looptime
async def test_slow_body_dribbles_the_whole_body_over_the_given_time(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.generate(services=30, instances=2, nodes=3, seed=1)
    expected = (await client.get("/v1/catalog/services")).body
    sim.faults.slow_body = 4.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await client.get("/v1/catalog/services")
    assert loop.time() - start == pytest.approx(4.0, abs=0.5)
    assert reply.body == expected


async def test_faults_can_be_merged_over_http_and_bad_ones_change_nothing(
    sim: ConsulSimulator, client: Client
) -> None:
    reply = await client.put(
        "/_sim/faults", body={"error_rate": 0.25, "fail_services": ["a", "b"], "no_leader": True}
    )
    assert reply.status == 200
    assert reply.json()["fail_services"] == ["a", "b"]
    assert sim.faults.error_rate == 0.25
    assert sim.faults.fail_services == {"a", "b"}
    assert sim.faults.no_leader is True
    bad = await client.put("/_sim/faults", body={"latency": 1, "bogus": 1})
    assert bad.status == 400
    assert sim.faults.latency == 0.0
    assert (await client.put("/_sim/faults", body={"error_rate": 2})).status == 400
