"""Benchmark (issue 15): how fresh each discoverer's targets stay under mixed churn, and its cost.

    python -m benchmarks.freshness [--services 7000] [--runs 3] [--churn-seconds 300]
        [--systems prometheus,wake,polling,idle]

Per run, each system on its own fresh Consul agent restored from the same fleet snapshot
(consul_env.FreshConsul: N services x 3 instances): start it, wait for its first complete
target set, then a mixed churn of about one change per second (``--rate``), round-robin over
the kinds in ``KINDS``, each change on services (and nodes) no other change touches, from one
seeded plan that is the same for every system. The churn starts no sooner than ``--warmup`` s
after the system (Prometheus parks its watches only after its first refresh_interval). Then
wait (``--settle``) until every change is seen, and check the end state.

- Changes and what marks them seen (the changed instance's labels): health flip of an
  instance's check (``__meta_consul_health`` critical; passing again ``--recover-after`` s
  later), node address (``__meta_consul_address``) and node meta (``..._metadata_rack``) of a
  node, seen on one instance of an otherwise unchurned service there; an instance registered in
  an existing service (present; its check is registered without a Status, so Consul starts it
  critical as an agent would, and is made passing 2 s later), an instance deregistered (absent),
  a whole service added (1 instance with a passing check; present) or removed (3 instances,
  absent), a definition edited (the instance re-registered with a new port:
  ``__meta_consul_service_port``).
- Systems: ``prometheus`` (its consul_sd, default refresh_interval, fixed 2m watch),
  ``wake`` (``consul-sd discover --mode polling --max-concurrent 100 --refresh-interval 5m``
  with wakeOnChange: the CLI flag if it has one, else a --spec file when the spec knows the
  field; skipped when neither does), ``polling`` (the same without wakeOnChange: today's
  Polling), ``idle`` (no discoverer, the same writes: Consul's own cost of the churn, the
  baseline for "above idle").
- Latency: from the moment Consul answered the write to the first observation (every
  ``--poll`` s) of the changed target's distinguishing labels in the output: our file (re-read
  when its inode, mtime or size changes) or Prometheus's active targets. Prometheus's job keeps
  only the churned services (a keep relabel; it still watches every service, so its cost to
  Consul is unchanged), which keeps the 250 ms reads cheap; our file is scanned for service IDs
  and only the churned services' lines are parsed.
- A health flip's return to passing is written ``--recover-after`` s after the flip; a flip not
  seen by then is "masked" (it can no longer be seen) and counts as not seen.
- Losses: a target present in one observation and absent from the next while it still exists
  in Consul (the harness knows: the fleet plus its own writes; deregistrations leave the set
  before they are written). Prometheus is observed on the churned services only.
- End state: ours equals a fresh ``consul-sd discover --once`` line for line; Prometheus's
  churned targets carry the same ``__meta_consul_*`` labels as that file's.
- Cost: peak connections to Consul (procfs, every ``--sample-interval`` s), Consul CPU s/min and
  discovery requests/min (Consul's telemetry) over the churn window, CPU above the idle run's.

Results: benchmarks/results/<date>-freshness.{json,md}, medians over ``--runs``. Only
127.0.0.1; every wait is bounded; every process started is stopped before the next scenario.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.support.components import http_request

from benchmarks import consul_env, systems
from benchmarks.field_report import machine
from benchmarks.procfs import Sampler, cpu_seconds
from consul_simulator.fleet import fleet_registrations, service_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SYSTEMS = ("prometheus", "wake", "polling", "idle")
POLLING_ARGS = ("--mode", "polling", "--max-concurrent", "100", "--refresh-interval", "5m")
KINDS = (
    "health flip",
    "node address",
    "node meta",
    "instance registered",
    "instance deregistered",
    "service added",
    "service removed",
    "definition edited",
)
RECOVERY = "health back to passing"
ROWS = (KINDS[0], RECOVERY, *KINDS[1:])
SERVICE_ID = "__meta_consul_service_id"
NEW_SERVICE = "churn-new-{:04d}"
_SERVICE_RE = re.compile(rb'"__meta_consul_service":"([^"]*)"')
_ID_RE = re.compile(rb'"__meta_consul_service_id":"([^"]*)"')
REGISTER = "/v1/catalog/register"
DEREGISTER = "/v1/catalog/deregister"

Labels = dict[str, str]
View = dict[str, Labels]  # service ID -> labels, churned services only


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Expect:
    """What the output shows once a change is seen: each of ``ids`` present with ``label`` ==
    ``value`` (``label`` None: merely present), or (``present`` False) every one absent."""

    ids: tuple[str, ...]
    label: str | None = None
    value: str | None = None
    present: bool = True

    def holds(self, view: View) -> bool:
        for service_id in self.ids:
            labels = view.get(service_id)
            if not self.present:
                if labels is not None:
                    return False
            elif labels is None or (
                self.label is not None and labels.get(self.label) != self.value
            ):
                return False
        return True


@dataclass(frozen=True)
class Change:
    index: int
    kind: str
    expect: Expect


@dataclass(frozen=True)
class Write:
    """One PUT at ``at`` s into the churn; ``change``: the change it makes (its last write sets
    the change's clock), ``masks``: a change it makes unseeable (a flip's recovery)."""

    at: float
    path: str
    body: Any
    change: int | None = None
    live_add: tuple[str, ...] = ()
    live_remove: tuple[str, ...] = ()
    masks: int | None = None


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    services: set[str] = field(default_factory=set)  # every service a change touches


class Fleet:
    """The fleet as consul_env registered it: bodies by service ID, nodes by name."""

    def __init__(self, services: int) -> None:
        self.services = services
        self.bodies: dict[str, Any] = {}
        self.nodes: dict[str, Any] = {}
        self.on_node: dict[str, list[str]] = {}
        for body in fleet_registrations(
            services=services,
            instances=consul_env.INSTANCES,
            nodes=consul_env._fleet_nodes(services),
            seed=1,
        ):
            service_id = body["Service"]["ID"]
            self.bodies[service_id] = body
            node = {key: body[key] for key in ("ID", "Node", "Address", "TaggedAddresses")}
            self.nodes.setdefault(body["Node"], node | {"NodeMeta": dict(body["NodeMeta"])})
            self.on_node.setdefault(body["Node"], []).append(service_id)

    def live_ids(self) -> set[str]:
        """Every service ID in the restored catalog: the fleet, the probe node's, Consul's."""
        return {*self.bodies, *consul_env.DEL_IDS, "consul"}


def _ids(index: int) -> tuple[str, ...]:
    name = service_name(index)
    return tuple(f"{name}-{k}" for k in range(consul_env.INSTANCES))


def _check(service_id: str, name: str, status: str | None) -> dict[str, Any]:
    check = {"CheckID": f"service:{service_id}", "Name": name, "ServiceID": service_id}
    return check | ({"Status": status} if status else {})


def _on(node: Any, **rest: Any) -> dict[str, Any]:
    """A register body on ``node`` that leaves the node itself as it is."""
    return {**node, "SkipNodeUpdate": True, **rest}


class Planner:
    """Deterministic (seeded) allocation of distinct services and nodes to changes."""

    def __init__(self, fleet: Fleet, *, seed: int, recover_after: float) -> None:
        self.fleet = fleet
        self.rng = random.Random(seed)
        _, probed = consul_env.probe_services(fleet.services)
        self.pool = [i for i in range(fleet.services) if service_name(i) != probed]
        self.rng.shuffle(self.pool)
        self.node_order = sorted(fleet.nodes)
        self.rng.shuffle(self.node_order)
        self.used_nodes = 0
        self.recover_after = recover_after
        self.plan = Plan()

    def service(self) -> int:
        if not self.pool:
            raise ValueError("the churn needs more distinct services than the fleet has")
        index = self.pool.pop()
        self.plan.services.add(service_name(index))
        return index

    def witness(self) -> tuple[Any, str]:
        """The next node (cycling) and an unused service with an instance on it."""
        for _ in range(len(self.node_order)):
            name = self.node_order[self.used_nodes % len(self.node_order)]
            self.used_nodes += 1
            for service_id in self.fleet.on_node[name]:
                index = int(service_id.split("-")[1])
                if index in self.pool:
                    self.pool.remove(index)
                    self.plan.services.add(service_name(index))
                    return self.fleet.nodes[name], service_id
        raise ValueError("no node has an instance of an unused service left")

    def add(self, change: Change, *writes: Write) -> None:
        self.plan.changes.append(change)
        self.plan.writes.extend(writes)


def build_plan(fleet: Fleet, *, changes: int, rate: float, seed: int, recover_after: float) -> Plan:
    planner = Planner(fleet, seed=seed, recover_after=recover_after)
    builders: dict[str, Callable[[Planner, int, float], None]] = {
        "health flip": _health_flip,
        "node address": _node_address,
        "node meta": _node_meta,
        "instance registered": _instance_registered,
        "instance deregistered": _instance_deregistered,
        "service added": _service_added,
        "service removed": _service_removed,
        "definition edited": _definition_edited,
    }
    for i in range(changes):
        builders[KINDS[i % len(KINDS)]](planner, len(planner.plan.changes), i / rate)
    planner.plan.writes.sort(key=lambda write: write.at)
    return planner.plan


def _health_flip(p: Planner, index: int, at: float) -> None:
    service_id = _ids(p.service())[0]
    body = p.fleet.bodies[service_id]
    node = p.fleet.nodes[body["Node"]]
    flip = _on(node, Check=body["Check"] | {"Status": "critical"})
    back = _on(node, Check=body["Check"] | {"Status": "passing"})
    p.add(
        Change(index, KINDS[0], Expect((service_id,), "__meta_consul_health", "critical")),
        Write(at, REGISTER, flip, change=index),
    )
    p.add(
        Change(index + 1, RECOVERY, Expect((service_id,), "__meta_consul_health", "passing")),
        Write(at + p.recover_after, REGISTER, back, change=index + 1, masks=index),
    )


def _node_address(p: Planner, index: int, at: float) -> None:
    node, witness = p.witness()
    address = f"10.254.{index // 250}.{index % 250 + 1}"
    node["Address"] = address  # later bodies on this node carry it
    p.add(
        Change(index, KINDS[1], Expect((witness,), "__meta_consul_address", address)),
        Write(at, REGISTER, dict(node), change=index),
    )


def _node_meta(p: Planner, index: int, at: float) -> None:
    node, witness = p.witness()
    rack = f"churn-{index}"
    node["NodeMeta"] = {**node["NodeMeta"], "rack": rack}
    p.add(
        Change(index, KINDS[2], Expect((witness,), "__meta_consul_metadata_rack", rack)),
        Write(at, REGISTER, json.loads(json.dumps(node)), change=index),
    )


def _instance_registered(p: Planner, index: int, at: float) -> None:
    """A new instance whose check has no Status: Consul starts it critical, as an agent's
    check starts; passing 2 s later."""
    name = service_name(p.service())
    service_id = f"{name}-churn-{index}"
    node = dict(p.fleet.nodes[p.rng.choice(p.node_order)])
    service = {"ID": service_id, "Service": name, "Port": 20000 + index, "Tags": ["churn"]}
    check = _check(service_id, "churn", None)
    p.add(
        Change(index, KINDS[3], Expect((service_id,))),
        Write(at, REGISTER, _on(node, Service=service, Check=check), index, (service_id,)),
        Write(at + 2.0, REGISTER, _on(node, Check=check | {"Status": "passing"})),
    )


def _instance_deregistered(p: Planner, index: int, at: float) -> None:
    service_id = _ids(p.service())[1]
    node = p.fleet.bodies[service_id]["Node"]
    p.add(
        Change(index, KINDS[4], Expect((service_id,), present=False)),
        Write(
            at,
            DEREGISTER,
            {"Node": node, "ServiceID": service_id},
            change=index,
            live_remove=(service_id,),
        ),
    )


def _service_added(p: Planner, index: int, at: float) -> None:
    name = NEW_SERVICE.format(index)
    p.plan.services.add(name)
    service_id = f"{name}-0"
    node = dict(p.fleet.nodes[p.rng.choice(p.node_order)])
    service = {"ID": service_id, "Service": name, "Port": 30000 + index, "Tags": ["churn"]}
    body = _on(node, Service=service, Check=_check(service_id, "churn", "passing"))
    p.add(
        Change(index, KINDS[5], Expect((service_id,))),
        Write(at, REGISTER, body, change=index, live_add=(service_id,)),
    )


def _service_removed(p: Planner, index: int, at: float) -> None:
    ids = _ids(p.service())
    writes = [
        Write(at, DEREGISTER, {"Node": p.fleet.bodies[i]["Node"], "ServiceID": i}, change=index)
        for i in ids
    ]
    # Every instance leaves the live set before the first write: none is a loss after it.
    writes[0] = Write(at, DEREGISTER, writes[0].body, change=index, live_remove=ids)
    p.add(Change(index, KINDS[6], Expect(ids, present=False)), *writes)


def _definition_edited(p: Planner, index: int, at: float) -> None:
    service_id = _ids(p.service())[2]
    body = p.fleet.bodies[service_id]
    port = body["Service"]["Port"] + 1000
    node = p.fleet.nodes[body["Node"]]
    edited = _on(node, Service=body["Service"] | {"Port": port})
    p.add(
        Change(index, KINDS[7], Expect((service_id,), "__meta_consul_service_port", str(port))),
        Write(at, REGISTER, edited, change=index),
    )


# ---------------------------------------------------------------- observing the output


@dataclass(frozen=True)
class Observation:
    at: float  # time.monotonic() when it was read
    ids: frozenset[str]  # every target's service ID it shows (Prometheus: churned only)
    view: View


class Observer(Protocol):
    def observe(self) -> Observation | None:
        """The output now, or None when it has not changed since the last call."""


class FileObserver:
    """consul-sd's output file, re-read when its inode, mtime or size changes."""

    def __init__(self, path: Path, services: set[str]) -> None:
        self.path = path
        self.services = {name.encode() for name in services}
        self._seen: tuple[int, int, int] | None = None

    def observe(self) -> Observation | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if key == self._seen:
            return None
        at = time.monotonic()
        data = self.path.read_bytes()  # replaced by rename: always a whole file
        self._seen = key
        ids = frozenset(m.decode() for m in _ID_RE.findall(data))
        return Observation(at, ids, parse_lines(data, self.services))


