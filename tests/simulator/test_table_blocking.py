"""Blocking queries on the table-level reads, in virtual time: where they wake and what they answer.

The same behaviour is checked against a real Consul 1.16 agent by
tests/oracle/test_table_watch_parity.py; these keep it in the fast suite.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest

from consul_simulator import ConsulSimulator

from .conftest import Client, Reply, instance_body, node_body


async def parked(
    client: Client, path: str, *, index: int, wait: str, write: Callable[[], object]
) -> tuple[Reply, float]:
    """A long-poll on ``path`` at ``index``; ``write`` is made 10 s after it parked."""

    async def later() -> None:
        await asyncio.sleep(10)
        write()

    loop = asyncio.get_running_loop()
    writer = asyncio.create_task(later())
    start = loop.time()
    reply = await client.get(path, params={"index": str(index), "wait": wait})
    await writer
    return reply, loop.time() - start


@pytest.mark.looptime
async def test_a_state_list_with_rows_ignores_a_passing_only_write_and_answers_its_old_index(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("db", node="node-b", status="critical"))
    index = (await client.get("/v1/health/state/critical")).index
    reply, elapsed = await parked(
        client,
        "/v1/health/state/critical",
        index=index,
        wait="60s",
        write=lambda: sim.register(instance_body("web")),
    )
    assert elapsed == pytest.approx(60, abs=0.5)
    assert reply.index == index  # the checks index moved, but no watch re-read it
    assert sim.catalog.table_index["checks"] > index


@pytest.mark.looptime
async def test_an_empty_state_list_wakes_on_any_check_write(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("db", node="node-b"))
    index = (await client.get("/v1/health/state/warning")).index
    reply, elapsed = await parked(
        client,
        "/v1/health/state/warning",
        index=index,
        wait="60s",
        write=lambda: sim.register(instance_body("web")),
    )
    assert elapsed == pytest.approx(10, abs=0.5)
    assert reply.index > index
    assert reply.json() == []


@pytest.mark.looptime
async def test_a_state_list_wakes_when_a_check_leaves_the_state(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("db", node="node-b", status="critical"))
    index = (await client.get("/v1/health/state/critical")).index
    reply, elapsed = await parked(
        client,
        "/v1/health/state/critical",
        index=index,
        wait="60s",
        write=lambda: sim.set_check_status(
            node="node-b", check_id="service:db-1", status="passing"
        ),
    )
    assert elapsed == pytest.approx(10, abs=0.5)
    assert reply.json() == []


@pytest.mark.looptime
async def test_a_node_meta_services_list_wakes_only_for_nodes_carrying_the_pair(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web", node="node-a", node_meta={"rack": "r1"}))
    sim.register(instance_body("web", node="node-b", service_id="web-2", node_meta={"rack": "r2"}))
    path = "/v1/catalog/services?node-meta=rack:r1"
    index = (await client.get(path)).index
    elsewhere = instance_body("web", node="node-b", service_id="web-3", node_meta={"rack": "r2"})
    reply, elapsed = await parked(
        client, path, index=index, wait="60s", write=lambda: sim.register(elsewhere)
    )
    assert elapsed == pytest.approx(60, abs=0.5)
    assert reply.index == index
    # The services index moved unseen, so a client asking at the same index is answered at
    # once (as by Consul); it asks at the index a plain read gives.
    index = (await client.get(path)).index
    moved = node_body("node-a", Address="10.9.0.1", NodeMeta={"rack": "r1"})
    reply, elapsed = await parked(
        client, path, index=index, wait="60s", write=lambda: sim.register(moved)
    )
    assert elapsed == pytest.approx(10, abs=0.5)
    assert reply.index == sim.catalog.table_index["nodes"]


@pytest.mark.looptime
async def test_after_the_index_goes_back_a_reset_client_sees_every_later_change(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    before = (await client.get("/v1/catalog/services")).index
    sim.faults.index_backwards = True
    for number in (2, 3, 4):
        index = (await client.get("/v1/catalog/services")).index
        assert index < before
        write = instance_body("web", service_id=f"web-{number}")
        reply, elapsed = await parked(
            client,
            "/v1/catalog/services",
            index=index,
            wait="60s",
            write=functools.partial(sim.register, write),
        )
        assert elapsed == pytest.approx(10, abs=0.5)
        assert reply.index == index + 1
