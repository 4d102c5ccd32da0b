"""With ACLs on (default deny), a read token gives both sides the same targets; a bad or revoked
token fails clearly and keeps what was written.

The token's policy is read-only on every service and node (``service_prefix "" read``,
``node_prefix "" read``). It has no ``agent:read``, so /v1/agent/self, which both Prometheus and
``consul-sd`` use to learn the datacenter, is denied: both are given ``datacenter: dc1``
explicitly, and the test shows what ours says without it.

Revocation is shown in Polling mode; Blocking mode loses the targets instead (a parked query
answers empty when its token is deleted), see ``test_engine_findings``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from consul_sd.workers import DiscoveryQuery
from tests.oracle.conftest import FLEET_TARGETS, register_fleet
from tests.oracle.harness import (
    MASTER,
    MODES,
    consul_job,
    count_is,
    create_read_token,
    discover_once,
    file_job,
    file_sd_targets,
    finish,
    prometheus_config,
    revoke_mid_run,
    start_once,
    wait_for_agreement,
)
from tests.support.components import ConsulAgent, Prometheus

pytestmark = pytest.mark.e2e

WRONG = "00000000-aaaa-bbbb-cccc-000000000000"


@pytest.fixture
def acl_agent(consul_agent_factory: Callable[..., ConsulAgent]) -> ConsulAgent:
    agent = consul_agent_factory(acl_master_token=MASTER, http_max_conns_per_client=2000)
    register_fleet(agent, token=MASTER)
    return agent


def test_a_read_only_token_gives_both_sides_the_same_targets(
    acl_agent: ConsulAgent, prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> None:
    _, secret = create_read_token(acl_agent)
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    runs = {
        mode: start_once(
            acl_agent.address,
            tmp_path / f"{mode}.json",
            "--token-file",
            str(token_file),
            "--datacenter",
            "dc1",
            mode=mode,
        )
        for mode in MODES
    }
    logs = finish(runs)
    assert not [log for log in logs.values() if secret in log], "the token is in the log"

    jobs = [consul_job("consul", acl_agent.address, token=secret, datacenter="dc1")]
    jobs += [file_job(mode, [tmp_path / f"{mode}.json"]) for mode in MODES]
    prometheus = prometheus_factory(prometheus_config(jobs))
    wait_for_agreement(
        prometheus,
        reference="consul",
        jobs=list(MODES),
        expect=count_is(FLEET_TARGETS),
        what="the token's view on both sides",
    )


def test_a_wrong_token_fails_once_with_an_acl_message_and_never_shows_the_token(
    acl_agent: ConsulAgent, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(WRONG)
    for extra in ((), ("--datacenter", "dc1")):
        result = discover_once(acl_agent.address, "--token-file", str(token_file), *extra)
        assert result.returncode == 1, result.stderr
        assert "ACLDenied" in result.stderr
        assert "ACL not found" in result.stderr
        assert WRONG not in result.stderr + result.stdout
        assert result.stdout == ""

    # The read token lacks agent:read: without a datacenter the failure names that permission.
    _, secret = create_read_token(acl_agent)
    token_file.write_text(secret)
    result = discover_once(acl_agent.address, "--token-file", str(token_file))
    assert result.returncode == 1, result.stderr
    assert "ACLDenied" in result.stderr
    assert "/v1/agent/self" in result.stderr
    assert "agent:read" in result.stderr


def test_a_token_revoked_mid_run_keeps_the_file_and_reports_acl_denied(
    acl_agent: ConsulAgent, tmp_path: Path
) -> None:
    accessor, secret = create_read_token(acl_agent)
    output = tmp_path / "targets.json"
    query = DiscoveryQuery(mode="Polling", datacenter="dc1", refresh_interval=0.5)
    written, writer, after = asyncio.run(
        revoke_mid_run(acl_agent, accessor=accessor, query=query, token=secret, output=output)
    )
    assert len(file_sd_targets(output)) == FLEET_TARGETS
    assert output.read_bytes() == written
    assert writer.writes == 1
    problems = {s.problem.reason for s in after if s.problem is not None}
    assert problems == {"ACLDenied"}, problems
    assert all("ACL not found" in str(s.problem) for s in after if s.problem is not None)
