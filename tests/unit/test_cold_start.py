"""A cold start that never lists the catalog never counts as complete, so nothing is written.

A wrong token answers 403 on the catalog forever: every mode must keep publishing failures that
no sink writes, and ``consul-sd discover --output`` must leave the file alone (never ``[]``, which
would clear Prometheus's targets).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consul_sd.api.spec import Mode
from consul_sd.consul.client import ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import run_discovery
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.outputs.filesd import FileSDWriter
from consul_simulator import ConsulSimulator

pytestmark = pytest.mark.looptime


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False, acl_token="right") as simulator:
        simulator.generate(services=5, instances=2, nodes=3)
        yield simulator


@pytest.mark.parametrize("mode", ["Blocking", "Polling", "Auto"])
async def test_a_wrong_token_on_a_cold_start_never_writes_the_file(
    sim: ConsulSimulator, tmp_path: Path, mode: Mode
) -> None:
    path = tmp_path / "consul.json"
    writer = FileSDWriter(path)
    published: list[Snapshot] = []

    async def publish(snapshot: Snapshot) -> None:
        published.append(snapshot)
        await writer.publish(snapshot)

    endpoint = ConsulEndpoint(server=sim.address, token="wrong")
    query = DiscoveryQuery(mode=mode, refresh_interval=5, watch_timeout=30, datacenter="dc1")
    async with ConsulClient(
        endpoint=endpoint, max_connections=5, retry=RetryPolicy(attempts=1)
    ) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        await asyncio.sleep(600)  # ten minutes of retries and backoff
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sim.counters.responses_by_status[403] >= 10  # it kept asking, and kept being refused
    assert published
    assert not any(snapshot.complete for snapshot in published)
    assert {snapshot.problem.reason for snapshot in published if snapshot.problem} == {"ACLDenied"}
    assert not path.exists()
