"""Our targets carry exactly the labels Prometheus's own consul_sd discovers, on a real agent.

One Prometheus v3 runs a consul_sd job against the agent (the reference) next to file_sd jobs on
what ``consul-sd discover`` wrote: one process per mode (Polling, Blocking, Auto), and the
operator's ConfigMap shards laid out the way the kubelet mounts them. Then the same with each
selector setting given to both sides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consul_sd.api.spec import ConfigMapOutput
from consul_sd.consul.client import ConsulClient
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import discover_once
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.outputs.shards import config_map_shards
from tests.oracle.conftest import FLEET_TARGETS
from tests.oracle.fleet import EXPECTED_COUNTS, SELECTORS
from tests.oracle.harness import (
    MODES,
    ConfigMapVolume,
    Discoverer,
    TargetSet,
    consul_job,
    count_is,
    file_job,
    finish,
    prometheus_config,
    start_once,
    wait_for_agreement,
)
from tests.support.components import ConsulAgent, Prometheus

pytestmark = pytest.mark.e2e


def snapshot_of(agent: ConsulAgent, **query: Any) -> Snapshot:
    """One complete in-process discovery, as the operator's runner gets it."""

    async def run() -> Snapshot:
        endpoint = ConsulEndpoint(server=agent.address)
        async with ConsulClient(endpoint=endpoint, max_connections=20) as client:
            return await discover_once(query=DiscoveryQuery(**query), client=client)

    return asyncio.run(run())


def covers_the_edge_cases(targets: TargetSet) -> bool:
    """The reference shows the states the fleet is meant to exercise (a check of the fleet)."""
    healths = {labels.get("__meta_consul_health", "") for labels in targets.values()}
    addresses = {key[2] for key in targets}
    names = {name for labels in targets.values() for name in labels}
    health_of = {
        labels.get("__meta_consul_service_id"): labels.get("__meta_consul_health")
        for labels in targets.values()
    }
    return (
        healths == {"passing", "warning", "critical", "maintenance", ""}
        # strict-1 has a critical check besides its maintenance check.
        and health_of.get("strict-1") == "maintenance"
        and {
            "[2001:db8::c]:8080",
            "[2001:db8::10]:443",
            "[fe80::1%eth0]:443",
            "[2001:db8:0:0:1:2:3:4]:9300",
        }
        <= addresses
        and "__meta_consul_metadata_k8s_zone" in names
        and "10.20.0.2:0" in addresses
        and "__meta_consul_metadata_topology_kubernetes_io_zone" in names
        and "__meta_consul_service_metadata_owner_team" in names
        and "__meta_consul_tagged_address_wan_ipv4" in names
    )


def test_every_mode_and_the_config_map_layout_match_prometheus_consul_sd(
    fleet_agent: ConsulAgent,
    prometheus_factory: Callable[..., Prometheus],
    discoverers: Callable[..., Discoverer],
    tmp_path: Path,
) -> None:
    server = fleet_agent.address
    for mode in MODES:
        discoverers(server, tmp_path / f"{mode}.json", mode)

    # The operator path: ConfigMap shards of one snapshot, mounted as the kubelet mounts them.
    snapshot = snapshot_of(fleet_agent, mode="Polling")
    shards = config_map_shards(
        snapshot.groups, output=ConfigMapOutput(name="oracle", max_shard_bytes=16 * 1024)
    )
    assert len(shards) >= 2, "the fleet should need several 16 KiB shards"
    volume = ConfigMapVolume(tmp_path / "configmap")
    volume.write({shard.key: shard.data for shard in shards})

    jobs = [consul_job("consul", server)]
    jobs += [file_job(mode, [tmp_path / f"{mode}.json"]) for mode in MODES]
    jobs.append(file_job("configmap", [volume.directory / "*.json"]))
    prometheus = prometheus_factory(prometheus_config(jobs))

    agreed = wait_for_agreement(
        prometheus,
        reference="consul",
        jobs=[*MODES, "configmap"],
        expect=count_is(FLEET_TARGETS),
        what="every file_sd job to equal consul_sd",
    )
    assert covers_the_edge_cases(agreed["consul"])


def test_selectors_given_to_both_sides_select_the_same_labelled_targets(
    fleet_agent: ConsulAgent,
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    server = fleet_agent.address
    runs = {
        (name, mode): start_once(
            server, tmp_path / f"{name}-{mode}.json", *selector.cli_args(), mode=mode
        )
        for name, selector in SELECTORS.items()
        for mode in MODES
    }
    finish(runs)

    jobs = []
    for name, selector in SELECTORS.items():
        jobs.append(consul_job(f"consul-{name}", server, selector))
        jobs += [file_job(f"{name}-{mode}", [tmp_path / f"{name}-{mode}.json"]) for mode in MODES]
    prometheus = prometheus_factory(prometheus_config(jobs))

    for name in SELECTORS:
        # The expected count also checks that each selector selected what the fleet says it
        # should: a selector both sides silently ignored would not pass.
        wait_for_agreement(
            prometheus,
            reference=f"consul-{name}",
            jobs=[f"{name}-{mode}" for mode in MODES],
            expect=count_is(EXPECTED_COUNTS[name]),
            what=f"selector {name}: {EXPECTED_COUNTS[name]} targets, every mode equal to consul_sd",
        )
