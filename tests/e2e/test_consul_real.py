"""Engine behaviour that rests on real Consul semantics, checked against a real agent."""

from __future__ import annotations

import uuid

import pytest

from consul_sd.consul import ConsulClient, ConsulEndpoint
from consul_sd.workers import DiscoveryQuery, read_change_gate
from tests.support.components import ConsulAgent

pytestmark = pytest.mark.e2e


def register(agent: ConsulAgent, body: dict[str, object]) -> None:
    answer = agent.request("PUT", "/v1/catalog/register", body=body)
    assert answer.status == 200, answer.text


async def gate(agent: ConsulAgent) -> tuple[int, int, int]:
    endpoint = ConsulEndpoint(server=agent.address)
    async with ConsulClient(endpoint=endpoint, max_connections=2) as client:
        services, index = await client.list_services()
        assert services  # the filters below must not have hidden a real answer
        found = await read_change_gate(
            query=DiscoveryQuery(datacenter="dc1"), client=client, services_index=index
        )
    assert found is not None, "the agent refused the gate's filters"
    return found


async def test_the_polling_gate_sees_every_kind_of_change_on_a_real_agent(
    consul_agent: ConsulAgent,
) -> None:
    node = f"gate-{uuid.uuid4().hex[:6]}"
    check = {"CheckID": f"{node}-c", "Name": "c", "Status": "passing", "ServiceID": f"{node}-s"}
    service = {"ID": f"{node}-s", "Service": f"{node}-svc", "Port": 80}
    register(
        consul_agent, {"Node": node, "Address": "10.3.0.1", "Service": service, "Check": check}
    )
    start = await gate(consul_agent)
    assert await gate(consul_agent) == start  # nothing changed: the gate stays shut

    register(
        consul_agent,
        {"Node": node, "Address": "10.3.0.1", "Check": {**check, "Status": "critical"}},
    )
    flipped = await gate(consul_agent)
    assert flipped[1] > start[1]  # the checks index moved
    assert flipped[0] == start[0]  # a check flip does not move the services index

    register(consul_agent, {"Node": node, "Address": "10.3.0.2", "SkipNodeUpdate": False})
    moved = await gate(consul_agent)
    assert moved[2] > flipped[2]  # the nodes index moved

    register(
        consul_agent, {"Node": node, "Address": "10.3.0.2", "Service": {**service, "Port": 81}}
    )
    changed = await gate(consul_agent)
    assert changed[0] > moved[0]  # a changed service definition moves the services index