def parse_lines(data: bytes, services: set[bytes] | None) -> View:
    """Labels (and ``__address__``) of the groups of ``services`` (None: all) in a file_sd file
    of one group per line, as render.py writes it."""
    view: View = {}
    for line in data.split(b"\n"):
        match = _SERVICE_RE.search(line)
        if match is None or (services is not None and match.group(1) not in services):
            continue
        group = json.loads(line.rstrip(b","))
        labels: Labels = group["labels"]
        view[labels[SERVICE_ID]] = labels | {"__address__": group["targets"][0]}
    return view


def prometheus_relabel(services: set[str]) -> list[dict[str, Any]]:
    """Keep the churned services only; every __meta_consul_* label as a target label (the
    targets API then shows them without discoveredLabels); scrapes go to the discard port."""
    return [
        {
            "source_labels": ["__meta_consul_service"],
            "regex": "|".join(sorted(services)),
            "action": "keep",
        },
        {"regex": "__meta_(consul_.+)", "action": "labelmap"},
        {"target_label": "__address__", "replacement": "127.0.0.1:9"},
    ]


class PrometheusObserver:
    """Prometheus's active targets of the job (the churned services)."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/api/v1/targets?state=active&scrapePool={systems.JOB}"

    def observe(self) -> Observation | None:
        try:
            answer = http_request("GET", self.url, timeout=10)
        except OSError:
            return None
        at = time.monotonic()
        if answer.status != 200:
            return None
        view: View = {}
        for target in answer.json()["data"]["activeTargets"]:
            labels = {
                f"__meta_{name}": value
                for name, value in target["labels"].items()
                if name.startswith("consul_")
            }
            if SERVICE_ID in labels:
                view[labels[SERVICE_ID]] = labels
        return Observation(at, frozenset(view), view)


class Tracker:
    """Watches one output in a thread: when each change is first seen, and the losses."""

    def __init__(self, observer: Observer, plan: Plan, *, live: set[str], interval: float) -> None:
        self.observer = observer
        self.plan = plan
        self.live = set(live)
        self.interval = interval
        self.lock = threading.Lock()
        self.accepted: dict[int, float] = {}
        self.writes_left = {c.index: 0 for c in plan.changes}
        for write in plan.writes:
            if write.change is not None:
                self.writes_left[write.change] += 1
        self.seen: dict[int, float] = {}
        self.masked: set[int] = set()
        self.refused: set[int] = set()
        self.void: set[int] = set()
        self.losses = 0
        self.lost_ids: list[str] = []
        self.observations = 0
        self.last: Observation | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker", daemon=True)

    def start(self) -> Tracker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # the idle reference's never starts
            self._thread.join(timeout=30)

    def before_write(self, write: Write) -> None:
        with self.lock:
            self.live.difference_update(write.live_remove)
            if write.masks is not None and write.masks not in self.seen:
                self.masked.add(write.masks)
                if write.change is not None:
                    # The output already shows what the recovery restores: nothing to time.
                    self.void.add(write.change)

    def after_write(self, write: Write, accepted: float | None) -> None:
        with self.lock:
            if accepted is None:
                if write.change is not None:
                    self.refused.add(write.change)
                return
            self.live.update(write.live_add)
            if write.change is not None:
                self.writes_left[write.change] -= 1
                if self.writes_left[write.change] == 0:
                    self.accepted[write.change] = accepted

    def pending(self) -> int:
        """Changes written and neither seen, masked nor refused yet (or not written yet)."""
        with self.lock:
            done = set(self.seen) | self.masked | self.refused | self.void
            return sum(1 for change in self.plan.changes if change.index not in done)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            observation = self.observer.observe()
            if observation is not None:
                self.record(observation)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def record(self, observation: Observation) -> None:
        """Account one observation: changes it shows for the first time, targets it lost."""
        with self.lock:
            self.observations += 1
            if self.last is not None:
                dropped = (self.last.ids & self.live) - observation.ids
                self.losses += len(dropped)
                self.lost_ids.extend(sorted(dropped)[: max(0, 20 - len(self.lost_ids))])
            self.last = observation
            for change in self.plan.changes:
                index = change.index
                if index in self.seen or index not in self.accepted:
                    continue
                if index in self.masked or index in self.void:
                    continue
                if change.expect.holds(observation.view):
                    self.seen[index] = observation.at

    def latencies(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = []
            for change in self.plan.changes:
                i = change.index
                accepted = self.accepted.get(i)
                latency = self.seen[i] - accepted if i in self.seen and accepted else None
                status = (
                    "seen"
                    if latency is not None
                    else "refused"
                    if i in self.refused
                    else "void"
                    if i in self.void
                    else "masked"
                    if i in self.masked
                    else "not seen"
                )
                rows.append({"kind": change.kind, "latency_s": latency, "status": status})
            return rows


# ---------------------------------------------------------------- one scenario


def consul_sd_variants(workroot: Path) -> dict[str, tuple[str, ...] | None]:
    """The arguments of ``wake`` and ``polling``: the CLI's flag if it has one, else a --spec
    file with ``wakeOnChange`` if the spec knows it; ``wake`` None when neither does."""
    helptext = subprocess.run(
        [*systems.CLI, "discover", "--help"],
        env=systems.ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    if "--wake-on-change" in helptext:
        return {
            "wake": (*POLLING_ARGS, "--wake-on-change"),
            "polling": (*POLLING_ARGS, "--no-wake-on-change"),
        }
    specs: dict[str, tuple[str, ...] | None] = {}
    for key, wake in (("wake", True), ("polling", False)):
        spec = workroot / f"{key}.yaml"
        spec.write_text(
            "apiVersion: consul-sd.io/v1alpha1\nkind: ConsulDiscovery\n"
            f"metadata: {{name: {key}}}\n"
            f"spec: {{mode: Polling, wakeOnChange: {str(wake).lower()}}}\n"
        )
        # validate also wants consul and output (discover does not): only an unknown-field
        # complaint about wakeOnChange tells the spec does not know it.
        checked = subprocess.run(
            [*systems.CLI, "validate", str(spec)],
            env=systems.ENV,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        known = "wakeOnChange" not in checked.stdout + checked.stderr
        specs[key] = ("--spec", str(spec), *POLLING_ARGS) if known else None
    if specs["polling"] is None:
        specs["polling"] = POLLING_ARGS  # today's Polling never wakes
    return specs


@dataclass
class Started:
    """A started system (None for the idle reference), how to read it, what it must show."""

    running: systems.Running | None
    observer: Observer | None
    required: set[str]  # service IDs its first complete observation shows


def start_system(
    key: str,
    *,
    args: tuple[str, ...] | None,
    plan: Plan,
    fleet: Fleet,
    consul: consul_env.FreshConsul,
    workdir: Path,
) -> Started:
    live = fleet.live_ids()
    if key == "idle":
        return Started(None, None, set())
    if key == "prometheus":
        prometheus = systems.RunningPrometheus(
            workdir=workdir,
            sd={"consul_sd_configs": [{"server": consul.address}]},
            relabel=prometheus_relabel(plan.services),
        )
        churned = {i for i in live if i.rpartition("-")[0] in plan.services}
        return Started(prometheus, PrometheusObserver(prometheus.prometheus.url), churned)
    assert args is not None
    system = systems.System(key, key, "consul-sd", args, "polling")
    running = systems.start(system, workdir=workdir, consul=consul)
    assert isinstance(running, systems.RunningConsulSD)
    return Started(running, FileObserver(running.output, plan.services), live)


def wait_first_complete(
    started: Started, *, expected: int, timeout: float
) -> tuple[float | None, Observation | None]:
    """Seconds until the output shows every required target (Prometheus: and discovered the
    whole fleet), bounded by ``timeout``; and that observation."""
    assert started.observer is not None
    assert started.running is not None
    t0 = time.monotonic()
    last: Observation | None = None
    while time.monotonic() < t0 + timeout:
        last = started.observer.observe() or last
        whole = True
        if isinstance(started.running, systems.RunningPrometheus):
            whole = started.running.extra().get("discovered", 0) >= expected
        if last is not None and whole and started.required <= last.ids:
            return time.monotonic() - t0, last
        time.sleep(0.25)
    return None, last


def put(consul: consul_env.FreshConsul, write: Write, *, patience: float = 10.0) -> float | None:
    """The write, retried for ``patience`` s; the moment Consul answered 200, or None."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            answer = http_request(
                "PUT", f"http://{consul.address}{write.path}", body=write.body, timeout=10
            )
            if answer.status == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.2)
    return None


