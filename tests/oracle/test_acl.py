"""With ACLs on (default deny), README's minimal policy gives both sides the same targets; a
token with no rights, a bad or a revoked token fails clearly and keeps what was written.

README's policy (read from README.md itself, so the documented policy is the tested one) is
read-only on every service and node. It has no ``agent:read``, so /v1/agent/self, which both
Prometheus and ``consul-sd`` ask for the datacenter, is denied: Prometheus must be given
``datacenter: dc1``; ``consul-sd`` discovers in every mode with and without it, taking the
datacenter from /v1/catalog/nodes when it is not given, and the labels are the same.

Revocation is shown in Polling mode; Blocking mode loses the targets instead (a parked query
answers empty when its token is deleted), see ``test_engine_findings``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from consul_sd.discovery.query import DiscoveryQuery
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
    put,
    revoke_mid_run,
    start_once,
    wait_for_agreement,
)
from tests.support.components import ConsulAgent, Prometheus

pytestmark = pytest.mark.e2e

WRONG = "00000000-aaaa-bbbb-cccc-000000000000"
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def acl_agent(consul_agent_factory: Callable[..., ConsulAgent]) -> ConsulAgent:
    agent = consul_agent_factory(acl_master_token=MASTER, http_max_conns_per_client=2000)
    register_fleet(agent, token=MASTER)
    return agent


def readme_policy() -> str:
    """The HCL block of README's "Consul ACL policy" subsection."""
    text = README.read_text()
    section = text[text.index("### Consul ACL policy") :]
    block = section[section.index("```hcl\n") + len("```hcl\n") :]
    return block[: block.index("```")]


def create_token(agent: ConsulAgent, *, rules: str | None) -> str:
    """A token with a policy of ``rules`` (None: no policy, no rights at all); its SecretID."""
    body: dict[str, object] = {"Description": "consul-sd oracle"}
    if rules is not None:
        put(agent, "/v1/acl/policy", {"Name": "readme-minimal", "Rules": rules})
        body["Policies"] = [{"Name": "readme-minimal"}]
    return str(put(agent, "/v1/acl/token", body)["SecretID"])


def test_readmes_policy_discovers_in_every_mode_with_and_without_a_datacenter(
    acl_agent: ConsulAgent, prometheus_factory: Callable[..., Prometheus], tmp_path: Path
) -> None:
    rules = readme_policy()
    assert "agent" not in rules, "README's policy is meant to be the minimal one"
    secret = create_token(acl_agent, rules=rules)
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    runs = {
        (mode, given): start_once(
            acl_agent.address,
            tmp_path / f"{mode}-{given}.json",
            "--token-file",
            str(token_file),
            *(["--datacenter", "dc1"] if given == "dc1" else []),
            mode=mode,
        )
        for mode in MODES
        for given in ("dc1", "none")
    }
    logs = finish(runs)
    assert not [log for log in logs.values() if secret in log], "the token is in the log"
    for (mode, given), log in logs.items():
        said = log.count("datacenter 'dc1' taken from /v1/catalog/nodes")
        assert said == (1 if given == "none" else 0), (mode, given, log)

    # Prometheus cannot read /v1/agent/self with this token: it needs the datacenter.
    jobs = [consul_job("consul", acl_agent.address, token=secret, datacenter="dc1")]
    jobs += [file_job(f"{m}-{g}", [tmp_path / f"{m}-{g}.json"]) for m, g in runs]
    prometheus = prometheus_factory(prometheus_config(jobs))
    wait_for_agreement(
        prometheus,
        reference="consul",
        jobs=[f"{m}-{g}" for m, g in runs],
        expect=count_is(FLEET_TARGETS),
        what="README's policy's view on both sides, __meta_consul_dc included",
    )


def test_a_token_with_no_rights_at_all_gets_acl_denied_saying_what_failed(
    acl_agent: ConsulAgent,
) -> None:
    token = create_token(acl_agent, rules=None)
    for mode in MODES:
        result = discover_once(acl_agent.address, "--token", token, mode=mode)
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("consul-sd: error:")]
        assert line.startswith(
            f"consul-sd: error: Consul at http://{acl_agent.address} denied the request "
            "(/v1/agent/self: HTTP 403: Permission denied"
        ), line
        assert line.endswith(
            "check the token (--token-file, CONSUL_HTTP_TOKEN_FILE or "
            "CONSUL_HTTP_TOKEN) and its policy"
        ), line
        assert "'agent:read'" in line
        assert 'node_prefix "" read, or set consul.datacenter' in line
        assert token not in result.stderr
    # With the datacenter given, Consul answers the catalog with every row filtered by ACLs.
    for mode in MODES:
        result = discover_once(
            acl_agent.address, "--token", token, "--datacenter", "dc1", mode=mode
        )
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("consul-sd: error:")]
        assert "denied the request (/v1/catalog/services: the token may read no service" in line, (
            line
        )
        assert token not in result.stderr


def test_a_wrong_token_fails_once_with_an_acl_message_and_never_shows_the_token(
    acl_agent: ConsulAgent, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(WRONG)
    for extra in ((), ("--datacenter", "dc1")):
        result = discover_once(acl_agent.address, "--token-file", str(token_file), *extra)
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.splitlines()
        assert "denied the request" in line, line
        assert "HTTP 403: ACL not found" in line, line
        assert "check the token" in line, line
        assert WRONG not in result.stderr + result.stdout
        assert result.stdout == ""


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
