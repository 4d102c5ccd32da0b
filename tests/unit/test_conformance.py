"""Recorded Consul answers give exactly Prometheus v3's consul_sd labels, in every mode.

The expected labels are written out by hand from Prometheus's discovery/consul/consul.go rules
(reference section 1), never computed by the code under test. Empty-valued labels are absent, as
they are to Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consul_sd.api.spec import Mode
from consul_sd.consul.client import ConsulClient
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import discover_once
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.outputs.render import render_file_sd
from tests.unit.replay import ReplayConsul

RECORDING = json.loads((Path(__file__).parent.parent / "fixtures/consul_answers.json").read_text())

WEB = {"__meta_consul_service": "web", "__meta_consul_dc": "dc1"}
EXPECTED: dict[str, dict[str, str]] = {
    "web-1": {
        **WEB,
        "__address__": "10.0.0.1:8080",
        "__meta_consul_address": "10.0.0.1",
        "__meta_consul_node": "node-1",
        "__meta_consul_tags": ",prod,v1,",
        "__meta_consul_service_port": "8080",
        "__meta_consul_service_id": "web-1",
        "__meta_consul_health": "passing",
        "__meta_consul_metadata_rack": "r1",
        "__meta_consul_metadata_os_version": "22.04",
        "__meta_consul_service_metadata_team_owner": "core",
        "__meta_consul_service_metadata_version": "1.2",
        "__meta_consul_tagged_address_lan": "10.0.0.1",
        "__meta_consul_tagged_address_lan_ipv4": "10.0.0.1",
        "__meta_consul_tagged_address_wan": "198.51.100.1",
        "__meta_consul_tagged_address_wan_ipv4": "198.51.100.1",
    },
    "web-2": {
        **WEB,
        "__address__": "[2001:db8::10]:9100",
        "__meta_consul_address": "10.0.0.2",
        "__meta_consul_node": "node-2",
        "__meta_consul_tags": ",prod,v1,canary,",
        "__meta_consul_service_address": "2001:db8::10",
        "__meta_consul_service_port": "9100",
        "__meta_consul_service_id": "web-2",
        "__meta_consul_health": "warning",
        "__meta_consul_metadata_rack": "r2",
        "__meta_consul_tagged_address_lan": "10.0.0.2",
    },
    "db": {
        "__meta_consul_service": "db",
        "__meta_consul_dc": "dc1",
        "__address__": "10.0.0.3:0",
        "__meta_consul_address": "10.0.0.3",
        "__meta_consul_node": "node-3",
        "__meta_consul_tags": ",,",
        "__meta_consul_service_port": "0",
        "__meta_consul_service_id": "db",
        "__meta_consul_health": "critical",
    },
    "maint-1": {
        "__meta_consul_service": "maint",
        "__meta_consul_dc": "dc1",
        "__address__": "10.9.9.9:80",
        "__meta_consul_address": "10.0.0.4",
        "__meta_consul_node": "node-4",
        "__meta_consul_tags": ",ops,",
        "__meta_consul_service_address": "10.9.9.9",
        "__meta_consul_service_port": "80",
        "__meta_consul_service_id": "maint-1",
        "__meta_consul_health": "maintenance",
    },
    "maint-2": {
        "__meta_consul_service": "maint",
        "__meta_consul_dc": "dc1",
        "__address__": "10.0.0.4:81",
        "__meta_consul_address": "10.0.0.4",
        "__meta_consul_node": "node-4",
        "__meta_consul_tags": ",ops,",
        "__meta_consul_service_port": "81",
        "__meta_consul_service_id": "maint-2",
        "__meta_consul_health": "maintenance",
    },
    "ent-1": {
        "__meta_consul_service": "ent",
        "__meta_consul_dc": "dc1",
        "__address__": "10.0.0.5:443",
        "__meta_consul_address": "10.0.0.5",
        "__meta_consul_node": "node-5",
        "__meta_consul_namespace": "team-a",
        "__meta_consul_partition": "part-1",
        "__meta_consul_tags": ",x,",
        "__meta_consul_service_port": "443",
        "__meta_consul_service_id": "ent-1",
        "__meta_consul_health": "passing",
    },
    "odd-1": {
        "__meta_consul_service": "odd",
        "__meta_consul_dc": "dc1",
        "__address__": "10.0.0.6:1",
        "__meta_consul_address": "10.0.0.6",
        "__meta_consul_node": "node-6",
        "__meta_consul_tags": ",,",
        "__meta_consul_service_port": "1",
        "__meta_consul_service_id": "odd-1",
    },
    "ipv6-1": {
        "__meta_consul_service": "ipv6",
        "__meta_consul_dc": "dc1",
        "__address__": "[fe80::1%eth0]:9100",
        "__meta_consul_address": "fe80::1%eth0",
        "__meta_consul_node": "node-7",
        "__meta_consul_tags": ",edge,",
        "__meta_consul_service_port": "9100",
        "__meta_consul_service_id": "ipv6-1",
        "__meta_consul_health": "passing",
        "__meta_consul_tagged_address_lan_ipv6": "fe80::1%eth0",
    },
    "collide-1": {
        "__meta_consul_service": "collide",
        "__meta_consul_dc": "dc1",
        "__address__": "10.0.0.8:7",
        "__meta_consul_address": "10.0.0.8",
        "__meta_consul_node": "node.8/x",
        "__meta_consul_tags": ",c,",
        "__meta_consul_service_port": "7",
        "__meta_consul_service_id": "collide-1",
        "__meta_consul_health": "passing",
        # "a-b" and "a.b" both sanitise to a_b: neither is valid, the smaller key wins.
        "__meta_consul_metadata_a_b": "dash",
        # "a_b" is already a valid name and wins over "a.b".
        "__meta_consul_service_metadata_a_b": "plain",
        "__meta_consul_service_metadata__": "umlaut",
    },
    "strict-1": {
        "__meta_consul_service": "strict",
        "__meta_consul_dc": "dc1",
        "__address__": "10.0.0.9:9300",
        "__meta_consul_address": "10.0.0.9",
        "__meta_consul_node": "node-9",
        "__meta_consul_tags": ",strict,",
        "__meta_consul_service_port": "9300",
        "__meta_consul_service_id": "strict-1",
        # A critical service check and node maintenance: maintenance outranks critical.
        "__meta_consul_health": "maintenance",
        # ':' is valid in metric names, not in label names: it is sanitised too.
        "__meta_consul_metadata_k8s_zone": "z1",
    },
    "strict-2": {
        "__meta_consul_service": "strict",
        "__meta_consul_dc": "dc1",
        # A full IPv6 address (no '::') is bracketed all the same.
        "__address__": "[2001:db8:0:0:1:2:3:4]:9301",
        "__meta_consul_address": "10.0.0.10",
        "__meta_consul_node": "node-10",
        "__meta_consul_tags": ",strict,",
        "__meta_consul_service_address": "2001:db8:0:0:1:2:3:4",
        "__meta_consul_service_port": "9301",
        "__meta_consul_service_id": "strict-2",
        "__meta_consul_health": "passing",
    },
}


def labels_by_id(snapshot: Snapshot) -> dict[str, dict[str, str]]:
    """What Prometheus would see per target: the file_sd group's labels plus __address__."""
    rendered: list[dict[str, Any]] = json.loads(render_file_sd(snapshot.groups))
    result = {}
    for group in rendered:
        assert set(group) == {"targets", "labels"}
        (address,) = group["targets"]
        labels = dict(group["labels"], __address__=address)
        result[labels["__meta_consul_service_id"]] = labels
    return result


