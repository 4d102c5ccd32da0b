"""The catalog writes: PUT /v1/catalog/register and /deregister over HTTP behave exactly like
``sim.register``/``sim.deregister``, with Consul's validation errors."""

from __future__ import annotations

from typing import Any

import pytest

from consul_simulator import ConsulSimulator, SimulatedConsulError

from .conftest import Client, instance_body, node_body

BODIES: list[dict[str, Any]] = [
    instance_body("web", tags=["a"], meta={"k": "v"}),
    instance_body("web", node="node-b", service_id="web-2", port=None),
    node_body(Check={"CheckID": "serfHealth", "Name": "Serf", "Status": "passing"}),
    node_body(
        "node-c",
        TaggedAddresses={"lan": "10.1.0.3", "wan": "1.2.3.4"},
        Service={
            "Service": "api",
            "Address": "2001:db8::1",
            "Port": 443,
            "TaggedAddresses": {"lan": {"Address": "10.1.0.3", "Port": 443}},
            "Weights": {"Passing": 5, "Warning": 2},
            "Namespace": "team-a",
        },
        Checks=[
            {"CheckID": "api-alive", "Name": "alive", "Status": "warning", "ServiceID": "api"},
            {"Name": "api-ready", "Status": "passing", "ServiceID": "api", "Notes": "n"},
        ],
    ),
]


async def snapshot(client: Client) -> list[tuple[int, bytes]]:
    paths = [
        "/v1/catalog/services",
        "/v1/health/service/web",
        "/v1/health/service/api",
        "/v1/catalog/service/api",
        "/v1/health/state/any",
        "/v1/catalog/nodes",
    ]
    return [((r := await client.get(p)).index, r.body) for p in paths]


async def test_http_register_and_deregister_equal_the_python_methods(
    sim: ConsulSimulator, client: Client
) -> None:
    async with ConsulSimulator(jitter=False) as twin:
        twin_client = Client(client.session, f"http://{twin.address}")
        for body in BODIES:
            sim.register(body)
            reply = await twin_client.put("/v1/catalog/register", body=body)
            assert (reply.status, reply.body) == (200, b"true")
        assert await snapshot(twin_client) == await snapshot(client)
        for body in ({"Node": "node-a", "ServiceID": "web-1"}, {"Node": "node-c"}):
            sim.deregister(body)
            assert (await twin_client.put("/v1/catalog/deregister", body=body)).body == b"true"
        assert await snapshot(twin_client) == await snapshot(client)


async def test_a_registration_is_rendered_with_every_field_it_set(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(BODIES[3])
    [entry] = (await client.get("/v1/health/service/api")).json()
    assert entry["Node"]["TaggedAddresses"] == {"lan": "10.1.0.3", "wan": "1.2.3.4"}
    service = entry["Service"]
    assert service["ID"] == "api"  # defaults to the service name
    assert service["Address"] == "2001:db8::1"
    assert service["Port"] == 443
    assert service["TaggedAddresses"] == {"lan": {"Address": "10.1.0.3", "Port": 443}}
    assert service["Weights"] == {"Passing": 5, "Warning": 2}
    assert service["Namespace"] == "team-a"
    assert [c["CheckID"] for c in entry["Checks"]] == ["api-alive", "api-ready"]
    assert entry["Checks"][1]["Notes"] == "n"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"Address": "10.0.0.1"}, 500, "Must provide node"),
        ({"Node": "n"}, 500, "Must provide address if SkipNodeUpdate is not set"),
        ({"Node": "n", "Address": "a", "Datacenter": "dc9"}, 500, "No path to datacenter"),
        ({"Node": "n", "Address": "a", "Service": {"Port": 1}}, 500, "Must provide service name"),
        (
            {"Node": "n", "Address": "a", "Check": {"Name": "c", "ServiceID": "nope"}},
            500,
            "Unknown service ID 'nope' for check ID 'c'",
        ),
        ({"Node": "n", "Address": "a", "NodeMeta": {"k": 1}}, 400, "Request decode failed"),
    ],
)
async def test_invalid_registrations_are_refused_like_consul(
    sim: ConsulSimulator,
    client: Client,
    body: dict[str, Any],
    status: int,
    message: str,
) -> None:
    raft_before = sim.catalog.raft_index
    reply = await client.put("/v1/catalog/register", body=body)
    assert reply.status == status
    assert reply.text.startswith(message)
    with pytest.raises(SimulatedConsulError) as caught:
        sim.register(body)
    assert caught.value.status == status
    assert sim.catalog.raft_index == raft_before  # a refused write is no raft entry


async def test_writes_refuse_other_methods_and_undecodable_bodies(client: Client) -> None:
    assert (await client.get("/v1/catalog/register")).status == 405
    async with client.session.put(client.base + "/v1/catalog/register", data=b"{not json") as resp:
        assert resp.status == 400
        assert (await resp.text()).startswith("Request decode failed")


async def test_the_check_endpoint_flips_a_check_like_set_check_status(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    reply = await client.put(
        "/_sim/check", body={"Node": "node-a", "CheckID": "service:web-1", "Status": "critical"}
    )
    assert reply.status == 200
    assert reply.json()["Index"] == sim.catalog.service_index["web"]
    [check] = (await client.get("/v1/health/state/critical")).json()
    assert check["CheckID"] == "service:web-1"
    missing = await client.put(
        "/_sim/check", body={"node": "node-a", "check_id": "nope", "status": "passing"}
    )
    assert missing.status == 404
    bad = await client.put(
        "/_sim/check", body={"node": "node-a", "check_id": "service:web-1", "status": "sleepy"}
    )
    assert bad.status == 400
