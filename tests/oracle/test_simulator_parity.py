"""The simulator answers as the real agent does, for the same registrations.

The same PUT /v1/catalog/register bodies go to a real Consul 1.16.3 dev agent and to
``ConsulSimulator``; then their answers are compared three ways: the register answers themselves
(including the bodies Consul refuses), the raw JSON of the endpoints discovery reads, and what
``consul-sd discover --once`` makes of each, with and without selectors.

What legitimately differs is left out: the agent's own node and the services on it (the agent's
``consul`` service, the agent-API services of the fleet), Create/ModifyIndex values (raft history
differs), and the tag order of /v1/catalog/services (Go map order on the agent, sorted in the
simulator, as its docstring says).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.oracle import fleet
from tests.oracle.fleet import SELECTORS
from tests.oracle.harness import (
    Selector,
    SimulatorThread,
    TargetSet,
    describe_difference,
    discover_once,
    file_sd_targets,
    finish,
    start_once,
)
from tests.support.components import ConsulAgent

pytestmark = pytest.mark.e2e

_LONG_VALUE = "v" * 513
# (what it is, register body): each goes to both; status and message must match.
PROBES: list[tuple[str, dict[str, Any]]] = [
    ("a dotted service meta key", {"Service": {"Service": "p", "Meta": {"a.b": "x"}}}),
    ("a slashed service meta key", {"Service": {"Service": "p", "Meta": {"a/b": "x"}}}),
    ("a reserved service meta key", {"Service": {"Service": "p", "Meta": {"consul-x": "1"}}}),
    ("a blank service meta key", {"Service": {"Service": "p", "Meta": {"": "x"}}}),
    ("a too long service meta key", {"Service": {"Service": "p", "Meta": {"k" * 129: "x"}}}),
    ("a too long service meta value", {"Service": {"Service": "p", "Meta": {"k": _LONG_VALUE}}}),
    (
        "65 service meta pairs",
        {"Service": {"Service": "p", "Meta": {f"k{i}": "v" for i in range(65)}}},
    ),
    ("service address 0.0.0.0", {"Service": {"Service": "p", "Address": "0.0.0.0"}}),
    ("service address ::", {"Service": {"Service": "p", "Address": "::"}}),
    ("service address [::]", {"Service": {"Service": "p", "Address": "[::]"}}),
    ("a service ID without a name", {"Service": {"ID": "p-1"}}),
    ("a node ID that is no UUID", {"ID": "not-a-uuid"}),
    ("a node ID with a bad hex digit", {"ID": "12345678-1234-1234-1234-12345678901z"}),
    ("a check for an unknown service", {"Check": {"CheckID": "c", "ServiceID": "nope"}}),
    ("a check on another node", {"Check": {"CheckID": "c", "Node": "elsewhere"}}),
    ("no address", {"Address": None}),
    ("another datacenter", {"Datacenter": "dc9"}),
    # Accepted: Consul stores a status it does not know, and an absent one as critical.
    (
        "an unknown check status",
        {
            "Service": {"ID": "probe-1", "Service": "probe", "Port": 1},
            "Checks": [
                {"CheckID": "odd", "Status": "degraded", "ServiceID": "probe-1"},
                {"CheckID": "unset", "Name": "no status"},
            ],
        },
    ),
    (
        "a valid hyphenated meta key",
        {"Service": {"ID": "probe-2", "Service": "probe", "Meta": {"a-b_c": ""}}},
    ),
]


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorThread]:
    """A simulator given the fleet's catalog bodies; its answers are in ``fleet_answers``."""
    thread = SimulatorThread()
    try:
        for body in fleet.catalog_bodies():
            answer = thread.request("PUT", "/v1/catalog/register", body=body)
            thread.fleet_answers.append((body, answer.status, answer.text.strip()))
        yield thread
    finally:
        thread.stop()


def test_registrations_get_the_same_answer_from_the_simulator_and_the_agent(
    fleet_agent: ConsulAgent, simulator: SimulatorThread
) -> None:
    # The agent accepted every fleet body (fleet_agent asserts it); so must the simulator.
    refused = [answer for answer in simulator.fleet_answers if answer[1:] != (200, "true")]
    assert not refused, refused
    differences = []
    for what, extra in PROBES:
        body = {"Node": "probe-node", "Address": "10.99.0.1", **extra}
        body = {key: value for key, value in body.items() if value is not None}
        real = fleet_agent.request("PUT", "/v1/catalog/register", body=body)
        simulated = simulator.request("PUT", "/v1/catalog/register", body=body)
        if (real.status, real.text.strip()) != (simulated.status, simulated.text.strip()):
            differences.append(
                f"{what}: agent {real.status} {real.text.strip()!r}, "
                f"simulator {simulated.status} {simulated.text.strip()!r}"
            )
    assert not differences, "\n".join(differences)