@pytest.mark.looptime
@pytest.mark.parametrize("mode", ["Polling", "Blocking", "Auto"])
async def test_recorded_answers_give_prometheus_labels_in_every_mode(mode: Mode) -> None:
    async with ReplayConsul(RECORDING) as consul:
        client = ConsulClient(endpoint=ConsulEndpoint(server=consul.address), max_connections=10)
        async with client:
            snapshot = await discover_once(query=DiscoveryQuery(mode=mode), client=client)
        assert consul.unexpected == []
    assert labels_by_id(snapshot) == EXPECTED
    assert snapshot.complete


@pytest.mark.looptime
async def test_a_configured_datacenter_labels_targets_without_asking_the_agent() -> None:
    async with ReplayConsul(RECORDING) as consul:
        client = ConsulClient(
            endpoint=ConsulEndpoint(server=consul.address, datacenter="dc1"), max_connections=10
        )
        async with client:
            snapshot = await discover_once(
                query=DiscoveryQuery(mode="Polling", datacenter="east"), client=client
            )
        assert not any(path.startswith("/v1/agent/self") for path in consul.requests)
    assert {labels["__meta_consul_dc"] for labels in labels_by_id(snapshot).values()} == {"east"}


@pytest.mark.looptime
async def test_the_tag_separator_surrounds_and_joins_tags() -> None:
    async with ReplayConsul(RECORDING) as consul:
        client = ConsulClient(endpoint=ConsulEndpoint(server=consul.address), max_connections=10)
        async with client:
            snapshot = await discover_once(
                query=DiscoveryQuery(mode="Polling", tag_separator="|"), client=client
            )
    labels = labels_by_id(snapshot)
    assert labels["web-2"]["__meta_consul_tags"] == "|prod|v1|canary|"
    assert labels["db"]["__meta_consul_tags"] == "||"


@pytest.mark.looptime
async def test_the_same_consul_state_renders_the_same_bytes_in_every_mode() -> None:
    outputs = set()
    async with ReplayConsul(RECORDING) as consul:
        modes: tuple[Mode, ...] = ("Polling", "Blocking", "Auto")
        for mode in modes:
            client = ConsulClient(endpoint=ConsulEndpoint(server=consul.address), max_connections=5)
            async with client:
                snapshot = await discover_once(query=DiscoveryQuery(mode=mode), client=client)
            outputs.add(render_file_sd(snapshot.groups))
    assert len(outputs) == 1
