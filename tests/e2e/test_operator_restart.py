"""An operator restart while a service fails: it keeps its targets, the others still update.

The real kube-apiserver holds the outputs; the restarted operator reads them back as the seed of
its first discovery (issue: before, a whole CR waited for every service to answer once, or a
restarted worker dropped the failing service's targets).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.e2e.operator_harness import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    Simulator,
    condition,
    eventually,
    sample_cr,
)
from tests.support.components import ControlPlane

pytestmark = pytest.mark.e2e


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    simulator = Simulator(tmp_path, services=6, instances=2, nodes=4)
    yield simulator
    simulator.stop()


def held(api: k8s.ApiClient, namespace: str) -> list[dict[str, Any]]:
    items = (
        k8s.CoreV1Api(api)
        .list_namespaced_config_map(namespace, label_selector="consul-sd.io/discovery=fleet")
        .items
    )
    return [
        group for item in items for text in (item.data or {}).values() for group in json.loads(text)
    ]


def services(groups: list[dict[str, Any]]) -> set[str]:
    return {group["labels"]["__meta_consul_service"] for group in groups}


def status(api: k8s.ApiClient, namespace: str) -> dict[str, Any]:
    cr: dict[str, Any] = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "fleet"
    )
    return cr


@pytest.mark.parametrize("mode", ["Polling", "Blocking"])
def test_a_service_failing_across_an_operator_kill_keeps_its_targets_while_others_update(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    consul_sd_crd: None,
    namespace: str,
    sim: Simulator,
    tmp_path: Path,
    mode: str,
) -> None:
    body = sample_cr("fleet", server=sim.address, mode=mode)
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    scope = ("--namespace", namespace)
    first = Operator(control_plane, tmp_path, scope=scope)
    try:
        everything = eventually(
            lambda: services(held(api, namespace)) if len(held(api, namespace)) == 12 else None,
            what="the first complete set",
        )
    finally:
        first.kill()
    assert everything is not None
    failing = sorted(everything)[0]
    sim.faults(fail_services=[failing])
    other = sorted(everything)[1]
    sim.register({"Node": "late", "Address": "10.9.9.9", "Service": {"Service": other, "Port": 9}})
    second = Operator(control_plane, tmp_path, scope=scope)
    try:
        eventually(
            lambda: any(g["targets"] == ["10.9.9.9:9"] for g in held(api, namespace)),
            timeout=60,
            what="the restarted operator to publish the new instance",
        )
        assert services(held(api, namespace)) == everything
        eventually(
            lambda: (
                condition(status(api, namespace), "Degraded").get("reason") == "ServicesFailing"
            ),
            timeout=30,
            what="Degraded=ServicesFailing",
        )
    finally:
        second.stop()
