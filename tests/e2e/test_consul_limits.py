"""Limits that hold for whole processes against real components (issue 10).

The memory bound of ``consul-sd discover --once`` against a server streaming 800 MB (a real
process, its peak RSS from the kernel), and the apiserver enforcing the CRD's refreshInterval
floor. Both take seconds, so they live in the e2e tier; the client's own limits are unit-tested
in tests/unit/test_consul_limits.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from aiohttp import web
from tools.crd import render_crd

from tests.support.components import ControlPlane, apply_crds
from tests.unit.test_consul_limits import answering, serve

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


# Peak RSS of `consul-sd discover --once` reading an 800 MB answer, over the same command
# reading a small one: the 64 MiB buffer plus aiohttp's read-ahead, with room for allocator
# slack. Without the cap the process grows by the whole answer (2.3 GiB in issue 10).
RSS_BOUND = 150 * MiB
HUGE_ANSWER = 800 * 1000 * 1000


async def run_discover_once(server: str, tmp_path: Path) -> tuple[int, str, int]:
    """Exit code, stderr and peak RSS (bytes) of ``consul-sd discover --once`` against ``server``.

    The peak comes from the kernel (wait4's ru_maxrss, exact); psutil samples meanwhile and kills
    the process once it is far past any bound, so a regression cannot eat the machine.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "operator")}
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        process = subprocess.Popen(  # noqa: ASYNC220 - reaped by wait4 below, for its rusage
            [
                sys.executable,
                "-m",
                "consul_sd.cli",
                "discover",
                "--once",
                "--server",
                server,
                "--datacenter",
                "dc1",
                "--services",
                "web",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    watched = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # noqa: ASYNC222 - never blocks
        if pid:
            break
        try:
            if watched.memory_info().rss > RSS_BOUND + 400 * MiB:
                watched.kill()
        except psutil.NoSuchProcess:
            pass
        await asyncio.sleep(0.01)
    else:
        process.kill()
        pid, status, usage = os.wait4(process.pid, 0)  # noqa: ASYNC222 - killed: returns at once
    process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it again
    peak = usage.ru_maxrss * 1024 if sys.platform != "darwin" else usage.ru_maxrss
    return process.returncode, err_path.read_text(), peak


async def test_discover_once_stays_within_its_memory_bound_against_an_800mb_answer(
    tmp_path: Path,
) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"[" + b" " * (MiB - 1)
        try:
            for _ in range(HUGE_ANSWER // MiB):
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    async with serve(answering(b"[]")) as small:
        code, _, baseline = await run_discover_once(small, tmp_path)
    assert code == 0
    async with serve(huge) as server:
        code, err, peak = await run_discover_once(server, tmp_path)
    assert code == 1, err
    assert err.splitlines() == [
        f"consul-sd: error: 1 of 1 services not discovered: Consul at http://{server}: "
        "MalformedConsulResponse: /v1/health/service/web: answer larger than 64 MiB; "
        "is this Consul?"
    ]
    assert peak - baseline < RSS_BOUND, f"peak {peak / MiB:.0f} MiB, baseline {baseline / MiB:.0f}"


def discovery(name: str, refresh_interval: str) -> dict[str, object]:
    return {
        "apiVersion": "consul-sd.io/v1alpha1",
        "kind": "ConsulDiscovery",
        "metadata": {"name": name},
        "spec": {
            "consul": {"server": "127.0.0.1:1"},
            "refreshInterval": refresh_interval,
            "output": {"configMap": {"name": name}},
        },
    }


def test_the_apiserver_refuses_a_refresh_interval_below_one_second(
    control_plane: ControlPlane,
) -> None:
    apply_crds(control_plane, [yaml.safe_load(render_crd())], field_manager="e2e-limits")
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    created = control_plane.request(
        "POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}}
    )
    assert created.status == 201, created.text
    path = f"/apis/consul-sd.io/v1alpha1/namespaces/{namespace}/consuldiscoveries"
    answers = {
        value: control_plane.request("POST", path, body=discovery(f"r{i}", value))
        for i, value in enumerate(["500ms", "0s", "0m0s999ms", "1s", "1000ms", "1d", "2m"])
    }
    refused = {value for value, answer in answers.items() if answer.status == 422}
    assert refused == {"500ms", "0s", "0m0s999ms"}
    assert {answers[value].status for value in answers if value not in refused} == {201}
    assert (
        'spec.refreshInterval: Invalid value: "500ms": must be at least 1s'
        in (answers["500ms"].json()["message"])
    )
