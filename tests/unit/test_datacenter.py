"""The datacenter when the spec gives none: /v1/agent/self, or Consul's own answers without it.

README's minimal ACL policy (service_prefix and node_prefix read) has no ``agent:read``, so
/v1/agent/self is denied. The workers then take the datacenter from /v1/catalog/nodes, whose rows
carry it, in every mode, and say so once at INFO; a token that sees no node gets the denial with
what would help, never an empty discovery.

Against the Consul simulator in virtual time (looptime). The simulator has no read-only tokens:
its anonymous token is denied /v1/agent/self and sees no rows (a token with no rights at all);
a read-only token is a client whose /v1/agent/self call is denied as Consul denies it, the rest
answered by the simulator. tests/oracle/test_acl.py shows both on a real agent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from consul_sd.api.spec import Mode
from consul_sd.consul.client import ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.consul.errors import ConsulACLDenied
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import discover_once
from consul_sd.discovery.snapshots import DiscoveryIncomplete
from consul_simulator import ConsulSimulator

pytestmark = pytest.mark.looptime

MODES: tuple[Mode, ...] = ("Polling", "Blocking", "Auto")
MANAGEMENT = "management-token"


class AgentReadDenied(ConsulClient):
    """A client whose token lacks ``agent:read``: /v1/agent/self answers Consul's 403."""

    async def agent_datacenter(self) -> str:
        raise ConsulACLDenied(
            "/v1/agent/self: HTTP 403: Permission denied: token with AccessorID "
            "'6a1253d2-1785-24fd-91c2-f8e78c745511' lacks permission 'agent:read' on \"sim\"",
            status=403,
        )


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False, datacenter="dc7") as simulator:
        simulator.generate(services=5, instances=2, nodes=3)
        yield simulator


def endpoint(sim: ConsulSimulator, token: str | None = None) -> ConsulEndpoint:
    return ConsulEndpoint(server=sim.address, token=token)


RETRY = RetryPolicy(attempts=1, base_delay=0.1, max_delay=1.0)


@pytest.mark.parametrize("mode", MODES)
async def test_a_token_without_agent_read_takes_the_datacenter_from_the_catalogs_nodes(
    sim: ConsulSimulator, mode: Mode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consul_sd.discovery.run")
    async with AgentReadDenied(endpoint=endpoint(sim), max_connections=10, retry=RETRY) as client:
        snapshot = await discover_once(query=DiscoveryQuery(mode=mode), client=client)
    labels = [target.label_dict() for group in snapshot.groups.values() for target in group]
    assert len(labels) == 10
    assert {label["__meta_consul_dc"] for label in labels} == {"dc7"}
    said = [r for r in caplog.records if "/v1/agent/self" in r.getMessage()]
    assert len(said) == 1, said
    assert "datacenter 'dc7' taken from /v1/catalog/nodes" in said[0].getMessage()
    assert said[0].levelno == logging.INFO


@pytest.mark.parametrize("mode", MODES)
async def test_a_token_with_no_rights_fails_with_the_denial_and_what_would_help(
    mode: Mode,
) -> None:
    async with ConsulSimulator(jitter=False, acl_token=MANAGEMENT) as sim:
        sim.generate(services=5, instances=2, nodes=3)
        async with ConsulClient(endpoint=endpoint(sim), max_connections=10, retry=RETRY) as client:
            with pytest.raises(DiscoveryIncomplete) as failure:
                await discover_once(query=DiscoveryQuery(mode=mode), client=client)
    message = str(failure.value)
    assert message.startswith("discovery failed before any service was listed (ACLDenied: ")
    assert "/v1/agent/self: HTTP 403: Permission denied" in message
    assert "'agent:read'" in message
    assert "/v1/catalog/nodes shows no node to take the datacenter from" in message
    assert 'node_prefix "" read, or set consul.datacenter' in message
    assert "0 of 0" not in message


async def test_with_agent_read_the_agents_own_datacenter_is_used_and_nothing_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="consul_sd.discovery.run")
    async with ConsulSimulator(jitter=False, datacenter="dc9", acl_token=MANAGEMENT) as sim:
        sim.generate(services=2, instances=1, nodes=1)
        client = ConsulClient(endpoint=endpoint(sim, MANAGEMENT), max_connections=10, retry=RETRY)
        async with client:
            snapshot = await discover_once(query=DiscoveryQuery(mode="Polling"), client=client)
    labels = [target.label_dict() for group in snapshot.groups.values() for target in group]
    assert {label["__meta_consul_dc"] for label in labels} == {"dc9"}
    assert not [r for r in caplog.records if "/v1/agent/self" in r.getMessage()]


@pytest.mark.parametrize("mode", MODES)
async def test_a_token_with_no_rights_and_a_datacenter_set_is_denied_not_an_empty_fleet(
    mode: Mode,
) -> None:
    """Consul answers 200 with every row filtered by ACLs: that is no empty catalog."""
    async with ConsulSimulator(jitter=False, acl_token=MANAGEMENT) as sim:
        sim.generate(services=5, instances=2, nodes=3)
        async with ConsulClient(endpoint=endpoint(sim), max_connections=5, retry=RETRY) as client:
            query = DiscoveryQuery(mode=mode, datacenter="dc1")
            with pytest.raises(DiscoveryIncomplete) as raised:
                await discover_once(query=query, client=client)
    problem = raised.value.snapshot.problem
    assert isinstance(problem, ConsulACLDenied)
    assert 'may read no service (Consul filtered every one by ACLs): grant service_prefix ""' in (
        str(problem)
    )
