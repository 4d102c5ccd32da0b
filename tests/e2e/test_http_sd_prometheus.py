"""The operator's HTTP SD endpoint read by a real Prometheus v3 (issue 14, acceptance).

The oracle through the operator: a real Consul agent holds the oracle fleet; the operator (real
kube-apiserver) runs one ConsulDiscovery per mode with ``output.httpSD``, one of them behind a
bearer token; one Prometheus runs its own consul_sd job beside one ``http_sd_configs`` job per
CR on the operator's port, and every http_sd job's discovered labels must equal the consul_sd
job's (``normalize`` drops ``__meta_url`` and job settings).

Restart without loss: Prometheus reads one CR (the simulator, 50 services x 2) from the
operator's port; the operator is killed and started again, then stopped and cold-started while
every Consul request fails. Prometheus's active target count, sampled every second across both,
never drops; the endpoint never answers 200 with fewer targets than the fleet has, and answers
503 while the cold-started operator has no complete discovery.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.e2e.http_sd_support import (
    Answer,
    Sample,
    Sampler,
    active_targets,
    endpoint_answer,
    fetch_status,
    http_sd_job,
    start_operator,
    timeline,
)
from tests.e2e.operator_harness import Simulator, create_cr, sample_cr
from tests.oracle.conftest import FLEET_TARGETS, register_fleet
from tests.oracle.harness import (
    consul_job,
    count_is,
    prometheus_config,
    wait_for_agreement,
    wait_until,
)
from tests.support.components import ConsulAgent, ControlPlane, Prometheus, free_port

pytestmark = pytest.mark.e2e
TOKEN = "e2e-http-sd-prometheus-token"
MODES = ("Polling", "Blocking", "Auto")
TOKEN_MODE = "Auto"  # the CR behind a bearer token, which Prometheus's job sends

SERVICES, INSTANCES = 50, 2
FLEET = SERVICES * INSTANCES
REFRESH = 2  # seconds: the http_sd job's refresh_interval
# What the endpoint may answer while it has no complete set: nothing (the process is down),
# 503, or 404 in the window between the port opening (kopf's startup handler) and kopf starting
# the CR's daemon, whose runner reserves the CR at once. Prometheus keeps its targets on all
# three; 200 with fewer targets than the fleet is what must never happen.
NOT_SERVING = {(None, None), (503, None), (404, None)}
# Two refreshes, plus Prometheus's discovery manager, which hands updates on every 5 s.
SETTLE = 2 * REFRESH + 5 + 1


@pytest.fixture(scope="module")
def fleet_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    """The oracle's agent: connection cap raised for the many jobs, the fleet registered."""
    agent = ConsulAgent(http_max_conns_per_client=2000)
    agent.start(tmp_path_factory.mktemp("consul-fleet"))
    try:
        register_fleet(agent)
        yield agent
    finally:
        agent.stop()


def create_token_secret(api: k8s.ApiClient, namespace: str) -> None:
    k8s.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "http-sd"},
            "data": {"token": base64.b64encode(TOKEN.encode()).decode()},
        },
    )


def oracle_cr(mode: str, *, server: str) -> dict[str, Any]:
    """A CR served over HTTP SD only, at the oracle's short intervals."""
    http_sd: dict[str, Any] = {}
    if mode == TOKEN_MODE:
        http_sd["authorization"] = {"secretRef": {"name": "http-sd", "key": "token"}}
    return sample_cr(
        mode.lower(), server=server, mode=mode, watchTimeout="10s", output={"httpSD": http_sd}
    )


