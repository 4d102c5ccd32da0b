"""While Consul changes, our outputs follow Prometheus's consul_sd to the same labels.

The fleet is live on a real agent; ``consul-sd discover`` runs in each mode (Polling, Blocking,
Auto) plus the operator's ConfigMap path (Blocking, kubelet-style volume), all with a 1s refresh
interval, next to one Prometheus with its own consul_sd job and file_sd jobs on our outputs.
Each step changes Consul, then waits until the reference shows the change and every file_sd job
equals it. Separately, each of our outputs is watched directly, and the time it took to show the
change is held to a bound: Blocking within a few seconds, Polling within about one interval.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.oracle import fleet
from tests.oracle.conftest import FLEET_TARGETS
from tests.oracle.harness import (
    MODES,
    ConfigMapMirror,
    ConfigMapVolume,
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

# Seconds from the write to the output file showing it. Blocking: the answer of the parked
# query, plus the 1s publication coalescing; Polling: up to one 1s interval plus a cycle. Both
# with margin for a loaded 2-core machine.
BOUNDS = {"polling": 4.0, "blocking": 5.0, "auto": 5.0, "configmap": 5.0}


def _labels(targets: TargetSet, service_id: str) -> dict[str, str]:
    for key, labels in targets.items():
        if key[1] == service_id:
            return labels
    return {}


def _health(service_id: str, value: str) -> Callable[[TargetSet], bool]:
    return lambda targets: _labels(targets, service_id).get("__meta_consul_health") == value


@dataclass(frozen=True)
class Step:
    what: str
    apply: Callable[[ConsulAgent], None]
    done: Callable[[TargetSet], bool]


def _node(name: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(fleet.NODES[name])
    body.update(changes)
    return body


def _register_new_service(agent: ConsulAgent) -> None:
    for number, node in enumerate(("node-a", "node-c"), start=1):
        service = {
            "ID": f"churn-{number}",
            "Service": "churn",
            "Port": 7100 + number,
            "Tags": ["new"],
            "Meta": {"wave": "1"},
        }
        put(agent, "/v1/catalog/register", _node(node, Service=service))


def _flip_health(agent: ConsulAgent) -> None:
    check = {"CheckID": "service:web-1", "Name": "web-1 check", "ServiceID": "web-1"}
    put(agent, "/v1/catalog/register", _node("node-a", Check={**check, "Status": "critical"}))
    # A node-level check turning critical changes every instance on node-b at once.
    node_check = {"CheckID": "disk", "Name": "disk", "Status": "critical"}
    put(agent, "/v1/catalog/register", _node("node-b", Check=node_check))


def _move_node(agent: ConsulAgent) -> None:
    put(
        agent,
        "/v1/catalog/register",
        _node(
            "node-b",
            Address="10.20.9.2",
            TaggedAddresses={"lan": "10.20.9.2", "wan": "198.51.100.2"},
            NodeMeta={"rack": "r9"},
        ),
    )


def _deregister(agent: ConsulAgent) -> None:
    put(agent, "/v1/catalog/deregister", {"Node": "node-f", "ServiceID": "cache-05"})
    put(agent, "/v1/catalog/deregister", {"Node": "node-b", "ServiceID": "db-1"})
    put(agent, "/v1/catalog/deregister", {"Node": "node-e"})  # a whole node with its services


def _node_maintenance(enable: bool) -> Callable[[ConsulAgent], None]:
    def apply(agent: ConsulAgent) -> None:
        put(agent, f"/v1/agent/maintenance?enable={str(enable).lower()}&reason=oracle")

    return apply


def _retag(agent: ConsulAgent) -> None:
    service = {
        "ID": "api-2",
        "Service": "api",
        "Address": "fe80::1%eth0",
        "Port": 8443,
        "Tags": ["prod", "v2", "canary"],
        "Meta": {"proto": "https", "track": "beta"},
    }
    put(agent, "/v1/catalog/register", _node("node-b", Address="10.20.9.2", Service=service))


STEPS = [
    Step(
        "a new service with two instances",
        _register_new_service,
        lambda t: {"churn-1", "churn-2"} <= {key[1] for key in t},
    ),
    Step(
        "a service check and a node check flip to critical",
        _flip_health,
        lambda t: _health("web-1", "critical")(t) and _health("cache-01", "critical")(t),
    ),
    Step(
        "a node moves to another address, tagged addresses and meta",
        _move_node,
        lambda t: (
            _labels(t, "db-1").get("__meta_consul_address") == "10.20.9.2"
            and _labels(t, "db-1").get("__meta_consul_metadata_rack") == "r9"
            and "__meta_consul_metadata_topology_kubernetes_io_zone" not in _labels(t, "db-1")
        ),
    ),
    Step(
        "an instance, a service and a whole node are deregistered",
        _deregister,
        lambda t: (
            not {"cache-05", "db-1", "legacy-1", "cache-04"} & {key[1] for key in t}
            and bool(_labels(t, "cache-00"))
        ),
    ),
    Step(
        "the agent's node enters maintenance",
        _node_maintenance(True),
        lambda t: _health("agent-web-1", "maintenance")(t) and _health("consul", "maintenance")(t),
    ),
    Step(
        "the agent's node leaves maintenance",
        _node_maintenance(False),
        lambda t: _health("agent-web-1", "passing")(t) and _health("consul", "passing")(t),
    ),
    Step(
        "an instance changes its port, tags and meta",
        _retag,
        lambda t: (
            _labels(t, "api-2").get("__meta_consul_tags") == ",prod,v2,canary,"
            and _labels(t, "api-2").get("__address__") == "[fe80::1%eth0]:8443"
        ),
    ),
]


@pytest.fixture
def mirror(fleet_agent: ConsulAgent, tmp_path: Path) -> Iterator[ConfigMapMirror]:
    running = ConfigMapMirror(fleet_agent.address, ConfigMapVolume(tmp_path / "configmap"))
    yield running
    running.stop()


def test_every_output_follows_consul_sd_through_registrations_health_flips_and_moves(
    fleet_agent: ConsulAgent,
    prometheus_factory: Callable[..., Prometheus],
    discoverers: Callable[..., Discoverer],
    mirror: ConfigMapMirror,
    tmp_path: Path,
) -> None:
    server = fleet_agent.address
    ours: dict[str, Callable[[], TargetSet]] = {
        mode: discoverers(server, tmp_path / f"{mode}.json", mode).targets for mode in MODES
    }
    ours["configmap"] = mirror.targets
    jobs = [consul_job("consul", server)]
    jobs += [file_job(mode, [tmp_path / f"{mode}.json"]) for mode in MODES]
    jobs.append(file_job("configmap", [mirror.volume.directory / "*.json"]))
    prometheus = prometheus_factory(prometheus_config(jobs))
    wait_for_agreement(
        prometheus,
        reference="consul",
        jobs=list(ours),
        expect=count_is(FLEET_TARGETS),
        what="the starting state on every output",
    )

    timings: dict[str, dict[str, float]] = {}
    for step in STEPS:
        assert not step.done(ours["polling"]()), f"{step.what}: already true before the step"
        started = time.monotonic()
        step.apply(fleet_agent)
        seen: dict[str, float] = {}
        deadline = started + max(BOUNDS.values()) + 10
        while len(seen) < len(ours) and time.monotonic() < deadline:
            for name, read in ours.items():
                if name not in seen and step.done(read()):
                    seen[name] = time.monotonic() - started
            time.sleep(0.05)
        timings[step.what] = seen
        late = {
            name: round(seen.get(name, float("inf")), 2)
            for name in ours
            if seen.get(name, float("inf")) > BOUNDS[name]
        }
        assert not late, f"{step.what}: outputs later than {BOUNDS} (seconds): {late}"
        wait_for_agreement(
            prometheus,
            reference="consul",
            jobs=list(ours),
            expect=step.done,
            what=f"every output to equal consul_sd after: {step.what}",
        )
    print("\nseconds from the Consul write to each output showing it:")
    for what, seen in timings.items():
        print(f"  {what}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(seen.items())))
