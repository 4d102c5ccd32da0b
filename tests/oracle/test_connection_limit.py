"""Under Consul's per-client connection cap, ours keeps every target; Prometheus is observed.

An agent with ``limits.http_max_conns_per_client = 200`` (Consul's default, set explicitly) holds
320 services. Prometheus's consul_sd holds one long-poll per service, so it needs more than 200
connections from one address; what it finds, and the errors it counts, are recorded and printed,
not asserted (this is the upstream behaviour users migrate from). Then, one after the other, so
that each has the whole budget of the address: our Blocking mode with maxConcurrent 300 (more
long-polls than Consul allows: the adaptive limit must back off on the 429s) and our Polling
mode with maxConcurrent 300 must each publish every target and keep them complete.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import run_discovery
from consul_sd.discovery.snapshots import Snapshot, is_publishable
from tests.oracle.harness import (
    Discoverer,
    consul_job,
    prometheus_config,
    prometheus_jobs,
    put,
    wait_until,
)
from tests.support.components import ConsulAgent, Prometheus, http_request

pytestmark = pytest.mark.e2e

SERVICES = 320
TARGETS = SERVICES + 1  # and the agent's own consul service
CONNECTION_CAP = 200
PROMETHEUS_OBSERVED = 40.0  # seconds: two of its 15s retry rounds after the first burst
OURS_HELD = 12.0  # seconds ours must stay complete after reaching every target (> watchTimeout)


@pytest.fixture(scope="module")
def limited_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(http_max_conns_per_client=CONNECTION_CAP)
    agent.start(tmp_path_factory.mktemp("consul-limited"))
    try:
        for number in range(SERVICES):
            node = f"node-{number % 16:02d}"
            body = {
                "Node": node,
                "Address": f"10.40.0.{number % 16 + 1}",
                "Service": {
                    "ID": f"svc-{number:03d}-1",
                    "Service": f"svc-{number:03d}",
                    "Port": 9000 + number,
                    "Tags": ["limit"],
                },
            }
            put(agent, "/v1/catalog/register", body)
        yield agent
    finally:
        agent.stop()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def observe_prometheus(prometheus: Prometheus, seconds: float) -> dict[str, object]:
    """Targets found over time, RPC failures and 429 lines in its log."""
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    while time.monotonic() - started < seconds:
        found = len(prometheus_jobs(prometheus).get("consul", {}))
        samples.append((round(time.monotonic() - started, 1), found))
        time.sleep(2.0)
    metrics = http_request("GET", f"{prometheus.url}/metrics").text
    log = (prometheus.workdir / "prometheus.log").read_text(errors="replace")
    errors = [line for line in log.splitlines() if "level=ERROR" in line]
    return {
        "targets_over_time": samples,
        "max_targets": max(found for _, found in samples),
        "final_targets": samples[-1][1],
        "rpc_failures": _metric(metrics, "prometheus_sd_consul_rpc_failures_total"),
        "error_lines": len(errors),
        "error_lines_429": sum(1 for line in errors if "429" in line or "too many" in line),
        "services_with_errors": len(set(re.findall(r"service=(\S+)", "\n".join(errors)))),
        "first_error": errors[0][:300] if errors else "",
    }


@dataclass
class OurRun:
    outcomes: Counter[str] = field(default_factory=Counter)
    snapshots: list[Snapshot] = field(default_factory=list)
    first_complete: float | None = None
    first_complete_index: int = 0
    limit_decreases: int = 0
    final_limit: int = 0
    shutdown_error: str = ""

    def summary(self) -> dict[str, object]:
        last = self.snapshots[-1]
        return {
            "seconds_to_all_targets": round(self.first_complete or -1, 1),
            "requests_by_outcome": dict(self.outcomes),
            "limit_decreases": self.limit_decreases,
            "final_limit": self.final_limit,
            "last_snapshot": (last.complete, last.targets, len(last.failed)),
            "shutdown_error": self.shutdown_error,
        }


async def run_ours(agent: ConsulAgent, mode: str, *, timeout: float) -> OurRun:
    """Run discovery until every target was published complete, then OURS_HELD more seconds."""
    run = OurRun()
    started = time.monotonic()
    complete = asyncio.Event()

    async def publish(snapshot: Snapshot) -> None:
        run.snapshots.append(snapshot)
        if snapshot.complete and snapshot.targets == TARGETS and run.first_complete is None:
            run.first_complete = time.monotonic() - started
            run.first_complete_index = len(run.snapshots) - 1
            complete.set()

    def observe(endpoint: str, outcome: str, seconds: float) -> None:
        run.outcomes[outcome] += 1

    query = DiscoveryQuery(
        mode=mode,  # type: ignore[arg-type]
        max_concurrent=300,
        refresh_interval=1.0,
        watch_timeout=10.0,
    )
    client = ConsulClient(
        endpoint=ConsulEndpoint(server=agent.address),
        max_connections=query.max_concurrent + 1,
        observer=observe,
    )
    async with client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        try:
            async with asyncio.timeout(timeout):
                await complete.wait()
            await asyncio.sleep(OURS_HELD)
        except TimeoutError:
            pytest.fail(f"{mode}: no complete snapshot with {TARGETS} targets in {timeout}s")
        finally:
            task.cancel()
            # Cancelling waiters of the adaptive limit can raise instead (see
            # test_engine_findings); shutdown is not what this test is about.
            [ended] = await asyncio.gather(task, return_exceptions=True)
            if not isinstance(ended, asyncio.CancelledError):
                run.shutdown_error = repr(ended)[:200]
        run.limit_decreases = client.concurrency.decreases
        run.final_limit = client.concurrency.limit
    return run


def test_ours_keeps_every_target_under_the_connection_cap_where_prometheus_is_observed(
    limited_agent: ConsulAgent, prometheus_factory: Callable[..., Prometheus]
) -> None:
    prometheus = prometheus_factory(
        prometheus_config([consul_job("consul", limited_agent.address)])
    )
    seen = observe_prometheus(prometheus, PROMETHEUS_OBSERVED)
    prometheus.stop()
    print(f"\nPrometheus consul_sd, {SERVICES} services, cap {CONNECTION_CAP}: {seen}")

    runs: dict[str, OurRun] = {}
    for mode in ("Blocking", "Polling"):
        run = runs[mode] = asyncio.run(run_ours(limited_agent, mode, timeout=90))
        summary = run.summary()
        print(f"ours {mode}, maxConcurrent 300: {summary}")
        # After the first complete snapshot, everything a sink would write has every target.
        later = run.snapshots[run.first_complete_index :]
        written = [s.targets for s in later if is_publishable(s, published_before=True)]
        assert written, summary
        assert set(written) == {TARGETS}, (written, summary)
        assert run.snapshots[-1].complete, summary
    # Blocking asked for more long-polls than Consul allows: it met the cap and backed off.
    assert runs["Blocking"].limit_decreases > 0, runs["Blocking"].summary()


def test_discover_stops_cleanly_on_sigterm_while_long_polls_queue_for_slots(
    limited_agent: ConsulAgent, discoverers: Callable[..., Discoverer], tmp_path: Path
) -> None:
    output = tmp_path / "targets.json"
    process = discoverers(limited_agent.address, output, "blocking", "--max-concurrent", "300")
    wait_until(
        lambda: output.exists() and len(process.targets()) == TARGETS,
        what=f"{TARGETS} targets in {output}",
        timeout=60,
        explain=lambda: process.log()[-2000:],
    )
    time.sleep(2.0)  # the long-polls re-park: more than the limit, the rest queue for a slot
    process.stop()
    assert process.process.returncode == 0, process.log()[-3000:]
    assert "Traceback" not in process.log()
