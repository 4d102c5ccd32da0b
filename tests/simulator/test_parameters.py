"""Query parameters and headers of the read endpoints: dc, ns, stale, node-meta, tag, passing,
filter, and the X-Consul-* headers."""

from __future__ import annotations

import pytest

from consul_simulator import ConsulSimulator

from .conftest import Client, instance_body, node_body


@pytest.fixture
def fleet(sim: ConsulSimulator) -> ConsulSimulator:
    """web on node-a (rack r1, passing) and node-b (rack r2, critical); db on node-b."""
    sim.register(instance_body("web", tags=["Prod", "http"], meta={"env": "prod"}))
    sim.register(
        node_body("node-b", NodeMeta={"rack": "r2"}, Address="10.1.0.2")
        | {
            "Service": {"ID": "web-2", "Service": "web", "Tags": ["canary"], "Port": 9090},
            "Check": {"CheckID": "web-2", "Name": "w", "Status": "critical", "ServiceID": "web-2"},
        }
    )
    sim.register(
        instance_body(
            "db", node="node-b", service_id="db-1", tags=["sql"], node_meta={"rack": "r2"}
        )
        | {"Address": "10.1.0.2"}
    )
    return sim


def nodes_of(entries: list[dict[str, dict[str, str]]]) -> list[str]:
    return [e["Node"]["Node"] for e in entries]


async def test_read_answers_carry_consuls_headers_in_go_canonical_case(
    fleet: ConsulSimulator, client: Client
) -> None:
    reply = await client.get("/v1/health/service/web")
    raw_names = {name for name, _ in reply.headers.items()}
    assert {"X-Consul-Index", "X-Consul-Knownleader", "X-Consul-Lastcontact"} <= raw_names
    assert reply.headers["X-Consul-Knownleader"] == "true"
    assert reply.headers["X-Consul-Lastcontact"] == "0"
    assert reply.headers["X-Consul-Effective-Consistency"] == "leader"
    assert reply.headers["Content-Type"] == "application/json"
    stale = await client.get("/v1/health/service/web", params={"stale": ""})
    assert stale.headers["X-Consul-Effective-Consistency"] == "stale"


async def test_other_datacenter_is_no_path_and_own_datacenter_is_fine(
    fleet: ConsulSimulator, client: Client
) -> None:
    reply = await client.get("/v1/health/service/web", params={"dc": "dc2"})
    assert (reply.status, reply.text) == (500, "No path to datacenter")
    assert (await client.get("/v1/catalog/services", params={"dc": "dc1"})).status == 200


@pytest.mark.parametrize(
    ("params", "headers", "message"),
    [
        ({"ns": "team-a"}, {}, '"ns" - Namespaces are a Consul Enterprise feature'),
        ({"partition": "p1"}, {}, '"partition" - Partitions are a Consul Enterprise feature'),
        ({}, {"X-Consul-Namespace": "team-a"}, "Namespaces are a Consul Enterprise feature"),
    ],
)
async def test_namespaces_and_partitions_are_rejected_like_consul_ce(
    client: Client, params: dict[str, str], headers: dict[str, str], message: str
) -> None:
    reply = await client.get("/v1/health/service/web", params=params, headers=headers)
    assert reply.status == 400
    assert message in reply.text


async def test_node_meta_keeps_only_instances_on_matching_nodes(
    fleet: ConsulSimulator, client: Client
) -> None:
    health = await client.get("/v1/health/service/web", params={"node-meta": "rack:r2"})
    assert nodes_of(health.json()) == ["node-b"]
    catalog = await client.get("/v1/catalog/service/web", params=[("node-meta", "rack:r1")])
    assert [row["Node"] for row in catalog.json()] == ["node-a"]
    services = await client.get("/v1/catalog/services", params={"node-meta": "rack:r1"})
    assert services.json() == {"web": ["Prod", "http"]}
    nodes = await client.get("/v1/catalog/nodes", params=[("node-meta", "rack:r2")])
    assert [n["Node"] for n in nodes.json()] == ["node-b"]
    # Every pair must match; a repeated key keeps its last value, as Consul's map does.
    none = await client.get(
        "/v1/health/service/web", params=[("node-meta", "rack:r1"), ("node-meta", "zone:z1")]
    )
    assert none.json() == []
    last = await client.get(
        "/v1/health/service/web", params=[("node-meta", "rack:r1"), ("node-meta", "rack:r2")]
    )
    assert nodes_of(last.json()) == ["node-b"]


async def test_tag_keeps_instances_carrying_all_tags_case_insensitively(
    fleet: ConsulSimulator, client: Client
) -> None:
    one = await client.get("/v1/health/service/web", params=[("tag", "prod"), ("tag", "HTTP")])
    assert nodes_of(one.json()) == ["node-a"]
    catalog = await client.get("/v1/catalog/service/web", params={"tag": "canary"})
    assert [row["Node"] for row in catalog.json()] == ["node-b"]
    none = await client.get("/v1/health/service/web", params=[("tag", "prod"), ("tag", "canary")])
    assert none.json() == []


