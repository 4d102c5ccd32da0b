"""The alerting metrics a generation keeps (issue 17): last success, target age, degraded by
reason, Consul errors by reason, output size against its limit.

The sink runs against the fake apiserver; run_generation against it and the Consul simulator in
virtual time, with the metrics' wall clock following the loop's, so "a quiet Blocking fleet for
two minutes" costs no real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from consul_sd import metrics
from consul_sd.api.spec import parse_spec
from consul_sd.consul.errors import ConsulServerError
from consul_sd.controller.runner import GenerationSink, run_generation
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.kube import KubeError
from consul_sd.loops import cancel_and_wait
from consul_simulator import ConsulSimulator
from tests.unit.fake_kube import REF, FakeKube
from tests.unit.test_outputs import fleet

LABELS = {"namespace": REF.namespace, "name": REF.name}


def value(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, LABELS | labels)


@pytest.fixture(autouse=True)
def forget_the_cr() -> Iterator[None]:
    metrics.forget(REF.namespace, REF.name)
    yield
    metrics.forget(REF.namespace, REF.name)


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A wall clock the test moves by hand."""
    now = [1_000_000.0]
    monkeypatch.setattr(metrics, "wall_clock", lambda: now[0])
    return now


def sink_for(kube: FakeKube, spec: dict[str, Any] | None = None) -> GenerationSink:
    data = spec or {"consul": {"server": "c:8500"}, "output": {"configMap": {"name": "cr"}}}
    parsed = parse_spec(data, require_output=True)
    return GenerationSink(kube=kube, ref=REF, generation=1, spec=parsed)


def snapshot(services: int, **kwargs: Any) -> Snapshot:
    groups = fleet(services)
    defaults: dict[str, Any] = {"mode": "Blocking", "complete": True, "matched": len(groups)}
    return Snapshot(groups=groups, **(defaults | kwargs))


# ------------------------------------------------------------------------------- the sink


async def test_a_complete_written_publication_sets_the_last_success_and_restarts_the_age(
    wall: list[float],
) -> None:
    sink = sink_for(FakeKube())
    await sink.resume()
    await sink.publish(snapshot(3))
    assert value("consul_sd_last_success_timestamp_seconds") == wall[0]
    wall[0] += 42
    assert value("consul_sd_targets_age_seconds") == 42


async def test_an_incomplete_publication_moves_neither_the_last_success_nor_confirms(
    wall: list[float],
) -> None:
    sink = sink_for(FakeKube())
    await sink.resume()
    await sink.publish(snapshot(3, complete=False, matched=4))
    sink.tracker.observe(endpoint="health", outcome="ok", seconds=0.1)  # a Consul answer
    assert value("consul_sd_last_success_timestamp_seconds") is None


async def test_consul_answers_confirm_the_targets_only_while_nothing_failed(
    wall: list[float],
) -> None:
    sink = sink_for(FakeKube())
    await sink.resume()
    await sink.publish(snapshot(3))
    wall[0] += 30
    sink.tracker.observe(endpoint="health", outcome="ok", seconds=0.1)
    assert value("consul_sd_last_success_timestamp_seconds") == wall[0]

    failed = {"svc-0": ConsulServerError("HTTP 500", status=500)}
    await sink.publish(snapshot(3, failed=failed))  # complete: the failed one kept its targets
    published_at = wall[0]
    wall[0] += 30
    sink.tracker.observe(endpoint="health", outcome="ok", seconds=0.1)
    assert value("consul_sd_last_success_timestamp_seconds") == published_at


async def test_a_publication_carrying_the_catalogs_error_is_no_success(
    wall: list[float],
) -> None:
    sink = sink_for(FakeKube())
    await sink.resume()
    await sink.publish(snapshot(3))
    first = wall[0]
    wall[0] += 30
    # Blocking: every service answered before the catalog failed, so this is "complete".
    error = ConsulServerError("HTTP 500", status=500)
    await sink.publish(snapshot(3, error=error))
    sink.tracker.observe(endpoint="health", outcome="ok", seconds=0.1)
    assert value("consul_sd_last_success_timestamp_seconds") == first


async def test_a_write_that_failed_is_no_success(wall: list[float]) -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    await sink.publish(snapshot(3))
    first = wall[0]
    wall[0] += 30
    kube.refuse = lambda *_: KubeError("apiserver unreachable", status=0)
    await sink.publish(snapshot(4))
    sink.tracker.observe(endpoint="health", outcome="ok", seconds=0.1)
    assert value("consul_sd_last_success_timestamp_seconds") == first


async def test_output_bytes_are_published_against_the_kinds_limit() -> None:
    spec = {
        "consul": {"server": "c:8500"},
        "output": {"configMap": {"name": "cr", "maxShards": 4, "maxShardBytes": 65536}},
    }
    sink = sink_for(FakeKube(), spec)
    await sink.resume()
    await sink.publish(snapshot(3))
    held = sum(output.bytes for output in sink.outputs.outputs)
    assert held > 0
    assert value("consul_sd_output_bytes", kind="ConfigMap") == held
    assert value("consul_sd_output_limit_bytes", kind="ConfigMap") == 4 * 65536


