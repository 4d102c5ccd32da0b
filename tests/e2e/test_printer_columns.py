"""``kubectl get csd`` columns read back from a real apiserver (issue 17).

The status is written by the operator's own reporting code (a :class:`GenerationSink` over the
real :class:`consul_sd.kube.Kube`), then read with the real ``kubectl`` when one is installed,
else through the apiserver's Table output, which is what kubectl prints.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from consul_sd.api.names import GROUP, PLURAL, VERSION
from consul_sd.api.spec import parse_spec
from consul_sd.consul.errors import ConsulUnreachable
from consul_sd.controller.runner import GenerationSink
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.kube import DiscoveryRef, Kube
from tests.e2e.operator_harness import create_cr, get_cr, sample_cr
from tests.support.components import ControlPlane, http_request
from tests.unit.test_outputs import fleet

pytestmark = pytest.mark.e2e

KUBECTL = shutil.which("kubectl")
TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1"


async def publish(api: k8s.ApiClient, ref: DiscoveryRef, snapshot: Snapshot) -> None:
    spec = parse_spec(sample_cr(ref.name, server="c:8500")["spec"], require_output=True)
    sink = GenerationSink(kube=Kube(api), ref=ref, generation=1, spec=spec)
    await sink.resume()
    await sink.publish(snapshot)


def created(api: k8s.ApiClient, namespace: str, name: str) -> DiscoveryRef:
    create_cr(api, namespace, sample_cr(name, server="c:8500"))
    uid = get_cr(api, namespace, name)["metadata"]["uid"]
    return DiscoveryRef(namespace=namespace, name=name, uid=uid)


def kubectl_rows(kubeconfig: Path, namespace: str, *, wide: bool) -> list[dict[str, str]]:
    """``kubectl get csd`` (``-o wide``) as one dict per row, keyed by column header."""
    assert KUBECTL is not None
    command = [KUBECTL, "--kubeconfig", str(kubeconfig), "-n", namespace, "get", "csd"]
    printed = subprocess.run(
        [*command, *(["-o", "wide"] if wide else [])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    header = printed[0]
    # Columns are left-aligned under their headers; a header may hold a space ("LAST SYNC").
    names = [n for n in header.replace("LAST SYNC", "LAST_SYNC").split()]
    starts = [header.replace("LAST SYNC", "LAST_SYNC").index(n) for n in names]
    rows = []
    for line in printed[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def table_rows(plane: ControlPlane, namespace: str, *, wide: bool) -> list[dict[str, str]]:
    """The apiserver's Table answer (what kubectl prints), headers as kubectl prints them."""
    answer = http_request(
        "GET",
        f"{plane.server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
        headers={"Accept": TABLE},
        token=plane.token,
        cafile=plane.ca_file,
        timeout=30,
    )
    assert answer.status == 200, answer.text
    table = answer.json()
    shown = [i for i, c in enumerate(table["columnDefinitions"]) if wide or c["priority"] == 0]
    names = [table["columnDefinitions"][i]["name"].upper().replace(" ", "_") for i in shown]
    return [
        {n: _cell(row["cells"][i]) for n, i in zip(names, shown, strict=True)}
        for row in table["rows"]
    ]


def _cell(value: Any) -> str:
    return "" if value is None else str(value)  # kubectl prints a missing field as nothing


@pytest.fixture(params=["kubectl", "table"])
def reader(request: pytest.FixtureRequest) -> str:
    if request.param == "kubectl" and KUBECTL is None:
        pytest.skip("no kubectl on PATH: the Table variant reads the same columns")
    return str(request.param)


def test_kubectl_get_shows_status_and_last_sync_and_wide_adds_failed_and_outputs(
    control_plane: ControlPlane,
    consul_sd_crd: None,
    api: k8s.ApiClient,
    namespace: str,
    reader: str,
) -> None:
    def rows(*, wide: bool) -> dict[str, dict[str, str]]:
        if reader == "kubectl":
            found = kubectl_rows(control_plane.kubeconfig, namespace, wide=wide)
        else:
            found = table_rows(control_plane, namespace, wide=wide)
        return {row["NAME"]: row for row in found}

    healthy = created(api, namespace, "healthy")
    down = created(api, namespace, "down")
    failing = created(api, namespace, "failing")
    unreachable = ConsulUnreachable("c:8500: connection refused")
    complete: dict[str, Any] = {"mode": "Polling", "complete": True, "matched": 4}

    async def write_all() -> None:
        await publish(api, healthy, Snapshot(groups=fleet(4), **complete))
        await publish(
            api,
            down,
            Snapshot(groups={}, mode="Polling", complete=False, matched=0, error=unreachable),
        )
        # A complete snapshot whose one service failed (it keeps its seeded targets).
        groups = fleet(4)
        await publish(
            api,
            failing,
            Snapshot(groups=groups, **complete, failed={sorted(groups)[0]: unreachable}),
        )

    asyncio.run(write_all())

    table = rows(wide=False)
    assert list(table["healthy"]) == [
        "NAME", "MODE", "SERVICES", "TARGETS", "READY", "STATUS", "LAST_SYNC", "AGE"
    ]  # fmt: skip
    assert table["healthy"]["READY"] == "True"
    assert table["healthy"]["STATUS"] == "Synced"
    assert table["healthy"]["TARGETS"] == "12"
    assert table["healthy"]["LAST_SYNC"] != ""
    assert table["down"]["READY"] == "False"
    assert table["down"]["STATUS"] == "ConsulUnreachable"
    assert table["down"]["LAST_SYNC"] == ""  # never synced
    assert table["down"]["TARGETS"] == ""  # nothing written
    assert table["failing"]["STATUS"] == "ServicesFailing"

    wide = rows(wide=True)
    assert list(wide["failing"])[-2:] == ["FAILED", "OUTPUTS"]
    assert wide["failing"]["FAILED"] == "1"
    assert wide["healthy"]["OUTPUTS"] == "healthy-0"
    assert wide["down"]["OUTPUTS"] == ""