async def test_passing_keeps_only_instances_whose_checks_all_pass(
    fleet: ConsulSimulator, client: Client
) -> None:
    assert nodes_of(
        (await client.get("/v1/health/service/web", params={"passing": ""})).json()
    ) == ["node-a"]
    everyone = await client.get("/v1/health/service/web", params={"passing": "false"})
    assert nodes_of(everyone.json()) == ["node-a", "node-b"]
    bad = await client.get("/v1/health/service/web", params={"passing": "maybe"})
    assert (bad.status, bad.text) == (400, "Invalid value for ?passing")


async def test_a_node_level_warning_makes_an_instance_not_passing(
    fleet: ConsulSimulator, client: Client
) -> None:
    fleet.register(node_body(Check={"CheckID": "disk", "Name": "disk", "Status": "warning"}))
    reply = await client.get("/v1/health/service/web", params={"passing": "1"})
    assert reply.json() == []


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Service.Meta.env == "prod"', ["node-a"]),
        ("Checks.Status == critical", ["node-b"]),
        ('"canary" in Service.Tags', ["node-b"]),
        ("Service.Tags not contains `canary`", ["node-a"]),
        ("Service.Port == 9090 or Node.Meta.rack == r1", ["node-a", "node-b"]),
        ('not (Node.Node matches "-a$")', ["node-b"]),
        ("Service.Meta is empty", ["node-b"]),
    ],
)
async def test_health_filter_selects_entries_like_bexpr(
    fleet: ConsulSimulator, client: Client, expression: str, expected: list[str]
) -> None:
    reply = await client.get("/v1/health/service/web", params={"filter": expression})
    assert reply.status == 200, reply.text
    assert nodes_of(reply.json()) == expected


async def test_catalog_filters_apply_to_service_node_rows(
    fleet: ConsulSimulator, client: Client
) -> None:
    rows = await client.get("/v1/catalog/service/web", params={"filter": "ServicePort == 9090"})
    assert [r["ServiceID"] for r in rows.json()] == ["web-2"]
    # The services list keeps services with a matching row, with the tags of those rows only.
    services = await client.get("/v1/catalog/services", params={"filter": 'NodeMeta.rack == "r2"'})
    assert services.json() == {"db": ["sql"], "web": ["canary"]}
    assert services.index == (await client.get("/v1/catalog/services")).index
    checks = await client.get("/v1/health/state/any", params={"filter": 'ServiceName == "db"'})
    assert [c["CheckID"] for c in checks.json()] == ["service:db-1"]
    nodes = await client.get("/v1/catalog/nodes", params={"filter": "Address == `10.1.0.2`"})
    assert [n["Node"] for n in nodes.json()] == ["node-b"]


@pytest.mark.parametrize(
    "expression",
    ["Service.Meta.env ==", "NoSuchField == x", "Service.Tags == prod", "(Node.Node == a"],
)
async def test_an_invalid_filter_is_refused_with_a_500_as_consul_1_16_does(
    fleet: ConsulSimulator, client: Client, expression: str
) -> None:
    # Checked against a real 1.16.3 agent (tests/oracle): not a 400.
    reply = await client.get("/v1/health/service/web", params={"filter": expression})
    assert reply.status == 500
    assert reply.text.startswith("Failed to create boolean expression evaluator")


async def test_health_state_lists_checks_in_the_requested_state(
    fleet: ConsulSimulator, client: Client
) -> None:
    critical = await client.get("/v1/health/state/critical")
    assert [c["CheckID"] for c in critical.json()] == ["web-2"]
    passing = await client.get("/v1/health/state/passing")
    # Ordered by node, then check ID, like the memdb index Consul walks.
    assert [c["CheckID"] for c in passing.json()] == ["service:web-1", "service:db-1"]
    assert len((await client.get("/v1/health/state/any")).json()) == 3


async def test_agent_self_and_status_leader_answer_like_a_server_agent(client: Client) -> None:
    agent = (await client.get("/v1/agent/self")).json()
    assert agent["Config"]["Datacenter"] == "dc1"
    assert agent["Config"]["NodeName"] == "sim"
    assert agent["Config"]["Version"] == "1.16.4-sim"
    assert agent["Member"]["Name"] == "sim"
    leader = await client.get("/v1/status/leader")
    assert leader.body == b'"127.0.0.1:8300"'


async def test_reads_with_the_wrong_method_are_refused(client: Client) -> None:
    reply = await client.put("/v1/health/service/web", body={})
    assert (reply.status, reply.text) == (405, "method PUT not allowed")
