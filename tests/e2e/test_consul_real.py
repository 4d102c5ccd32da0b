"""Engine behaviour that rests on real Consul semantics, checked against a real agent."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import pytest

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.gate import ChangeGate, changed_services, read_change_gate
from consul_sd.discovery.query import DiscoveryQuery
from tests.support.components import ConsulAgent

pytestmark = pytest.mark.e2e


def register(agent: ConsulAgent, body: Mapping[str, object]) -> None:
    answer = agent.request("PUT", "/v1/catalog/register", body=body)
    assert answer.status == 200, answer.text


async def gate(agent: ConsulAgent) -> ChangeGate:
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
    assert flipped.checks > start.checks
    assert flipped.services == start.services  # a check flip does not move the services index

    register(consul_agent, {"Node": node, "Address": "10.3.0.2", "SkipNodeUpdate": False})
    moved = await gate(consul_agent)
    assert moved.nodes > flipped.nodes

    register(
        consul_agent, {"Node": node, "Address": "10.3.0.2", "Service": {**service, "Port": 81}}
    )
    changed = await gate(consul_agent)
    assert changed.services > moved.services  # a changed service definition moves it


async def narrowed(agent: ConsulAgent, *, before: ChangeGate) -> tuple[set[str] | None, ChangeGate]:
    """What a polling cycle would fetch again after ``before``, and the gate it read."""
    now = await gate(agent)
    endpoint = ConsulEndpoint(server=agent.address)
    async with ConsulClient(endpoint=endpoint, max_connections=2) as client:
        changed = await changed_services(
            before=before, now=now, query=DiscoveryQuery(datacenter="dc1"), client=client
        )
    return (None if changed is None else changed.services), now


async def test_the_polling_gate_names_the_services_a_change_touches_on_a_real_agent(
    consul_agent: ConsulAgent,
) -> None:
    node, other = (f"narrow-{uuid.uuid4().hex[:6]}-{i}" for i in range(2))
    web, db, far = (f"{node}-{name}" for name in ("web", "db", "far"))

    def instance(service: str, on: str, *, status: str = "passing", output: str = "") -> None:
        check = {"CheckID": f"{service}-c", "Name": "c", "ServiceID": service}
        body = {
            "Node": on,
            "Address": "10.4.0.1",
            "Service": {"ID": service, "Service": service, "Port": 80},
            "Check": {**check, "Status": status, "Output": output},
        }
        register(consul_agent, body)

    instance(web, node)
    instance(db, node)
    instance(far, other)
    start = await gate(consul_agent)

    instance(web, node, status="critical")
    changed, flipped = await narrowed(consul_agent, before=start)
    assert changed == {web}

    instance(web, node, status="critical", output="still down")  # no label can change
    assert (await narrowed(consul_agent, before=flipped))[0] == set()

    instance(web, node, status="passing")  # leaves the unhealthy set
    recovered, now = await narrowed(consul_agent, before=flipped)
    assert recovered == {web}

    register(
        consul_agent,
        {
            "Node": node,
            "Address": "10.4.0.1",
            "Check": {"CheckID": "serfHealth", "Name": "Serf", "Status": "critical"},
        },
    )
    assert (await narrowed(consul_agent, before=now))[0] == {web, db}  # a node check
    now = await gate(consul_agent)

    register(consul_agent, {"Node": node, "Address": "10.4.0.9", "NodeMeta": {"rack": "r1"}})
    assert (await narrowed(consul_agent, before=now))[0] == {web, db}  # a node's address/meta
    now = await gate(consul_agent)

    register(
        consul_agent,
        {
            "Node": other,
            "Address": "10.4.0.1",
            "Check": {"CheckID": "_node_maintenance", "Name": "m", "Status": "critical"},
        },
    )
    assert (await narrowed(consul_agent, before=now))[0] == {far}  # maintenance
    now = await gate(consul_agent)

    instance(f"{node}-new", other)
    assert (await narrowed(consul_agent, before=now))[0] is None  # a registration: any service
