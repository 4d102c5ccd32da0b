"""Polling with ``wakeOnChange`` follows Prometheus's consul_sd within seconds, not intervals.

The fleet is live on a real agent; ``consul-sd discover --mode polling`` runs with a 5m refresh
interval and ``wakeOnChange`` on, next to one Prometheus with its own consul_sd job (1s) and a
file_sd job on our output. Each step makes one kind of change in Consul; our output must show it
within ``BOUND`` seconds of the write (far below the interval, so only a wake-up can explain it),
then Prometheus's two jobs must agree label for label. The kinds are the ones the table watches
name: a health flip either way, a node's address and its meta, an instance registered in an
existing service with a check given no Status (Consul makes it critical), a passing instance
deregistered from an existing service, a whole service added and removed.
"""

from __future__ import annotations

import copy
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.oracle import fleet
from tests.oracle.conftest import FLEET_TARGETS
from tests.oracle.harness import (
    CLI,
    CLI_ENV,
    Discoverer,
    TargetSet,
    consul_job,
    count_is,
    file_job,
    prometheus_config,
    put,
    wait_for_agreement,
)
from tests.support.components import ConsulAgent, Prometheus

pytestmark = pytest.mark.e2e

# Seconds from the write to our output showing it: a table watch's answer, a narrowed cycle and
# the write of the file, on a loaded 2-core machine. The refresh interval is 5m.
BOUND = 5.0
REFRESH = "5m"
MOVED_ADDRESS = "10.20.9.2"


def _labels(targets: TargetSet, service_id: str) -> dict[str, str]:
    for key, labels in targets.items():
        if key[1] == service_id:
            return labels
    return {}


def _ids(targets: TargetSet) -> set[str]:
    return {key[1] for key in targets}


def _node(name: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(fleet.NODES[name])
    body.update(changes)
    return body


def _web_check(status: str) -> Callable[[ConsulAgent], None]:
    check = {"CheckID": "service:web-1", "Name": "web-1 check", "ServiceID": "web-1"}
    return lambda agent: put(
        agent, "/v1/catalog/register", _node("node-a", Check={**check, "Status": status})
    )


def _move_node_b(agent: ConsulAgent) -> None:
    put(agent, "/v1/catalog/register", _node("node-b", Address=MOVED_ADDRESS))


def _retag_node_b(agent: ConsulAgent) -> None:
    meta = {"rack": "r9", "topology.kubernetes.io/zone": "zone-b"}
    put(agent, "/v1/catalog/register", _node("node-b", Address=MOVED_ADDRESS, NodeMeta=meta))


def _join_web(agent: ConsulAgent) -> None:
    # The check has no Status: Consul stores it critical, as an agent's new checks start.
    service = {"ID": "web-9", "Service": "web", "Port": 8089, "Tags": ["prod"]}
    check = {"CheckID": "service:web-9", "Name": "web-9 check", "ServiceID": "web-9"}
    put(agent, "/v1/catalog/register", _node("node-c", Service=service, Check=check))


def _leave_cache(agent: ConsulAgent) -> None:
    put(agent, "/v1/catalog/deregister", {"Node": "node-d", "ServiceID": "cache-03"})


def _add_service(agent: ConsulAgent) -> None:
    for number, node in enumerate(("node-a", "node-c"), start=1):
        service = {"ID": f"wake-{number}", "Service": "wake", "Port": 7200 + number}
        check = {
            "CheckID": f"service:wake-{number}",
            "Name": "wake",
            "Status": "passing",
            "ServiceID": f"wake-{number}",
        }
        put(agent, "/v1/catalog/register", _node(node, Service=service, Check=check))


def _remove_service(agent: ConsulAgent) -> None:
    for number, node in enumerate(("node-a", "node-c"), start=1):
        put(agent, "/v1/catalog/deregister", {"Node": node, "ServiceID": f"wake-{number}"})


@dataclass(frozen=True)
class Step:
    what: str
    apply: Callable[[ConsulAgent], None]
    done: Callable[[TargetSet], bool]


def _health_of(service_id: str, value: str) -> Callable[[TargetSet], bool]:
    return lambda targets: _labels(targets, service_id).get("__meta_consul_health") == value


STEPS = [
    Step("a service check turns critical", _web_check("critical"), _health_of("web-1", "critical")),
    Step("the check passes again", _web_check("passing"), _health_of("web-1", "passing")),
    Step(
        "a node moves to another address",
        _move_node_b,
        lambda t: _labels(t, "db-1").get("__meta_consul_address") == MOVED_ADDRESS,
    ),
    Step(
        "a node's meta changes",
        _retag_node_b,
        lambda t: _labels(t, "db-1").get("__meta_consul_metadata_rack") == "r9",
    ),
    Step(
        "an instance joins an existing service, its check given no status",
        _join_web,
        _health_of("web-9", "critical"),
    ),
    Step(
        "a passing instance leaves an existing service",
        _leave_cache,
        lambda t: "cache-03" not in _ids(t) and "cache-00" in _ids(t),
    ),
    Step("a whole service is added", _add_service, lambda t: {"wake-1", "wake-2"} <= _ids(t)),
    Step(
        "a whole service is removed",
        _remove_service,
        lambda t: not {"wake-1", "wake-2"} & _ids(t) and "web-9" in _ids(t),
    ),
]


def _wake_args(spec: Path) -> list[str]:
    """``--wake-on-change`` where the CLI has it, else the same through a --spec file."""
    help_text = subprocess.run(
        [*CLI, "discover", "--help"],
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=60,
        check=False,
    ).stdout
    args = ["--refresh-interval", REFRESH]
    if "--wake-on-change" in help_text:
        return [*args, "--wake-on-change"]
    spec.write_text(f"wakeOnChange: true\nrefreshInterval: {REFRESH}\n")
    return [*args, "--spec", str(spec)]


def test_polling_that_wakes_on_change_shows_each_kind_of_change_within_seconds(
    fleet_agent: ConsulAgent,
    prometheus_factory: Callable[..., Prometheus],
    discoverers: Callable[..., Discoverer],
    tmp_path: Path,
) -> None:
    server = fleet_agent.address
    output = tmp_path / "wake.json"
    ours = discoverers(server, output, "polling", *_wake_args(tmp_path / "spec.yaml"))
    jobs = [consul_job("consul", server), file_job("wake", [output])]
    prometheus = prometheus_factory(prometheus_config(jobs))
    wait_for_agreement(
        prometheus,
        reference="consul",
        jobs=["wake"],
        expect=count_is(FLEET_TARGETS),
        what="the starting state",
    )

    timings: dict[str, float] = {}
    for step in STEPS:
        assert not step.done(ours.targets()), f"{step.what}: already true before the step"
        started = time.monotonic()
        step.apply(fleet_agent)
        deadline = started + BOUND + 5  # a late change is reported with its delay
        while not step.done(ours.targets()) and time.monotonic() < deadline:
            time.sleep(0.05)
        timings[step.what] = time.monotonic() - started
        assert timings[step.what] <= BOUND, (
            f"{step.what}: not in our output after {timings[step.what]:.2f}s (bound {BOUND}s, "
            f"refresh interval {REFRESH}); earlier steps: {timings}\n{ours.log()[-3000:]}"
        )
        wait_for_agreement(
            prometheus,
            reference="consul",
            jobs=["wake"],
            expect=step.done,
            what=f"our output to equal consul_sd after: {step.what}",
        )
    print("\nseconds from the Consul write to our output showing it:")
    for what, seen in timings.items():
        print(f"  {what}: {seen:.2f}")
