"""Engine behaviour the oracle found wrong against a real Consul 1.16.3 agent, now fixed.

Each test states a behaviour the oracle first found missing on a real agent (each failed before
its fix in the engine) and now guards it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from consul_sd.consul.client import ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.consul.errors import ConsulBadRequest
from consul_sd.consul.limiter import AdaptiveLimit
from consul_sd.discovery.query import DiscoveryQuery
from tests.oracle import fleet
from tests.oracle.harness import (
    MASTER,
    create_read_token,
    discover_once,
    file_sd_targets,
    put,
    revoke_mid_run,
)
from tests.support.components import ConsulAgent

pytestmark = pytest.mark.e2e


def test_a_service_registered_without_a_name_does_not_hide_every_other_target(
    consul_agent_factory: Callable[..., ConsulAgent],
) -> None:
    # Consul accepts "Service": {} and lists a service named "" whose health endpoint answers
    # 400 "Missing service name". Prometheus logs that one error and discovers the rest (seen
    # against this agent: web-1 and consul); ours never completes a discovery, so --once fails
    # and --output (and the operator) never write anything on a cold start.
    agent = consul_agent_factory()
    put(
        agent,
        "/v1/catalog/register",
        {"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "web-1", "Service": "web"}},
    )
    put(agent, "/v1/catalog/register", {"Node": "n1", "Address": "10.0.0.1", "Service": {}})
    assert "" in agent.request("GET", "/v1/catalog/services").json()
    result = discover_once(agent.address, mode="polling")
    assert result.returncode == 0, result.stderr
    assert '"__meta_consul_service_id":"web-1"' in result.stdout


def test_a_filter_consul_cannot_compile_is_a_bad_request_and_is_not_retried(
    consul_agent_factory: Callable[..., ConsulAgent],
) -> None:
    agent = consul_agent_factory()
    answer = agent.request("GET", "/v1/catalog/services?filter=Port%20%3E%3D%201")
    assert answer.status == 500
    assert answer.text.startswith("Failed to create boolean expression evaluator")

    async def list_with_a_bad_filter() -> int:
        endpoint = ConsulEndpoint(server=agent.address)
        retry = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.1)
        async with ConsulClient(endpoint=endpoint, max_connections=2, retry=retry) as client:
            with pytest.raises(ConsulBadRequest, match="Consul cannot compile the filter"):
                await client.list_services(filter_expr="Port >= 1")
            return client.stats.total()

    assert asyncio.run(list_with_a_bad_filter()) == 1


def test_blocking_mode_keeps_the_file_when_a_revoked_token_empties_parked_queries(
    consul_agent_factory: Callable[..., ConsulAgent], tmp_path: Path
) -> None:
    # Seen on the wire: a /v1/health/service long-poll parked with a token that is then deleted
    # answers at its wait expiry 200, X-Consul-Index 1, body [] (no filtered header); requests
    # after it answer 403 "ACL not found". The index going backwards is Consul's signal to
    # restart with a plain read, which would get the 403 and keep the targets; the engine resets
    # the index but takes the empty body as the service's new targets. Prometheus does the same
    # with such an answer, but its 2m wait usually meets the 403 (after ~4-9s here) first.
    agent = consul_agent_factory(acl_master_token=MASTER)
    names = ("web", "api", "cache")
    for body in fleet.catalog_bodies():
        if body.get("Service", {}).get("Service") in names:
            put(agent, "/v1/catalog/register", body, token=MASTER)
    accessor, secret = create_read_token(agent)
    # Services only (no catalog watch), so no catalog error can hold the publication back.
    query = DiscoveryQuery(
        mode="Blocking", services=names, datacenter="dc1", refresh_interval=0.5, watch_timeout=2.0
    )
    output = tmp_path / "targets.json"
    written, writer, _ = asyncio.run(
        revoke_mid_run(agent, accessor=accessor, query=query, token=secret, output=output)
    )
    assert len(file_sd_targets(output)) == 35  # web x3, api x2, cache x30
    assert output.read_bytes() == written
    assert writer.writes == 1


def test_cancelling_queued_requests_of_the_adaptive_limit_raises_only_cancelled_error() -> None:
    # What happens at every shutdown (and when a Blocking watch is cancelled) while requests
    # queue for a slot: cancelling a task cancels its waiter future at once, a release runs
    # _wake before the task resumes and pops that future, then the task's cleanup tries to
    # remove it again. Seen e2e in test_connection_limit (SIGTERM gives exit 1 and a traceback).
    async def scenario() -> list[BaseException | None]:
        limit = AdaptiveLimit(1)
        await limit.__aenter__()  # the only slot is taken

        async def queued() -> None:
            async with limit:
                await asyncio.sleep(1)

        tasks = [asyncio.create_task(queued()) for _ in range(3)]
        await asyncio.sleep(0)  # all three wait for the slot
        for task in tasks:
            task.cancel()
        await limit.__aexit__(None, None, None)  # a request finishes while they unwind
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes), outcomes
