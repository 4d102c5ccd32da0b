"""Behaviour the conformance oracle (tests/oracle) found the simulator got wrong, now as Consul
1.16.3 does it: registration validation, stored check statuses, and the JSON shapes of rows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consul_simulator import ConsulSimulator, SimulatedConsulError

from .conftest import Client, instance_body, node_body


def _service(**service: Any) -> dict[str, Any]:
    return node_body(Service={"Service": "p", **service})


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"app.kubernetes.io/name": "x"}, "('app.kubernetes.io/name', 'x'): Key contains invalid"),
        ({"a/b": "x"}, "('a/b', 'x'): Key contains invalid characters"),
        ({"": "x"}, "('', 'x'): Key cannot be blank"),
        ({"k" * 129: "x"}, "Key is too long (limit: 128 characters)"),
        ({"k": "v" * 513}, "Value is too long (limit: 512 characters)"),
        ({"consul-x": "1"}, "('consul-x', '1'): Key prefix 'consul-' is reserved for internal use"),
        (
            {f"k{i}": "v" for i in range(65)},
            "Node metadata cannot contain more than 64 key/value pairs",
        ),
    ],
)
async def test_service_meta_is_validated_as_consul_validates_it(
    sim: ConsulSimulator, client: Client, meta: dict[str, str], reason: str
) -> None:
    raft_before = sim.catalog.raft_index
    reply = await client.put("/v1/catalog/register", body=_service(ID="p-1", Meta=meta))
    assert reply.status == 500
    prefix = "failed inserting service: Invalid Service Meta for node node-a and serviceID p-1: "
    assert reply.text.startswith(prefix)
    assert reason in reply.text
    assert sim.catalog.raft_index == raft_before
    assert "p" not in sim.catalog.by_name


async def test_valid_service_meta_passes_and_node_meta_is_not_restricted(
    sim: ConsulSimulator, client: Client
) -> None:
    body = _service(ID="p-1", Meta={"a-b_C9": "", "k": "v" * 512})
    body["NodeMeta"] = {"topology.kubernetes.io/zone": "z", "consul-x": "1"}
    assert (await client.put("/v1/catalog/register", body=body)).status == 200
    gateway = _service(ID="gw", Kind="mesh-gateway", Meta={"consul-wan-federation": "1"})
    assert (await client.put("/v1/catalog/register", body=gateway)).status == 200


async def test_a_check_status_consul_does_not_know_is_stored_and_none_means_critical(
    sim: ConsulSimulator, client: Client
) -> None:
    body = instance_body("web", status="degraded")
    body["Checks"] = [{"CheckID": "unset", "Name": "no status"}]
    assert (await client.put("/v1/catalog/register", body=body)).status == 200
    [entry] = (await client.get("/v1/health/service/web")).json()
    assert {c["CheckID"]: c["Status"] for c in entry["Checks"]} == {
        "unset": "critical",
        "service:web-1": "degraded",
    }
    assert [c["CheckID"] for c in (await client.get("/v1/health/state/degraded")).json()] == [
        "service:web-1"
    ]


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "[::]"])
async def test_an_any_address_is_refused_as_a_service_address(client: Client, address: str) -> None:
    reply = await client.put("/v1/catalog/register", body=_service(Address=address))
    assert (reply.status, reply.text) == (500, "Invalid service address")


@pytest.mark.parametrize(
    ("node_id", "message"),
    [
        ("not-a-uuid", "Bad node ID: uuid string is wrong length"),
        ("12345678x1234-1234-1234-123456789012", "Bad node ID: uuid is improperly formatted"),
        (
            "12345678-1234-1234-1234-12345678901z",
            "Bad node ID: encoding/hex: invalid byte: U+007A 'z'",
        ),
    ],
)
async def test_a_node_id_must_be_a_uuid(
    sim: ConsulSimulator, client: Client, node_id: str, message: str
) -> None:
    reply = await client.put("/v1/catalog/register", body=node_body(ID=node_id))
    assert (reply.status, reply.text) == (500, message)
    assert sim.catalog.nodes == {}
    good = node_body(ID="12345678-1234-1234-1234-123456789abc")
    assert (await client.put("/v1/catalog/register", body=good)).status == 200


async def test_refusals_carry_consul_s_messages_in_consul_s_order(client: Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            _service(ID="p-1", Service=None),
            "Must provide service name (Service.Service) when service ID is provided",
        ),
        (
            node_body(Check={"CheckID": "c", "Node": "other"}),
            "Node 'other' for check 'c' doesn't match register request node 'node-a'",
        ),
        (
            node_body(Check={"CheckID": "c", "ServiceID": "nope"}),
            "Unknown service ID 'nope' for check ID 'c'",
        ),
        # The datacenter is checked first, then the node ID, then the address.
        ({"Node": "n", "Datacenter": "dc9", "ID": "bad"}, "No path to datacenter"),
        ({"Node": "n", "ID": "bad"}, "Bad node ID: uuid string is wrong length"),
    ]
    for body, message in cases:
        reply = await client.put("/v1/catalog/register", body=body)
        assert (reply.status, reply.text) == (500, message), body


async def test_rows_have_consul_s_shape_for_meta_locality_and_peer_name(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(node_body(NodeMeta={"z": "1", "a": "2"}, Service={"ID": "db-1", "Service": "db"}))
    sim.register(instance_body("web", node="node-b", meta={"zz": "1", "aa": "2"}))
    [row] = (await client.get("/v1/catalog/service/db")).json()
    assert row["ServiceMeta"] == {}  # the catalog shows no meta as {}, the health endpoint as null
    assert list(row)[-3:] == ["ServiceLocality", "CreateIndex", "ModifyIndex"]
    assert row["ServiceLocality"] is None
    [entry] = (await client.get("/v1/health/service/db")).json()
    assert entry["Service"]["Meta"] is None
    assert list(entry["Service"])[-3:] == ["PeerName", "CreateIndex", "ModifyIndex"]
    assert entry["Service"]["PeerName"] == ""
    # Go writes map keys sorted, whatever order they were registered in.
    body = (await client.get("/v1/health/service/web")).body
    assert body.index(b'"aa"') < body.index(b'"zz"')
    nodes = json.loads((await client.get("/v1/catalog/nodes")).body)
    assert [list(node["Meta"]) for node in nodes] == [["a", "z"], ["rack"]]


async def test_the_python_register_applies_the_same_validation(sim: ConsulSimulator) -> None:
    with pytest.raises(SimulatedConsulError) as caught:
        sim.register(_service(Meta={"a.b": "x"}))
    assert caught.value.status == 500
    assert "Key contains invalid characters" in caught.value.message
