"""Raft-style indexes: which writes move which index, as Consul's state store does it."""

from __future__ import annotations

from consul_simulator import ConsulSimulator

from .conftest import Client, instance_body, node_body


async def indexes(client: Client, name: str) -> dict[str, int]:
    return {
        "service": (await client.get(f"/v1/health/service/{name}")).index,
        "catalog_service": (await client.get(f"/v1/catalog/service/{name}")).index,
        "services": (await client.get("/v1/catalog/services")).index,
        "checks": (await client.get("/v1/health/state/any")).index,
        "nodes": (await client.get("/v1/catalog/nodes")).index,
    }


async def test_registering_an_instance_raises_its_service_index_and_the_services_index(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    before = await indexes(client, "web")
    raft = sim.register(instance_body("web", node="node-b", service_id="web-2"))
    after = await indexes(client, "web")
    assert after["service"] == after["catalog_service"] == after["services"] == raft
    assert after["service"] > before["service"]
    assert after["nodes"] == raft  # node-b was new


async def test_a_check_flip_moves_the_service_and_checks_indexes_but_not_the_services_index(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    before = await indexes(client, "web")
    raft = sim.set_check_status(node="node-a", check_id="service:web-1", status="critical")
    after = await indexes(client, "web")
    assert after["service"] == after["catalog_service"] == after["checks"] == raft
    assert after["services"] == before["services"]
    assert after["nodes"] == before["nodes"]


async def test_a_change_to_one_service_leaves_other_services_indexes_alone(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    sim.register(instance_body("db", service_id="db-1"))
    web_before = (await client.get("/v1/health/service/web")).index
    sim.set_check_status(node="node-a", check_id="service:db-1", status="warning")
    sim.register(instance_body("db", service_id="db-2", node="node-b"))
    assert (await client.get("/v1/health/service/web")).index == web_before
    assert (await client.get("/v1/health/service/db")).index > web_before


async def test_a_node_level_check_raises_the_index_of_every_service_on_that_node(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    sim.register(instance_body("db", service_id="db-1"))
    sim.register(instance_body("api", node="node-b", service_id="api-1"))
    api_before = (await client.get("/v1/health/service/api")).index
    raft = sim.register(
        node_body(Check={"CheckID": "serfHealth", "Name": "Serf", "Status": "passing"})
    )
    assert (await client.get("/v1/health/service/web")).index == raft
    assert (await client.get("/v1/health/service/db")).index == raft
    assert (await client.get("/v1/health/service/api")).index == api_before
    entry = (await client.get("/v1/health/service/web")).json()[0]
    # Node-level checks come first, then the instance's own.
    assert [c["CheckID"] for c in entry["Checks"]] == ["serfHealth", "service:web-1"]


async def test_changing_a_node_record_raises_its_services_indexes_and_the_nodes_index(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    services_before = (await client.get("/v1/catalog/services")).index
    raft = sim.register(node_body(NodeMeta={"rack": "r2"}))
    assert (await client.get("/v1/health/service/web")).index == raft
    assert (await client.get("/v1/catalog/nodes")).index == raft
    assert (await client.get("/v1/catalog/services")).index == services_before
    entry = (await client.get("/v1/health/service/web")).json()[0]
    assert entry["Node"]["Meta"] == {"rack": "r2"}
    assert entry["Node"]["ModifyIndex"] == raft
    assert entry["Node"]["CreateIndex"] < raft


async def test_re_registering_an_identical_instance_moves_only_the_raft_index(
    sim: ConsulSimulator, client: Client
) -> None:
    first = sim.register(instance_body("web"))
    before = await indexes(client, "web")
    second = sim.register(instance_body("web"))
    assert second == first + 1
    assert await indexes(client, "web") == before


async def test_deregistering_the_last_instance_answers_empty_with_the_extinction_index(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    sim.register(instance_body("db", service_id="db-1"))
    raft = sim.deregister({"Node": "node-a", "ServiceID": "web-1"})
    reply = await client.get("/v1/health/service/web")
    assert reply.status == 200
    assert reply.json() == []
    assert reply.index == raft
    # A name that never existed reports the same last-extinction index.
    assert (await client.get("/v1/health/service/never-was")).index == raft
    assert "web" not in (await client.get("/v1/catalog/services")).json()
    assert (await client.get("/v1/catalog/services")).index == raft


async def test_deregistering_one_of_two_instances_is_not_an_extinction(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("old", service_id="old-1"))
    extinction = sim.deregister({"Node": "node-a", "ServiceID": "old-1"})
    sim.register(instance_body("web"))
    sim.register(instance_body("web", node="node-b", service_id="web-2"))
    raft = sim.deregister({"Node": "node-b", "ServiceID": "web-2"})
    assert (await client.get("/v1/health/service/web")).index == raft
    assert (await client.get("/v1/health/service/never-was")).index == extinction


async def test_deregistering_a_check_raises_its_service_index(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    raft = sim.deregister({"Node": "node-a", "CheckID": "service:web-1"})
    reply = await client.get("/v1/health/service/web")
    assert reply.index == raft
    assert reply.json()[0]["Checks"] == []
    assert (await client.get("/v1/health/state/any")).index == raft


async def test_deregistering_a_node_removes_its_services_checks_and_record(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    sim.register(instance_body("web", node="node-b", service_id="web-2"))
    raft = sim.deregister({"Node": "node-a"})
    entries = (await client.get("/v1/health/service/web")).json()
    assert [e["Node"]["Node"] for e in entries] == ["node-b"]
    assert [n["Node"] for n in (await client.get("/v1/catalog/nodes")).json()] == ["node-b"]
    assert [c["Node"] for c in (await client.get("/v1/health/state/any")).json()] == ["node-b"]
    assert (await indexes(client, "web")) == {
        "service": raft,
        "catalog_service": raft,
        "services": raft,
        "checks": raft,
        "nodes": raft,
    }


async def test_before_any_extinction_a_missing_service_reports_the_catalog_max_index(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web"))
    raft = sim.set_check_status(node="node-a", check_id="service:web-1", status="warning")
    assert (await client.get("/v1/health/service/never-was")).index == raft
    # The catalog endpoint's fallback leaves the checks table out, as Consul's does.
    assert (await client.get("/v1/catalog/service/never-was")).index == raft - 1


async def test_a_missing_service_never_reports_index_zero(client: Client) -> None:
    reply = await client.get("/v1/health/service/nothing")
    assert reply.status == 200
    assert reply.json() == []
    assert reply.index >= 1
    assert (await client.get("/v1/catalog/services")).index >= 1


async def test_empty_answers_are_empty_json_not_null(client: Client) -> None:
    assert (await client.get("/v1/catalog/services")).body == b"{}"
    for path in (
        "/v1/health/service/x",
        "/v1/catalog/service/x",
        "/v1/health/state/critical",
        "/v1/catalog/nodes",
    ):
        assert (await client.get(path)).body == b"[]", path


async def test_health_entries_have_consuls_shape_with_port_omitted_when_zero(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web", port=None, tags=None))
    reply = await client.get("/v1/health/service/web")
    assert reply.headers["Content-Type"] == "application/json"
    [entry] = reply.json()
    assert set(entry) == {"Node", "Service", "Checks"}
    assert set(entry["Node"]) == {
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "Meta",
        "CreateIndex",
        "ModifyIndex",
    }
    assert entry["Node"]["Datacenter"] == "dc1"
    assert entry["Node"]["TaggedAddresses"] is None
    service = entry["Service"]
    assert "Port" not in service
    assert service["Tags"] == []
    assert service["Meta"] is None
    assert service["Weights"] == {"Passing": 1, "Warning": 1}
    [check] = entry["Checks"]
    assert check["ServiceName"] == "web"
    assert check["Status"] == "passing"
    catalog_row = (await client.get("/v1/catalog/service/web")).json()[0]
    assert catalog_row["ServicePort"] == 0
    assert catalog_row["ServiceName"] == "web"
    assert catalog_row["NodeMeta"] == {"rack": "r1"}


async def test_catalog_services_lists_sorted_unique_tags_per_service(
    sim: ConsulSimulator, client: Client
) -> None:
    sim.register(instance_body("web", tags=["b", "a"]))
    sim.register(instance_body("web", node="node-b", service_id="web-2", tags=["c", "a"]))
    sim.register(instance_body("db", service_id="db-1"))
    assert (await client.get("/v1/catalog/services")).json() == {"db": [], "web": ["a", "b", "c"]}


async def test_a_check_without_status_registers_as_critical(
    sim: ConsulSimulator, client: Client
) -> None:
    body = instance_body("web")
    del body["Check"]["Status"]
    sim.register(body)
    [check] = (await client.get("/v1/health/state/critical")).json()
    assert check["CheckID"] == "service:web-1"


async def test_unknown_paths_answer_404(client: Client) -> None:
    reply = await client.get("/v1/kv/anything")
    assert reply.status == 404