def churn(consul: consul_env.FreshConsul, plan: Plan, tracker: Tracker) -> int:
    """Every write of the plan at its offset from now; how many Consul refused."""
    start = time.monotonic()
    refused = 0
    for write in plan.writes:
        delay = start + write.at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        tracker.before_write(write)
        accepted = put(consul, write)
        refused += accepted is None
        tracker.after_write(write, accepted)
    return refused


def settle(tracker: Tracker, *, timeout: float) -> float:
    """Wait (at most ``timeout`` s) until every change is seen; the seconds waited."""
    began = time.monotonic()
    while tracker.pending() and time.monotonic() < began + timeout:
        time.sleep(0.5)
    return time.monotonic() - began


def run_scenario(
    key: str,
    *,
    plan: Plan,
    fleet: Fleet,
    snapshot: bytes,
    variants: dict[str, tuple[str, ...] | None],
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """One system on a fresh agent: first complete set, churn, settle, end state, stop."""
    result: dict[str, Any] = {"system": key, "load_before": os.getloadavg()[0]}
    harness_before = _harness_cpu()
    with consul_env.FreshConsul(
        workdir=workdir / "consul", limit=args.limit, snapshot=snapshot, services=args.services
    ) as consul:
        began = time.monotonic()
        started = start_system(
            key, args=variants.get(key), plan=plan, fleet=fleet, consul=consul, workdir=workdir
        )
        pids = {"consul": consul.pid}
        if started.running is not None:
            pids["discoverer"] = started.running.pid
        sampler = Sampler(
            pids,
            port=consul.port,
            interval=args.sample_interval,
            count_connections=frozenset({"discoverer"}),
        ).start()
        tracker = Tracker(
            started.observer or _Nothing(), plan, live=fleet.live_ids(), interval=args.poll
        )
        try:
            result |= _drive(
                key, started, tracker, consul=consul, began=began, args=args, workdir=workdir
            )
        finally:
            tracker.stop()
            sampler.stop()
            if started.running is not None:
                started.running.stop()
        if "discoverer" in sampler.series:
            result["peak_connections"] = sampler.series["discoverer"].peak_connections()
    result["changes"] = tracker.latencies()
    result["losses"] = tracker.losses
    result["lost_ids"] = tracker.lost_ids
    result["observations"] = tracker.observations
    result["harness_cpu_s"] = _harness_cpu() - harness_before
    return result


def _drive(
    key: str,
    started: Started,
    tracker: Tracker,
    *,
    consul: consul_env.FreshConsul,
    began: float,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """First complete set, warm-up, churn, settle, end state (the last three for outputs)."""
    result: dict[str, Any] = {}
    if started.observer is not None:
        first, last = wait_first_complete(
            started, expected=consul.expected_targets, timeout=args.first_timeout
        )
        result["first_complete_s"] = first
        tracker.last = last
        tracker.start()
    # Prometheus parks its long-polls only after its first refresh_interval: a change before
    # that waits for its ticker, a start-up effect no steady fleet has.
    time.sleep(max(0.0, began + args.warmup - time.monotonic()))
    result |= _churn_window(consul, tracker.plan, tracker)
    if started.observer is not None:
        result["settle_s"] = settle(tracker, timeout=args.settle)
        tracker.stop()
        result |= end_state(key, started, tracker, consul=consul, workdir=workdir, grace=args.grace)
    if started.running is not None:
        result["errors"] = started.running.errors()
    return result


class _Nothing:
    """The idle reference's observer: there is no output."""

    def observe(self) -> Observation | None:
        return None


def _harness_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _churn_window(consul: consul_env.FreshConsul, plan: Plan, tracker: Tracker) -> dict[str, Any]:
    """The churn, with Consul's CPU and discovery requests over it."""
    counters0 = consul.counters()
    cpu0, began = cpu_seconds(consul.pid), time.monotonic()
    refused = churn(consul, plan, tracker)
    cpu1, ended = cpu_seconds(consul.pid), time.monotonic()
    counters1 = consul.counters()
    minutes = (ended - began) / 60
    requests = (
        (counters1.discovery_requests - counters0.discovery_requests) / minutes
        if counters0 is not None and counters1 is not None
        else None
    )
    return {
        "churn_s": ended - began,
        "writes_refused": refused,
        "consul_cpu_per_min": (cpu1 - cpu0) / minutes,
        "consul_requests_per_min": requests,
    }


def end_state(
    key: str,
    started: Started,
    tracker: Tracker,
    *,
    consul: consul_env.FreshConsul,
    workdir: Path,
    grace: float,
) -> dict[str, Any]:
    """Whether the output equals a fresh ``discover --once`` (Prometheus: its churned targets'
    __meta_consul_* labels equal that file's), allowing ``grace`` s for a last update (the
    helper instances' checks turn passing after their registration, which nothing times)."""
    once = workdir / "once.json"
    systems.write_file_sd(server=consul.address, output=once, log=workdir / "once.log")
    truth = once.read_bytes()
    deadline = time.monotonic() + grace
    while True:
        wrong = _wrong(key, started, truth, tracker.plan.services)
        if not wrong or time.monotonic() > deadline:
            return {"correct_at_end": not wrong, "wrong_at_end": wrong}
        time.sleep(1.0)


def _wrong(key: str, started: Started, truth: bytes, services: set[str]) -> int:
    """Targets (Prometheus) or lines (ours) that differ from ``truth``."""
    if key == "prometheus":
        assert started.observer is not None
        observation = started.observer.observe()
        if observation is None:
            return -1
        wanted = {name.encode() for name in services}
        expected = {
            i: {k: v for k, v in labels.items() if k.startswith("__meta_consul_")}
            for i, labels in parse_lines(truth, wanted).items()
        }
        got = observation.view
        return len({i for i in set(expected) | set(got) if expected.get(i) != got.get(i)})
    assert isinstance(started.running, systems.RunningConsulSD)
    return len(_lines(started.running.output.read_bytes()) ^ _lines(truth))


def _lines(data: bytes) -> set[bytes]:
    return {line.rstrip(b",") for line in data.split(b"\n") if line not in (b"[", b"]", b"")}


# ---------------------------------------------------------------- report


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank; ``math.inf`` stands for a change never seen."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def kind_stats(changes: Sequence[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """p50, p95, max of one run's changes of ``kind`` (never seen counts as infinitely late;
    refused writes and recoveries of unseen flips are left out)."""
    rows = [c for c in changes if c["kind"] == kind and c["status"] not in ("refused", "void")]
    if not rows:
        return None
    values = [c["latency_s"] if c["status"] == "seen" else math.inf for c in rows]
    return {
        "n": len(rows),
        "seen": sum(c["status"] == "seen" for c in rows),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "max": max(values),
    }


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(scenarios: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs, by system: latency stats per kind and the cost figures."""
    by_system: dict[str, list[dict[str, Any]]] = {}
    for scenario in scenarios:
        by_system.setdefault(scenario["system"], []).append(scenario)
    out: dict[str, Any] = {}
    for key, runs in by_system.items():
        kinds: dict[str, Any] = {}
        for kind in ROWS:
            stats = [s for s in (kind_stats(r["changes"], kind) for r in runs) if s is not None]
            if key != "idle" and stats:
                kinds[kind] = {
                    name: _median([s[name] for s in stats])
                    for name in ("n", "seen", "p50", "p95", "max")
                }
        out[key] = {
            "runs": len(runs),
            "kinds": kinds,
            "first_complete_s": _median([r.get("first_complete_s") for r in runs]),
            "peak_connections": _median([r.get("peak_connections") for r in runs]),
            "consul_cpu_per_min": _median([r["consul_cpu_per_min"] for r in runs]),
            "consul_requests_per_min": _median([r["consul_requests_per_min"] for r in runs]),
            "losses": sum(r["losses"] for r in runs),
            "correct_runs": sum(bool(r.get("correct_at_end")) for r in runs),
            "harness_cpu_s": _median([r["harness_cpu_s"] for r in runs]),
        }
    idle = out.get("idle", {}).get("consul_cpu_per_min")
    for figures in out.values():
        cpu = figures["consul_cpu_per_min"]
        figures["consul_cpu_above_idle"] = None if idle is None or cpu is None else cpu - idle
    prometheus = out.get("prometheus", {}).get("consul_cpu_above_idle")
    for figures in out.values():
        above = figures["consul_cpu_above_idle"]
        figures["ratio_to_prometheus"] = (
            above / prometheus if above is not None and prometheus else None
        )
    return out


def goal_lines(summary: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Issue 15's goal per consul-sd system: p50 <= 2 s and p95 <= 5 s on every kind but
    definition edits, peak connections <= maxConcurrent (100) + 4, Consul CPU above idle <= 50%
    of Prometheus's, no loss, correct at the end."""
    out = ["## Goal (issue 15)", ""]
    for key in ("wake", "polling"):
        figures = summary.get(key)
        if figures is None:
            continue
        slow = [
            kind
            for kind, k in figures["kinds"].items()
            if kind != "definition edited" and not (k["p50"] <= 2.0 and k["p95"] <= 5.0)
        ]
        ratio = figures["ratio_to_prometheus"]
        checks = {
            "latency": "met" if not slow else "missed on " + ", ".join(slow),
            "connections": _met(figures["peak_connections"], 104),
            "Consul CPU": "unknown" if ratio is None else "met" if ratio <= 0.5 else "missed",
            "losses": "met" if figures["losses"] == 0 else "missed",
            "end state": "met" if figures["correct_runs"] == figures["runs"] else "missed",
        }
        out.append(f"- {labels[key]}: " + "; ".join(f"{k} {v}" for k, v in checks.items()))
    return [*out, ""]


def _met(value: float | None, bound: float) -> str:
    return "unknown" if value is None else "met" if value <= bound else "missed"


def _s(value: float | None, spec: str = ".1f") -> str:
    if value is None:
        return "—"
    return "not seen" if math.isinf(value) else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def markdown(data: dict[str, Any]) -> str:
    summary: dict[str, Any] = data["summary"]
    labels: dict[str, str] = data["labels"]
    out = [
        f"# Freshness under mixed churn ({data['date']})",
        "",
        f"`{data['command']}`: {data['args']['services']} services x 3 instances, "
        f"{data['args']['runs']} run(s), {data['args']['churn_seconds']:.0f} s churn at "
        f"{data['args']['rate']}/s, {len(data['plan_kinds'])} change kinds round-robin; "
        f"medians over runs. Latency = Consul accepted the write -> the output shows it "
        f"(observed every {data['args']['poll']} s). Machine: {data['machine']['cpu']}, "
        f"{data['machine']['cores']} cores; {data['machine']['consul']}.",
        "",
    ]
    for kind in ROWS:
        rows = [
            [labels[key], f"{k['seen']:.0f}/{k['n']:.0f}", _s(k["p50"]), _s(k["p95"]), _s(k["max"])]
            for key, figures in summary.items()
            if (k := figures["kinds"].get(kind)) is not None
        ]
        if rows:
            out += [f"## {kind}", ""]
            out += _table(["system", "seen", "p50 s", "p95 s", "max s"], rows)
    out += ["## Cost", ""]
    out += _table(
        [
            "system",
            "first complete s",
            "peak conns to Consul",
            "Consul CPU s/min",
            "above idle",
            "ratio to Prometheus",
            "requests/min",
            "losses",
            "correct at end",
        ],
        [
            [
                labels[key],
                _s(f["first_complete_s"]),
                _s(f["peak_connections"], ".0f"),
                _s(f["consul_cpu_per_min"], ".2f"),
                _s(f["consul_cpu_above_idle"], ".2f"),
                "—" if f["ratio_to_prometheus"] is None else f"{f['ratio_to_prometheus']:.0%}",
                _s(f["consul_requests_per_min"], ".0f"),
                str(f["losses"]) if key != "idle" else "—",
                f"{f['correct_runs']}/{f['runs']}" if key != "idle" else "—",
            ]
            for key, f in summary.items()
        ],
    )
    out += goal_lines(summary, labels)
    out += ["## Notes", "", *(f"- {note}" for note in data.get("notes", []))]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.freshness", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--services", type=int, default=7000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--churn-seconds", type=float, default=300.0)
    parser.add_argument("--rate", type=float, default=1.0, help="changes per second")
    parser.add_argument("--systems", type=_csv, default=list(DEFAULT_SYSTEMS))
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument(
        "--recover-after", type=float, default=30.0, help="s from a health flip to its recovery"
    )
    parser.add_argument("--poll", type=float, default=0.25, help="s between output reads")
    parser.add_argument(
        "--settle",
        type=float,
        default=400.0,
        help="after the churn, wait at most this long for unseen changes (default: the 5m"
        " refreshInterval + 100 s for a cycle at 7000 services)",
    )
    parser.add_argument(
        "--grace", type=float, default=35.0, help="s for the end state to match --once"
    )
    parser.add_argument("--first-timeout", type=float, default=300.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=40.0,
        help="the churn starts no sooner than this many s after the system (default 40:"
        " Prometheus's watches park after its first 30 s refresh_interval)",
    )
    parser.add_argument("--limit", type=int, default=consul_env.DEFAULT_LIMIT)
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--stamp", default=None, help="results file name (default: the date)")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="run nothing: rewrite the medians and the markdown of this results JSON",
    )
    return parser


SYSTEM_LABELS = {
    "prometheus": "Prometheus consul_sd (refresh_interval 30s)",
    "wake": "consul-sd Polling 100, 5m, wakeOnChange",
    "polling": "consul-sd Polling 100, 5m (no wake)",
    "idle": "idle reference (no discoverer)",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json is not None:
        print(f"wrote {_save(json.loads(args.from_json.read_text()), args.from_json)}")
        return 0
    unknown = [key for key in args.systems if key not in SYSTEM_LABELS]
    if unknown:
        print(f"unknown systems {unknown}; known: {', '.join(SYSTEM_LABELS)}", file=sys.stderr)
        return 2
    stamp = args.stamp or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / f"{stamp}-freshness.json"
    workroot = Path(tempfile.mkdtemp(prefix="consul-sd-freshness-"))
    began = time.monotonic()
    try:
        variants = consul_sd_variants(workroot)
        chosen = [key for key in args.systems if key != "wake" or variants["wake"] is not None]
        fleet = Fleet(args.services)
        plan = build_plan(
            fleet,
            changes=int(args.churn_seconds * args.rate),
            rate=args.rate,
            seed=args.seed,
            recover_after=args.recover_after,
        )
        data = _header(args, argv, stamp, variants, plan)
        snapshot, took = consul_env.fleet_snapshot(
            services=args.services, workdir=workroot / "load"
        )
        print(f"[{_clock(began)}] loaded {args.services} services in {took:.1f}s", flush=True)
        for run in range(args.runs):
            shift = run % len(chosen)  # rotate the order, so drift hits every system alike
            for key in chosen[shift:] + chosen[:shift]:
                workdir = workroot / f"{run}-{key}"
                result = run_scenario(
                    key,
                    plan=plan,
                    fleet=fleet,
                    snapshot=snapshot,
                    variants=variants,
                    args=args,
                    workdir=workdir,
                )
                result["run"] = run
                data["scenarios"].append(result)
                print(f"[{_clock(began)}] {_one_line(result)}", flush=True)
                _save(data, out_json)
                if not args.keep_workdir:
                    shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workroot, ignore_errors=True)
    data["minutes"] = (time.monotonic() - began) / 60
    out_md = _save(data, out_json)
    print(f"wrote {out_json} and {out_md}")
    return 0


def _header(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    stamp: str,
    variants: dict[str, tuple[str, ...] | None],
    plan: Plan,
) -> dict[str, Any]:
    notes = [
        "Churn window: from the first write to the last (health recoveries come"
        f" {args.recover_after:.0f} s after their flip, so it runs past --churn-seconds)."
        " Consul CPU and requests/min are over that window; peak connections over the whole run.",
        "Prometheus is observed on the churned services only (a keep relabel; it still watches"
        " every service): its losses and end state cover those targets; ours cover every target."
        " A flip not seen before its recovery is written counts as not seen; its recovery is then"
        " left out.",
    ]
    if variants["wake"] is None:
        notes.append(
            "wakeOnChange is neither a CLI flag nor a spec field of this build: `wake` skipped."
        )
    return {
        "date": stamp,
        "command": "python -m benchmarks.freshness " + " ".join(argv or sys.argv[1:]),
        "args": vars(args),
        "machine": machine(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "variants": variants,
        "labels": SYSTEM_LABELS,
        "plan_kinds": list(KINDS),
        "plan_changes": len(plan.changes),
        "plan_services": len(plan.services),
        "notes": notes,
        "scenarios": [],
    }


def _save(data: dict[str, Any], out_json: Path) -> Path:
    """The JSON (with the medians so far) and its markdown beside it."""
    data["summary"] = summarize(data["scenarios"])
    out_json.write_text(json.dumps(data, indent=1) + "\n")
    out_md = out_json.with_suffix(".md")
    out_md.write_text(markdown(data))
    return out_md


def _clock(began: float) -> str:
    return f"{(time.monotonic() - began) / 60:5.1f} min"


def _one_line(result: dict[str, Any]) -> str:
    seen = [c["latency_s"] for c in result["changes"] if c["status"] == "seen"]
    return (
        f"run {result['run']} {result['system']}: first {_s(result.get('first_complete_s'))}s"
        f" seen {len(seen)}/{len(result['changes'])}"
        f" p50 {_s(percentile(seen, 0.5) if seen else None)}s"
        f" conns {result.get('peak_connections', '—')}"
        f" consul {result['consul_cpu_per_min']:.2f}s/min"
        f" req {_s(result['consul_requests_per_min'], '.0f')}/min"
        f" losses {result['losses']} correct {result.get('correct_at_end', '—')}"
        f" harness {result['harness_cpu_s']:.1f}s"
    )


if __name__ == "__main__":
    sys.exit(main())