def _without_indexes(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _without_indexes(item)
            for key, item in value.items()
            if key not in ("CreateIndex", "ModifyIndex")
        }
    if isinstance(value, list):
        return [_without_indexes(item) for item in value]
    return value


def _read(request: Any, path: str, *, agent_node: str) -> Any:
    answer = request("GET", path)
    assert answer.status == 200, f"GET {path}: {answer.status} {answer.text}"
    data = answer.json()
    if isinstance(data, list):
        data = [
            row
            for row in data
            if (row.get("Node", {}).get("Node") if "Service" in row else row.get("Node"))
            != agent_node
        ]
    return _without_indexes(data)


def test_the_simulator_serves_the_same_json_as_the_agent(
    fleet_agent: ConsulAgent, simulator: SimulatorThread
) -> None:
    agent_node = fleet_agent.node_name
    real_services = fleet_agent.request("GET", "/v1/catalog/services").json()
    simulated_services = simulator.request("GET", "/v1/catalog/services").json()
    agent_only = {"consul"} | {service["Name"] for service in fleet.AGENT_SERVICES}
    assert {
        name: sorted(tags) for name, tags in real_services.items() if name not in agent_only
    } == {name: sorted(tags) for name, tags in simulated_services.items()}

    names = [quote(name, safe="") for name in sorted(simulated_services)]
    paths = [f"/v1/health/service/{name}" for name in names]
    paths += [f"/v1/catalog/service/{name}" for name in names]
    paths += ["/v1/health/state/any", "/v1/health/state/critical", "/v1/catalog/nodes"]
    differences = []
    for path in paths:
        real = _read(fleet_agent.request, path, agent_node=agent_node)
        simulated = _read(simulator.request, path, agent_node=agent_node)
        # Serialised, so the order of keys (Go sorts map keys) counts as well.
        if json.dumps(real) != json.dumps(simulated):
            differences.append(
                f"{path}\n  agent:     {json.dumps(real)[:700]}\n"
                f"  simulator: {json.dumps(simulated)[:700]}"
            )
    assert not differences, "\n".join(differences)


def _registered_only(targets: TargetSet, agent_node: str) -> TargetSet:
    return {key: labels for key, labels in targets.items() if key[0] != agent_node}


def test_discover_once_finds_the_same_targets_on_the_simulator_and_the_agent(
    fleet_agent: ConsulAgent, simulator: SimulatorThread, tmp_path: Path
) -> None:
    selectors = {"all": Selector(), **SELECTORS}
    sides = {"agent": fleet_agent.address, "simulator": simulator.address}
    finish(
        {
            (name, side): start_once(
                server, tmp_path / f"{name}-{side}.json", *selector.cli_args(), mode="polling"
            )
            for name, selector in selectors.items()
            for side, server in sides.items()
        }
    )
    differences = []
    for name in selectors:
        agent_targets = file_sd_targets(tmp_path / f"{name}-agent.json")
        real = _registered_only(agent_targets, fleet_agent.node_name)
        simulated = file_sd_targets(tmp_path / f"{name}-simulator.json")
        assert real, f"{name}: the agent gave no registered target at all"
        difference = describe_difference(real, simulated, names=("agent", "simulator"))
        if difference:
            differences.append(f"selector {name}:\n{difference}")
    assert not differences, "\n".join(differences)


def test_discover_once_output_is_byte_identical_for_the_whole_fleet(
    fleet_agent: ConsulAgent, simulator: SimulatorThread
) -> None:
    services = sorted(
        {body["Service"]["Service"] for body in fleet.catalog_bodies() if "Service" in body}
    )
    real = discover_once(fleet_agent.address, "--services", ",".join(services))
    simulated = discover_once(simulator.address, "--services", ",".join(services))
    assert (real.returncode, simulated.returncode) == (0, 0), real.stderr + simulated.stderr
    assert real.stdout == simulated.stdout