async def test_a_kind_no_longer_written_loses_its_size_series() -> None:
    both = {"configMap": {"name": "cr"}, "scrapeConfig": {"name": "cr"}}
    sink = sink_for(FakeKube(), {"consul": {"server": "c:8500"}, "output": both})
    await sink.resume()
    await sink.publish(snapshot(3))
    assert value("consul_sd_output_limit_bytes", kind="ScrapeConfig") is not None
    sink = sink_for(FakeKube())  # the next generation writes ConfigMaps only
    await sink.resume()
    await sink.publish(snapshot(3))
    assert value("consul_sd_output_limit_bytes", kind="ScrapeConfig") is None
    assert value("consul_sd_output_bytes", kind="ScrapeConfig") is None
    assert value("consul_sd_output_bytes", kind="ConfigMap") is not None


def test_the_sync_interval_is_the_refresh_in_polling_and_the_longer_wait_otherwise() -> None:
    base = {"consul": {"server": "c:8500"}, "output": {"configMap": {"name": "cr"}}}
    sink_for(FakeKube(), base | {"mode": "Polling", "refreshInterval": "15s"})
    assert value("consul_sd_sync_interval_seconds") == 15
    blocking = {"mode": "Blocking", "refreshInterval": "15s", "watchTimeout": "45s"}
    sink_for(FakeKube(), base | blocking)
    assert value("consul_sd_sync_interval_seconds") == 45


async def test_degraded_follows_the_condition_by_reason() -> None:
    sink = sink_for(FakeKube())
    await sink.resume()
    error = ConsulServerError("HTTP 500", status=500)
    await sink.publish(snapshot(0, complete=False, matched=0, error=error))
    assert value("consul_sd_degraded", reason="ConsulServerError") == 1
    await sink.publish(snapshot(3, failed={"svc-0": error}))
    assert value("consul_sd_degraded", reason="ConsulServerError") == 0
    assert value("consul_sd_degraded", reason="ServicesFailing") == 1
    await sink.publish(snapshot(3))
    assert value("consul_sd_degraded", reason="ServicesFailing") == 0


# ------------------------------------------------------------------------- run_generation


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(services=5, instances=1, nodes=2)
        yield simulator


@pytest.fixture
async def loop_wall(monkeypatch: pytest.MonkeyPatch) -> None:
    """The metrics' wall clock follows the (virtual) event loop clock."""
    monkeypatch.setattr(metrics, "wall_clock", asyncio.get_running_loop().time)


def blocking_spec(sim: ConsulSimulator) -> dict[str, Any]:
    return {
        "consul": {"server": sim.address, "datacenter": "dc1"},
        "mode": "Blocking",
        "refreshInterval": "5s",
        "watchTimeout": "30s",
        "output": {"configMap": {"name": "cr"}},
    }


async def until(predicate: Any, *, timeout: float = 600) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(1)


@pytest.mark.looptime
async def test_a_quiet_blocking_fleet_keeps_moving_the_last_success_without_publishing(
    sim: ConsulSimulator, loop_wall: None
) -> None:
    kube = FakeKube()
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=blocking_spec(sim))
    )
    try:
        await until(lambda: value("consul_sd_last_success_timestamp_seconds") is not None)
        await asyncio.sleep(10)
        patches = len(kube.statuses)
        publications = value("consul_sd_publications_total", mode="Blocking")
        before = value("consul_sd_last_success_timestamp_seconds")
        assert before is not None
        await asyncio.sleep(120)  # four watchTimeouts of nothing new
        assert value("consul_sd_publications_total", mode="Blocking") == publications
        after = value("consul_sd_last_success_timestamp_seconds")
        assert after is not None
        assert after >= before + 90
        age = value("consul_sd_targets_age_seconds")
        assert age is not None
        assert age <= 30
        # lastSyncTime moves too, alone, about once a minute.
        confirmations = [patch for patch in kube.statuses[patches:] if "lastSyncTime" in patch]
        assert len(confirmations) in (1, 2)
        assert all(set(patch) == {"lastSyncTime"} for patch in confirmations)
    finally:
        await cancel_and_wait([task])


@pytest.mark.looptime
async def test_consul_down_degrades_counts_errors_by_reason_and_ages_the_targets(
    sim: ConsulSimulator, loop_wall: None
) -> None:
    task = asyncio.create_task(
        run_generation(kube=FakeKube(), ref=REF, generation=1, spec_data=blocking_spec(sim))
    )
    try:
        await until(lambda: value("consul_sd_last_success_timestamp_seconds") is not None)
        synced = value("consul_sd_last_success_timestamp_seconds")
        sim.faults.error_rate = 1.0  # every request answers 500
        await until(lambda: value("consul_sd_degraded", reason="ConsulServerError") == 1)
        await asyncio.sleep(120)
        assert value("consul_sd_last_success_timestamp_seconds") == synced
        age = value("consul_sd_targets_age_seconds")
        assert age is not None
        assert age >= 120
        errors = value("consul_sd_consul_request_errors_total", reason="ConsulServerError")
        assert errors is not None
        assert errors > 0
    finally:
        await cancel_and_wait([task])