def test_every_mode_served_by_the_operator_matches_prometheus_consul_sd(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    consul_sd_crd: None,
    namespace: str,
    fleet_agent: ConsulAgent,
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    server = fleet_agent.address
    create_token_secret(api, namespace)
    for mode in MODES:
        create_cr(api, namespace, oracle_cr(mode, server=server))
    port = free_port()
    operator = start_operator(control_plane, tmp_path, port=port, namespace=namespace)
    try:
        base = f"http://127.0.0.1:{port}/targets/{namespace}"
        urls = {mode: f"{base}/{mode.lower()}" for mode in MODES}
        jobs = [consul_job("consul", server)]
        for mode, url in urls.items():
            token = TOKEN if mode == TOKEN_MODE else None
            jobs.append(http_sd_job(f"http-{mode}", url, token=token))
        prometheus = prometheus_factory(prometheus_config(jobs))
        wait_for_agreement(
            prometheus,
            reference="consul",
            jobs=[f"http-{mode}" for mode in MODES],
            expect=count_is(FLEET_TARGETS),
            what="every operator http_sd job to equal consul_sd",
            timeout=120,
        )
        assert operator.alive()
        assert fetch_status(urls[TOKEN_MODE])[0] == 401  # Prometheus got in with the token
    finally:
        operator.stop()


def wait_for_fleet(prometheus: Prometheus, url: str) -> None:
    """Until the endpoint serves the whole fleet and Prometheus has it all active."""
    wait_until(
        lambda: endpoint_answer(url) == (200, FLEET),
        what=f"{url} to serve {FLEET} targets",
        timeout=90,
    )
    wait_until(
        lambda: active_targets(prometheus, "fleet") == FLEET,
        what=f"{FLEET} active targets in Prometheus",
        timeout=60,
    )


def answers_seen(samples: list[Sample[Answer]]) -> Counter[Answer]:
    return Counter(sample.value for sample in samples)


def test_prometheus_keeps_every_target_across_a_kill_and_a_cold_start_during_a_consul_outage(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    consul_sd_crd: None,
    namespace: str,
    simulator: Callable[..., Simulator],
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    sim = simulator(services=SERVICES, instances=INSTANCES)
    create_cr(api, namespace, sample_cr("fleet", server=sim.address, output={"httpSD": {}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}/targets/{namespace}/fleet"
    operator = start_operator(control_plane, tmp_path, port=port, namespace=namespace)
    prometheus = prometheus_factory(prometheus_config([http_sd_job("fleet", url, refresh="2s")]))
    try:
        wait_for_fleet(prometheus, url)
    except BaseException:
        operator.stop()
        raise
    sampler = Sampler(lambda: active_targets(prometheus, "fleet"), interval=1.0)
    try:
        warm = Sampler(lambda: endpoint_answer(url), interval=0.25, limit=150)
        operator.kill()
        operator = start_operator(control_plane, tmp_path, port=port, namespace=namespace)
        wait_until(lambda: endpoint_answer(url) == (200, FLEET), what="serving again", timeout=90)
        time.sleep(SETTLE)
        warm_answers = answers_seen(warm.stop())
        assert set(warm_answers) <= {*NOT_SERVING, (200, FLEET)}, warm_answers

        operator.stop()
        sim.faults(error_rate=1.0)
        cold = Sampler(lambda: endpoint_answer(url), interval=0.25, limit=150)
        operator = start_operator(control_plane, tmp_path, port=port, namespace=namespace)
        wait_until(lambda: endpoint_answer(url)[0] is not None, what="an answer", timeout=60)
        time.sleep(SETTLE + REFRESH)  # about three refreshes of Prometheus on the 503
        cold_answers = answers_seen(cold.stop())
        assert set(cold_answers) <= NOT_SERVING, cold_answers
        assert cold_answers[(503, None)] > 0, cold_answers
        assert b"no complete discovery yet" in fetch_status(url)[1]

        sim.faults(error_rate=0.0)
        wait_for_fleet(prometheus, url)
        time.sleep(SETTLE)
    finally:
        samples = sampler.stop()
        operator.stop()
    print(f"\nactive targets: {timeline(samples)}\nwarm restart: {warm_answers}")
    print(f"cold start in outage: {cold_answers}")
    assert len(samples) > 3 * SETTLE, timeline(samples)  # the sampler kept sampling
    assert all(sample.value == FLEET for sample in samples), timeline(samples)
