"""Blocking queries (``?index=&wait=``), run in looptime's virtual time so minutes take no time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from consul_simulator import ConsulSimulator

from .conftest import Client, Reply, instance_body, until


def later(delay: float, action: Callable[[], object]) -> asyncio.Task[None]:
    async def run() -> None:
        await asyncio.sleep(delay)
        action()

    return asyncio.create_task(run())


async def timed(call: Awaitable[Reply]) -> tuple[Reply, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await call
    return reply, loop.time() - start


@pytest.mark.looptime
async def test_blocking_query_returns_when_the_service_changes(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    index = (await client.get("/v1/health/service/web")).index
    flip = later(
        10, lambda: sim.set_check_status(node="node-a", check_id="service:web-1", status="critical")
    )
    reply, elapsed = await timed(
        client.get("/v1/health/service/web", params={"index": str(index), "wait": "5m"})
    )
    await flip
    assert reply.status == 200
    assert reply.index > index
    assert reply.json()[0]["Checks"][0]["Status"] == "critical"
    assert elapsed == pytest.approx(10, abs=0.5)


@pytest.mark.looptime
async def test_blocking_query_times_out_after_wait_with_the_same_index(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    index = (await client.get("/v1/health/service/web")).index
    reply, elapsed = await timed(
        client.get("/v1/health/service/web", params={"index": str(index), "wait": "30000ms"})
    )
    assert reply.status == 200
    assert reply.index == index
    assert len(reply.json()) == 1
    assert elapsed == pytest.approx(30, abs=0.5)


@pytest.mark.looptime
async def test_blocking_query_ignores_changes_to_other_services(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    sim.register(instance_body("db", service_id="db-1"))
    index = (await client.get("/v1/health/service/web")).index
    flip = later(
        5, lambda: sim.set_check_status(node="node-a", check_id="service:db-1", status="critical")
    )
    reply, elapsed = await timed(
        client.get("/v1/health/service/web", params={"index": str(index), "wait": "1m"})
    )
    await flip
    assert reply.index == index
    assert elapsed == pytest.approx(60, abs=0.5)


@pytest.mark.looptime
async def test_catalog_services_blocking_query_ignores_check_flips_but_wakes_on_registration(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    index = (await client.get("/v1/catalog/services")).index
    later(
        5, lambda: sim.set_check_status(node="node-a", check_id="service:web-1", status="warning")
    )
    later(20, lambda: sim.register(instance_body("db", service_id="db-1")))
    reply, elapsed = await timed(
        client.get("/v1/catalog/services", params={"index": str(index), "wait": "2m"})
    )
    assert elapsed == pytest.approx(20, abs=0.5)
    assert set(reply.json()) == {"web", "db"}
    assert reply.index > index


@pytest.mark.looptime
async def test_blocking_on_a_missing_service_returns_when_it_is_registered(
    sim: ConsulSimulator, client: Client
) -> None:
    index = (await client.get("/v1/health/service/web")).index
    later(7, lambda: sim.register(instance_body("web")))
    reply, elapsed = await timed(
        client.get("/v1/health/service/web", params={"index": str(index), "wait": "1m"})
    )
    assert elapsed == pytest.approx(7, abs=0.5)
    assert len(reply.json()) == 1


@pytest.mark.looptime
async def test_blocking_query_answers_at_once_when_the_index_is_already_past(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    index = (await client.get("/v1/health/service/web")).index
    reply, elapsed = await timed(
        client.get("/v1/health/service/web", params={"index": str(index - 1), "wait": "1m"})
    )
    assert reply.index == index
    assert elapsed < 0.5


@pytest.mark.looptime
async def test_wait_defaults_to_five_minutes_and_is_capped_at_ten(
    sim: ConsulSimulator, client: Client
) -> None:
    index = (await client.get("/v1/catalog/nodes")).index
    _, default_wait = await timed(client.get("/v1/catalog/nodes", params={"index": str(index)}))
    _, capped_wait = await timed(
        client.get("/v1/catalog/nodes", params={"index": str(index), "wait": "1h"})
    )
    assert default_wait == pytest.approx(300, abs=0.5)
    assert capped_wait == pytest.approx(600, abs=0.5)


@pytest.mark.looptime
async def test_jitter_adds_up_to_a_sixteenth_of_the_wait(client: Client) -> None:
    async with ConsulSimulator(jitter=True, seed=3) as jittery:
        base = client.base
        client.base = f"http://{jittery.address}"
        try:
            index = (await client.get("/v1/catalog/nodes")).index
            waits = [
                (
                    await timed(
                        client.get(
                            "/v1/catalog/nodes", params={"index": str(index), "wait": "160s"}
                        )
                    )
                )[1]
                for _ in range(3)
            ]
        finally:
            client.base = base
    assert all(160 <= w <= 170.5 for w in waits), waits
    assert len({round(w, 3) for w in waits}) > 1, "jitter should vary between queries"


async def test_an_unparsable_wait_or_index_is_a_bad_request(client: Client) -> None:
    reply = await client.get("/v1/catalog/nodes", params={"index": "1", "wait": "30"})
    assert (reply.status, reply.text) == (400, "Invalid wait time")
    reply = await client.get("/v1/catalog/nodes", params={"index": "x"})
    assert (reply.status, reply.text) == (400, "Invalid index")


@pytest.mark.looptime
async def test_stopping_the_simulator_answers_parked_queries(
    sim: ConsulSimulator, client: Client
) -> None:
    index = (await client.get("/v1/catalog/nodes")).index
    parked = asyncio.create_task(
        client.get("/v1/catalog/nodes", params={"index": str(index), "wait": "10m"})
    )
    await until(lambda: sim.counters.in_flight == 1, what="the query to park")
    await sim.stop()
    reply = await parked
    assert reply.status == 200
    assert reply.index == index
