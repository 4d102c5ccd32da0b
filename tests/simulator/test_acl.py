"""ACLs in default-deny mode with one management token (see the package docstring)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from consul_simulator import ConsulSimulator

from .conftest import Client, instance_body

TOKEN = "s3cr3t"


@pytest.fixture
async def acl_client() -> AsyncIterator[tuple[ConsulSimulator, Client]]:
    async with (
        ConsulSimulator(jitter=False, acl_token=TOKEN) as sim,
        aiohttp.ClientSession() as session,
    ):
        sim.register(instance_body("web"))
        yield sim, Client(session, f"http://{sim.address}")


async def test_anonymous_reads_answer_200_with_the_rows_filtered_out(
    acl_client: tuple[ConsulSimulator, Client],
) -> None:
    _, client = acl_client
    for path, empty in (
        ("/v1/catalog/services", {}),
        ("/v1/health/service/web", []),
        ("/v1/catalog/service/web", []),
        ("/v1/health/state/any", []),
        ("/v1/catalog/nodes", []),
    ):
        reply = await client.get(path)
        assert reply.status == 200, path
        assert reply.json() == empty, path
        assert reply.headers["X-Consul-Results-Filtered-By-Acls"] == "true", path
        assert reply.index > 1, path
    nothing_hidden = await client.get("/v1/health/service/unknown")
    assert "X-Consul-Results-Filtered-By-Acls" not in nothing_hidden.headers


async def test_anonymous_agent_self_and_writes_are_permission_denied(
    acl_client: tuple[ConsulSimulator, Client],
) -> None:
    _, client = acl_client
    agent = await client.get("/v1/agent/self")
    assert agent.status == 403
    assert agent.text.startswith("Permission denied: token with AccessorID")
    assert "agent:read" in agent.text
    write = await client.put("/v1/catalog/register", body=instance_body("db"))
    assert write.status == 403
    assert "node:write" in write.text
    assert (await client.get("/v1/status/leader")).status == 200


async def test_an_unknown_token_is_acl_not_found_everywhere(
    acl_client: tuple[ConsulSimulator, Client],
) -> None:
    _, client = acl_client
    wrong = {"X-Consul-Token": "nope"}
    for path in ("/v1/catalog/services", "/v1/health/service/web", "/v1/agent/self"):
        reply = await client.get(path, headers=wrong)
        assert (reply.status, reply.text) == (403, "ACL not found"), path
    write = await client.put("/v1/catalog/deregister", body={"Node": "node-a"}, headers=wrong)
    assert (write.status, write.text) == (403, "ACL not found")


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"X-Consul-Token": TOKEN}, {}),
        ({"Authorization": f"Bearer {TOKEN}"}, {}),
        ({}, {"token": TOKEN}),
    ],
)
async def test_the_configured_token_reads_everything(
    acl_client: tuple[ConsulSimulator, Client],
    headers: dict[str, str],
    params: dict[str, str],
) -> None:
    _, client = acl_client
    reply = await client.get("/v1/health/service/web", params=params, headers=headers)
    assert reply.status == 200
    assert len(reply.json()) == 1
    assert "X-Consul-Results-Filtered-By-Acls" not in reply.headers
