"""Fault soak: the operator under random simulator faults, apiserver restarts and one kill -9.

Role: issue 10's bounded soak. Three ConsulDiscovery CRs (Polling with ``allowStale: false``,
Blocking, Auto; ConfigMap outputs cut into small shards so fleet changes move targets between
them, the Polling one also ScrapeConfigs) read one simulator with ACLs on, the token coming from
a Secret. A seeded schedule runs fault windows, each followed by a quiet checkpoint; fleet changes
land just before some windows, kube-apiserver restarts inside two of them and the operator is
killed (SIGKILL) and restarted inside one.

What is checked:

- Outputs, after every watch event (ConfigMaps and ScrapeConfigs, per CR and kind): every target
  an output ever held that still exists is still held, so the union never drops below the set
  that was written (nor below the last complete set, reported apart). "Still exists" is known
  because the test makes every fleet change itself and forgets a target before sending its
  deregistration.
- Status, polled every 0.5 s: every Degraded and Ready reason is one the faults applied since
  the last checkpoint can produce; in a window where every Consul request fails, every CR says
  so (Degraded=True with that fault's reason) within a bound.
- At every checkpoint (faults off): the truth read from the simulator's Consul API equals the
  test's model of the fleet, the outputs equal it exactly, Degraded=False and Ready=True.
- At the end: no operator log holds a Traceback or the ACL token.

Limits: a watch broken by an apiserver restart resumes from its last resourceVersion; if that is
gone (410) it re-lists and the events in between are lost (counted as gaps; a list is still a
committed state). The seed is ``CONSUL_SD_SOAK_SEED`` if set, else random, and is printed and
named in every failure. About 3 minutes of wall time; every wait and loop is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import urllib3
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from tests.e2e.operator_harness import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    Simulator,
    api_client,
    condition,
)
from tests.support.components import ControlPlane

pytestmark = pytest.mark.e2e

SERVICES, INSTANCES, NODES = 150, 3, 10
# Instances added to make a service pass every output's split size (a quarter of a shard: ~4 KiB
# of 16 KiB ConfigMap shards, ~8 KiB of 32 KiB ones, ~9 KiB of 60-target ScrapeConfigs).
SPLIT_INSTANCES = 16
DISCOVERY_LABEL = "consul-sd.io/discovery"
SCRAPE_CONFIGS = ("monitoring.coreos.com", "v1alpha1", "scrapeconfigs")
Key = tuple[str, str, str]  # (node, service id, address): how the operator tells targets apart
Faults = Mapping[str, Any]

# Every fault off: what the simulator starts with, and what a checkpoint restores.
CLEAR: Faults = {
    "latency": 0.0,
    "error_rate": 0.0,
    "error_status": 500,
    "max_conns_per_client": None,
    "reset_rate": 0.0,
    "slow_body": 0.0,
    "index_backwards": False,
    "fail_services": [],
    "malformed_services": [],
    "no_leader": False,
}
# The status reasons each fault can produce. Latency and slow bodies stay far below the
# operator's timeouts and a backwards index is a restart to resync from: none of them may show.
FAULT_REASONS: Mapping[str, frozenset[str]] = {
    "error_rate": frozenset({"ConsulServerError", "ServicesFailing"}),
    "reset_rate": frozenset({"ConsulUnreachable", "ServicesFailing"}),
    "latency": frozenset(),
    "slow_body": frozenset(),
    "max_conns_per_client": frozenset({"ConsulRateLimited", "ServicesFailing"}),
    "fail_services": frozenset({"ServicesFailing"}),
    "malformed_services": frozenset({"ServicesFailing"}),
    "no_leader": frozenset({"ConsulServerError", "ServicesFailing"}),
    "index_backwards": frozenset(),
}
APISERVER_REASONS = frozenset({"KubernetesError", "OutputWriteFailed"})
# A restarted operator has published nothing yet: Ready=False FirstSyncPending until it has.
OPERATOR_RESTART_REASONS = frozenset({"FirstSyncPending"})
HEALTHY_REASONS = frozenset({"Healthy", "Synced"})
CERTAIN_BOUND = 45.0  # seconds for every CR to report a fault that fails every request
CONVERGE_BOUND = 60.0  # seconds for outputs and status to settle after a quiet window begins
# A worker that failed while the apiserver was away restarts after a backoff of up to 60 s.
CONVERGE_BOUND_AFTER_RESTART = 100.0
# A request that failed its last retry just as the faults were lifted may still be reported:
# a checkpoint judges the state this long after the faults are off, not at once.
QUIET_MIN = 5.0
# A fleet change rewrites several output objects: the restart or kill lands at the first write.
FIRST_WRITE_BOUND = 10.0


def cr_specs(server: str) -> dict[str, dict[str, Any]]:
    """The soaked CRs' specs, by name."""
    consul = {"server": server, "tokenSecretRef": {"name": "soak-token", "key": "token"}}
    small_shards = {"maxShardBytes": 16384, "maxShards": 64}
    return {
        "soak-poll": {
            "consul": {**consul, "allowStale": False},
            "mode": "Polling",
            "refreshInterval": "1s",
            "output": {
                "configMap": {"name": "soak-poll", **small_shards},
                "scrapeConfig": {"name": "soak-poll", "maxTargetsPerObject": 60},
            },
        },
        "soak-block": {
            "consul": consul,
            "mode": "Blocking",
            "refreshInterval": "1s",
            "watchTimeout": "5s",
            "output": {"configMap": {"name": "soak-block", **small_shards}},
        },
        "soak-auto": {
            "consul": consul,
            "mode": "Auto",
            "refreshInterval": "2s",
            "watchTimeout": "5s",
            "output": {"configMap": {"name": "soak-auto", "maxShardBytes": 32768}},
        },
    }


# The output kinds each CR of ``cr_specs`` writes, each checked on its own.
OUTPUT_KINDS: dict[str, tuple[str, ...]] = {
    "soak-poll": ("ConfigMap", "ScrapeConfig"),
    "soak-block": ("ConfigMap",),
    "soak-auto": ("ConfigMap",),
}


# ---------------------------------------------------------------------------------------------
# the schedule


@dataclass(frozen=True)
class Window:
    """One fault window: faults on for ``seconds``, with what else happens inside it."""

    faults: Faults
    seconds: float
    certain: frozenset[str] = frozenset()  # when set: every CR must report one of these
    change: bool = False  # a fleet change lands just before the faults
    restart_apiserver: bool = False
    kill_operator: bool = False

    @property
    def reasons(self) -> frozenset[str]:
        found = set().union(*(FAULT_REASONS[name] for name in self.faults))
        if self.restart_apiserver:
            found |= APISERVER_REASONS
        if self.kill_operator:
            found |= OPERATOR_RESTART_REASONS
        return frozenset(found)

    def describe(self) -> str:
        extras = [
            name
            for name, on in (
                ("fleet change", self.change),
                ("apiserver restart", self.restart_apiserver),
                ("kill -9", self.kill_operator),
            )
            if on
        ]
        return f"{dict(self.faults)} for {self.seconds:.0f}s" + "".join(f" + {e}" for e in extras)


def random_faults(rng: random.Random, services: list[str]) -> dict[str, Any]:
    """One or two faults at random strengths, none of them certain to fail everything."""
    makers: dict[str, Callable[[], Any]] = {
        "error_rate": lambda: round(rng.uniform(0.2, 0.6), 2),
        "reset_rate": lambda: round(rng.uniform(0.1, 0.4), 2),
        "latency": lambda: round(rng.uniform(0.1, 0.6), 2),
        "slow_body": lambda: round(rng.uniform(0.3, 1.5), 2),
        "max_conns_per_client": lambda: rng.randint(2, 6),
        "fail_services": lambda: rng.sample(services, 5),
        "malformed_services": lambda: rng.sample(services, 5),
        "no_leader": lambda: True,
        "index_backwards": lambda: True,
    }
    names = rng.sample(sorted(makers), rng.choice((1, 1, 2)))
    return {name: makers[name]() for name in names}


def schedule(rng: random.Random, services: list[str]) -> list[Window]:
    """Two windows failing every request, four random ones; two restarts, one kill, changes."""
    plans: list[tuple[Faults, frozenset[str]]] = [
        ({"error_rate": 1.0}, FAULT_REASONS["error_rate"]),
        ({"reset_rate": 1.0}, FAULT_REASONS["reset_rate"]),
        *((random_faults(rng, services), frozenset()) for _ in range(4)),
    ]
    rng.shuffle(plans)
    restarts = set(rng.sample(range(len(plans)), 2))
    killed = rng.choice([i for i in range(len(plans)) if i not in restarts])
    changes = set(rng.sample(range(len(plans)), 4))
    return [
        Window(
            faults=faults,
            seconds=round(rng.uniform(6, 12), 1),
            certain=certain,
            change=i in changes or i == killed,
            restart_apiserver=i in restarts,
            kill_operator=i == killed,
        )
        for i, (faults, certain) in enumerate(plans)
    ]


class FaultSwitch:
    """Sets the simulator's faults over one kept-alive connection.

    The simulator's ``max_conns_per_client`` counts every connection from 127.0.0.1, the test's
    too: a new connection opened to lift that fault could itself be refused, so the connection
    that set it is the one that lifts it.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._conn: http.client.HTTPConnection | None = None

    def set(self, faults: Faults) -> None:
        body = json.dumps({**CLEAR, **faults})
        for _ in range(3):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=10)
            try:
                self._conn.request(
                    "PUT", "/_sim/faults", body, {"Content-Type": "application/json"}
                )
                answer = self._conn.getresponse()
                text = answer.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                continue
            assert answer.status == 200, (answer.status, text)
            return
        raise AssertionError(f"could not set the simulator's faults to {dict(faults)}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


# ---------------------------------------------------------------------------------------------
# the truth: the fleet as the simulator answers it, and as this test changed it


def read_truth(sim: Simulator) -> dict[Key, str]:
    """Every instance the simulator's Consul API lists (faults off), with its service name."""
    truth: dict[Key, str] = {}
    for name in sim.consul("GET", "/v1/catalog/services"):
        for entry in sim.consul("GET", f"/v1/health/service/{quote(name, safe='')}"):
            node, service = entry["Node"], entry["Service"]
            host = service.get("Address") or node["Address"]
            truth[(node["Node"], service["ID"], f"{host}:{service['Port']}")] = service["Service"]
    return truth


class Fleet:
    """The fleet as this test changed it: what "still exists" means for the floor.

    A target is forgotten before its deregistration is sent (from then on it may vanish) and
    learnt after its registration returns (it need not appear before the operator sees it).
    """

    def __init__(self, sim: Simulator, rng: random.Random, truth: Mapping[Key, str]) -> None:
        self.sim = sim
        self.rng = rng
        self._lock = threading.Lock()
        self._services = dict(truth)
        self._added = 0

    def existing(self) -> frozenset[Key]:
        with self._lock:
            return frozenset(self._services)

    def change(self, *, across_split: bool = False) -> str:
        """One random change through the Consul API; says what it did.

        ``across_split``: a service crosses the size above which its instances are sharded one
        by one, so its targets move between existing output objects (the widening rule's case).
        """
        if across_split:
            return self._cross_split()
        actions = [
            self._add_instances,
            self._add_service,
            self._remove_instances,
            self._remove_service,
            self._remove_node,
            self._cross_split,
        ]
        return self.rng.choice(actions)()

    def _cross_split(self) -> str:
        counts = Counter(self.existing_services())
        big = sorted(name for name, count in counts.items() if count >= SPLIT_INSTANCES)
        if not big:
            small = sorted(name for name, count in counts.items() if 1 < count <= INSTANCES)
            service = self.rng.choice(small)
            self._add(service, SPLIT_INSTANCES)
            return f"grew {service} by {SPLIT_INSTANCES} instances (now sharded by instance)"
        service = self.rng.choice(big)
        with self._lock:
            keys = sorted(key for key, name in self._services.items() if name == service)
        gone = set(keys[INSTANCES:])
        self._forget(gone)
        for node, sid, _ in sorted(gone):
            self.sim.consul("PUT", "/v1/catalog/deregister", {"Node": node, "ServiceID": sid})
        return f"shrank {service} by {len(gone)} instances (now sharded whole)"

    def _add(self, service: str, count: int) -> None:
        added: dict[Key, str] = {}
        for _ in range(count):
            self._added += 1
            n = self._added
            node, address = f"soak-node-{n}", f"10.250.{n >> 8}.{n & 255}"
            sid, port = f"{service}-soak-{n}", 20000 + n
            check = {"CheckID": f"service:{sid}", "Name": "soak", "Status": "passing"}
            self.sim.consul(
                "PUT",
                "/v1/catalog/register",
                {
                    "Node": node,
                    "Address": address,
                    "Service": {"ID": sid, "Service": service, "Port": port, "Tags": ["soak"]},
                    "Check": {**check, "ServiceID": sid},
                },
            )
            added[(node, sid, f"{address}:{port}")] = service
        with self._lock:
            self._services.update(added)

    def _add_instances(self) -> str:
        service = self.rng.choice(sorted(set(self.existing_services())))
        count = self.rng.randint(1, 3)
        self._add(service, count)
        return f"added {count} instances of {service}"

    def _add_service(self) -> str:
        # Up to 12 instances: past maxShardBytes/4 a service is spread over shards by instance.
        service, count = f"soak-svc-{self._added + 1}", self.rng.randint(1, 12)
        self._add(service, count)
        return f"added service {service} with {count} instances"

    def existing_services(self) -> list[str]:
        with self._lock:
            return list(self._services.values())

    def _forget(self, keys: set[Key]) -> None:
        with self._lock:
            for key in keys:
                del self._services[key]

    def _remove_instances(self) -> str:
        with self._lock:
            keys = set(self.rng.sample(sorted(self._services), self.rng.randint(1, 4)))
        self._forget(keys)
        for node, sid, _ in sorted(keys):
            self.sim.consul("PUT", "/v1/catalog/deregister", {"Node": node, "ServiceID": sid})
        return f"removed instances {sorted(sid for _, sid, _ in keys)}"

    def _remove_service(self) -> str:
        service = self.rng.choice(sorted(set(self.existing_services())))
        with self._lock:
            keys = {key for key, name in self._services.items() if name == service}
        self._forget(keys)
        for node, sid, _ in sorted(keys):
            self.sim.consul("PUT", "/v1/catalog/deregister", {"Node": node, "ServiceID": sid})
        return f"removed service {service} ({len(keys)} instances)"

    def _remove_node(self) -> str:
        with self._lock:
            nodes = sorted({node for node, _, _ in self._services if node.startswith("node-")})
        node = self.rng.choice(nodes)
        with self._lock:
            keys = {key for key in self._services if key[0] == node}
        self._forget(keys)
        self.sim.consul("PUT", "/v1/catalog/deregister", {"Node": node})
        return f"removed node {node} ({len(keys)} instances)"


# ---------------------------------------------------------------------------------------------
# the samplers: outputs on every watch event, status every 0.5 s


@dataclass(frozen=True)
class Shortfall:
    """A committed state of one CR's outputs of one kind that lacked targets it must hold."""

    at: float
    phase: str
    cr: str
    kind: str
    event: str
    missing: int
    held: int
    below_complete: bool  # also below the last complete set (not only below what was seen)
    examples: tuple[Key, ...]


@dataclass
class Ledger:
    """What each CR's outputs held, state by state, against what they must hold."""

    fleet: Fleet
    started: float = field(default_factory=time.monotonic)
    phase: str = "start"
    events: int = 0
    shortfalls: list[Shortfall] = field(default_factory=list)
    changed: threading.Event = field(default_factory=threading.Event)  # an output was written
    _held: dict[tuple[str, str], frozenset[Key]] = field(default_factory=dict)
    _seen: dict[tuple[str, str], set[Key]] = field(default_factory=dict)
    _complete: dict[tuple[str, str], frozenset[Key]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def held(self, cr: str, kind: str) -> frozenset[Key]:
        with self._lock:
            return self._held.get((cr, kind), frozenset())

    def observe(self, cr: str, kind: str, held: frozenset[Key], event: str) -> None:
        existing = self.fleet.existing()
        with self._lock:
            self.events += 1
            seen = self._seen.setdefault((cr, kind), set())
            missing = (seen & existing) - held
            if missing:
                complete = self._complete.get((cr, kind), frozenset())
                self.shortfalls.append(
                    Shortfall(
                        at=round(time.monotonic() - self.started, 2),
                        phase=self.phase,
                        cr=cr,
                        kind=kind,
                        event=event,
                        missing=len(missing),
                        held=len(held),
                        below_complete=bool((complete & existing) - held),
                        examples=tuple(sorted(missing)[:3]),
                    )
                )
            seen |= held
            if held == existing:
                self._complete[(cr, kind)] = held
            if held != self._held.get((cr, kind)):
                self.changed.set()
            self._held[(cr, kind)] = held


def keys_in(kind: str, raw: Mapping[str, Any]) -> frozenset[Key]:
    """The targets one output object holds: file_sd groups, or a ScrapeConfig's staticConfigs."""
    if kind == "ConfigMap":
        groups = [g for text in (raw.get("data") or {}).values() for g in json.loads(text)]
    else:
        groups = (raw.get("spec") or {}).get("staticConfigs") or []
    found = set()
    for group in groups:
        labels = group.get("labels") or {}
        for address in group["targets"]:
            node = labels.get("__meta_consul_node", "")
            found.add((node, labels.get("__meta_consul_service_id", ""), address))
    return frozenset(found)


class OutputWatch:
    """Every committed state of one output kind in the namespace, handed to the ledger per CR.

    Survives apiserver restarts: a broken watch resumes from the last resourceVersion it saw; a
    410 re-lists (``gaps``). Anything else that breaks the thread is kept in ``failure``.
    """

    def __init__(self, api: k8s.ApiClient, *, kind: str, namespace: str, ledger: Ledger) -> None:
        self.kind = kind
        self.namespace = namespace
        self.ledger = ledger
        self.gaps = 0
        self.breaks = 0
        self.failure: BaseException | None = None
        self._objects: dict[str, tuple[str, frozenset[Key]]] = {}
        self._version: str | None = None
        if kind == "ConfigMap":
            self._list: Callable[..., Any] = k8s.CoreV1Api(api).list_namespaced_config_map
            self._args: tuple[Any, ...] = (namespace,)
        else:
            self._list = k8s.CustomObjectsApi(api).list_namespaced_custom_object
            self._args = (*SCRAPE_CONFIGS[:2], namespace, SCRAPE_CONFIGS[2])
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(20)

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                try:
                    if self._version is None:
                        self._relist()
                    else:
                        self._watch(self._version)
                except k8s.ApiException as exc:
                    if exc.status != 410:
                        raise
                    self.gaps += 1
                    self._version = None
                except (urllib3.exceptions.HTTPError, OSError):
                    self.breaks += 1  # the apiserver went away: resume where the watch was
                    self._stopped.wait(0.5)
        except BaseException as exc:  # surfaced by the test: a thread cannot fail it
            self.failure = exc

    def _relist(self) -> None:
        listed = self._list(
            *self._args, label_selector=DISCOVERY_LABEL, _preload_content=False, _request_timeout=10
        )
        body = json.loads(listed.data)
        self._objects = {}
        for item in body["items"]:
            self._store(item)
        for cr in OUTPUT_KINDS:
            self._report(cr, "list")
        self._version = str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> None:
        watcher = k8s_watch.Watch()
        for event in watcher.stream(
            self._list,
            *self._args,
            label_selector=DISCOVERY_LABEL,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=5,
            _request_timeout=(5, 30),
        ):
            raw, kind = event["raw_object"], event["type"]
            self._version = str(raw["metadata"]["resourceVersion"])
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                name = raw["metadata"]["name"]
                if kind == "DELETED":
                    cr = self._objects.pop(name, ("", frozenset()))[0]
                else:
                    cr = self._store(raw)
                self._report(cr, f"{kind} {name}")
            if self._stopped.is_set():
                break

    def _store(self, raw: Mapping[str, Any]) -> str:
        cr = raw["metadata"]["labels"][DISCOVERY_LABEL]
        self._objects[raw["metadata"]["name"]] = (cr, keys_in(self.kind, raw))
        return str(cr)

    def _report(self, cr: str, event: str) -> None:
        if self.kind not in OUTPUT_KINDS.get(cr, ()):
            return
        held = frozenset().union(*(keys for owner, keys in self._objects.values() if owner == cr))
        self.ledger.observe(cr, self.kind, held, event)


class Reasons:
    """The status reasons allowed now: those of every fault applied since the last checkpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._allowed = set(HEALTHY_REASONS)

    def add(self, reasons: frozenset[str]) -> None:
        with self._lock:
            self._allowed |= reasons

    def reset(self) -> None:
        with self._lock:
            self._allowed = set(HEALTHY_REASONS)

    def allowed(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._allowed)


class StatusWatch:
    """Each CR's Ready and Degraded conditions every 0.5 s, checked against ``Reasons``."""

    def __init__(
        self, api: k8s.ApiClient, *, namespace: str, reasons: Reasons, ledger: Ledger
    ) -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self.namespace = namespace
        self.reasons = reasons
        self.ledger = ledger
        self.samples = 0
        self.errors = 0
        self.not_ready: Counter[str] = Counter()  # "cr reason (phase)" of Ready=False samples
        self.mismatches: list[str] = []
        self.failure: BaseException | None = None
        self._latest: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)
        self._thread.start()

    def latest(self, cr: str, kind: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._latest.get(cr, {}).get(kind, {}))

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(20)

    def _run(self) -> None:
        try:
            while not self._stopped.wait(0.5):
                before = self.reasons.allowed()
                try:
                    items = self._custom.list_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, PLURAL, _request_timeout=5
                    )["items"]
                except (k8s.ApiException, urllib3.exceptions.HTTPError, OSError):
                    self.errors += 1
                    continue
                # A reason seen during a window's start may belong to the faults it turned on.
                self._check(items, before | self.reasons.allowed())
        except BaseException as exc:  # surfaced by the test: a thread cannot fail it
            self.failure = exc

    def _check(self, items: list[dict[str, Any]], allowed: frozenset[str]) -> None:
        self.samples += 1
        at = round(time.monotonic() - self.ledger.started, 2)
        for cr in items:
            name = cr["metadata"]["name"]
            found = {kind: condition(cr, kind) for kind in ("Ready", "Degraded")}
            with self._lock:
                self._latest[name] = found
            for kind, item in found.items():
                reason = item.get("reason")
                if reason is not None and reason not in allowed:
                    self.mismatches.append(
                        f"t={at}s {self.ledger.phase} {name} {kind}={item.get('status')} "
                        f"{reason} ({item.get('message', '')[:200]}); allowed {sorted(allowed)}"
                    )
            if found["Ready"].get("status") == "False":
                phase = self.ledger.phase.split(" (")[0]
                self.not_ready[f"{name} {found['Ready'].get('reason')} ({phase})"] += 1


# ---------------------------------------------------------------------------------------------
# the soak


@dataclass
class Soak:
    """Everything one soak run drives and watches."""

    seed: int
    rng: random.Random
    control_plane: ControlPlane
    workdir: Path
    namespace: str
    token: str
    sim: Simulator
    switch: FaultSwitch
    fleet: Fleet
    ledger: Ledger
    reasons: Reasons
    statuses: StatusWatch
    watches: list[OutputWatch]
    operators: list[Operator] = field(default_factory=list)
    unreported: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        at = time.monotonic() - self.ledger.started
        print(f"[soak seed={self.seed} t={at:6.1f}s] {text}", flush=True)

    def start_operator(self) -> None:
        scope = ("--namespace", self.namespace)
        self.operators.append(Operator(self.control_plane, self.workdir, scope=scope))


@contextlib.contextmanager
def started_soak(control_plane: ControlPlane, workdir: Path, seed: int) -> Iterator[Soak]:
    """A namespace with the token Secret, the simulator, samplers, the CRs and the operator."""
    api = api_client(control_plane)
    namespace, token = f"soak-{uuid.uuid4().hex[:8]}", f"soak-acl-token-{uuid.uuid4().hex}"
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    secret = {"metadata": {"name": "soak-token"}, "stringData": {"token": token}}
    core.create_namespaced_secret(namespace, secret)
    sim = Simulator(workdir, services=SERVICES, instances=INSTANCES, nodes=NODES, acl_token=token)
    rng = random.Random(seed)
    ledger = Ledger(Fleet(sim, rng, read_truth(sim)))
    reasons = Reasons()
    reasons.add(OPERATOR_RESTART_REASONS)  # the first sync
    watches = [
        OutputWatch(api_client(control_plane), kind=kind, namespace=namespace, ledger=ledger)
        for kind in ("ConfigMap", "ScrapeConfig")
    ]
    statuses = StatusWatch(
        api_client(control_plane), namespace=namespace, reasons=reasons, ledger=ledger
    )
    soak = Soak(
        seed=seed,
        rng=rng,
        control_plane=control_plane,
        workdir=workdir,
        namespace=namespace,
        token=token,
        sim=sim,
        switch=FaultSwitch(sim.port),
        fleet=ledger.fleet,
        ledger=ledger,
        reasons=reasons,
        statuses=statuses,
        watches=watches,
    )
    try:
        custom = k8s.CustomObjectsApi(api)
        for name, spec in cr_specs(sim.address).items():
            body: dict[str, Any] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ConsulDiscovery"}
            body |= {"metadata": {"name": name}, "spec": spec}
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        soak.start_operator()
        yield soak
    finally:
        for watch in watches:
            watch.stop()
        statuses.stop()
        delete_crs(api, namespace)
        for operator in soak.operators:
            operator.stop()
        soak.switch.close()
        sim.stop()


def delete_crs(api: k8s.ApiClient, namespace: str) -> None:
    """Delete the CRs while the operator runs (it removes its finalizer), so that no operator
    a later test starts for all namespaces picks them up against a stopped simulator."""
    custom = k8s.CustomObjectsApi(api)
    for name in OUTPUT_KINDS:
        with contextlib.suppress(k8s.ApiException):
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        if not listed["items"]:
            return
        time.sleep(0.5)


def run_window(soak: Soak, index: int, window: Window) -> None:
    """Faults on (after a fleet change, if any), restarts inside, faults off."""
    soak.ledger.phase = f"window {index} ({window.describe()})"
    soak.say(soak.ledger.phase)
    soak.ledger.changed.clear()
    if window.change:
        # A restart or kill lands while a change that rewrites many objects is written.
        strikes = window.restart_apiserver or window.kill_operator
        soak.say(soak.fleet.change(across_split=strikes))
    soak.reasons.add(window.reasons)
    soak.switch.set(window.faults)
    began = time.monotonic()
    if window.restart_apiserver:
        strike_moment(soak, window)
        soak.control_plane.restart_apiserver(downtime=soak.rng.uniform(0.0, 3.0))
        soak.say(f"kube-apiserver restarted ({time.monotonic() - began:.1f}s into the window)")
    if window.kill_operator:
        strike_moment(soak, window)
        soak.operators[-1].kill()
        soak.start_operator()
        soak.say(f"operator killed and started again ({time.monotonic() - began:.1f}s in)")
    if window.certain:
        await_reported(soak, window)
    time.sleep(max(0.0, began + window.seconds - time.monotonic()))
    soak.switch.set(CLEAR)


def strike_moment(soak: Soak, window: Window) -> None:
    """Wait for the moment to restart or kill: the first output write of a fleet change."""
    if window.change and soak.ledger.changed.wait(FIRST_WRITE_BOUND):
        soak.say("an output was just written")
    else:
        time.sleep(soak.rng.uniform(0.5, 3.0))


def await_reported(soak: Soak, window: Window) -> None:
    """Every CR reports a fault that fails every request (Degraded=True, its reason)."""
    deadline = time.monotonic() + CERTAIN_BOUND
    while True:
        pending = {
            cr: soak.statuses.latest(cr, "Degraded")
            for cr in OUTPUT_KINDS
            if not (
                soak.statuses.latest(cr, "Degraded").get("status") == "True"
                and soak.statuses.latest(cr, "Degraded").get("reason") in window.certain
            )
        }
        if not pending:
            soak.say(f"every CR reports {sorted(window.certain)}")
            return
        if time.monotonic() > deadline:
            soak.unreported.append(
                f"{soak.ledger.phase}: not reported within {CERTAIN_BOUND:.0f}s: "
                + "; ".join(
                    f"{cr} Degraded={c.get('status')} {c.get('reason')}"
                    for cr, c in pending.items()
                )
            )
            return
        time.sleep(0.25)


def read_truth_now(soak: Soak) -> frozenset[Key]:
    """The simulator's fleet (faults are off), checked against the test's own model."""
    for attempt in range(3):
        try:
            truth = frozenset(read_truth(soak.sim))
            break
        except OSError:
            if attempt == 2:
                raise
            time.sleep(1)
    model = soak.fleet.existing()
    assert truth == model, (
        f"seed {soak.seed}: the simulator lists {len(truth - model)} targets the test did not "
        f"register and lacks {len(model - truth)} it did not remove"
    )
    return truth


def unsettled(soak: Soak, truth: frozenset[Key]) -> list[str]:
    """What keeps the outputs and status from a checkpoint: empty once they have settled."""
    problems = []
    for cr, kinds in OUTPUT_KINDS.items():
        for kind in kinds:
            held = soak.ledger.held(cr, kind)
            if held != truth:
                problems.append(
                    f"{cr} {kind}: {len(truth - held)} missing, {len(held - truth)} extra"
                )
        for kind, wanted in (("Ready", "True"), ("Degraded", "False")):
            found = soak.statuses.latest(cr, kind)
            if found.get("status") != wanted:
                problems.append(
                    f"{cr} {kind}={found.get('status')} {found.get('reason')}: "
                    f"{str(found.get('message', ''))[:300]}"
                )
    return problems


def checkpoint(soak: Soak, *, bound: float) -> None:
    """Faults off: the outputs come to equal the truth, Degraded=False, Ready=True."""
    soak.ledger.phase += " / quiet"
    truth = read_truth_now(soak)
    time.sleep(QUIET_MIN)
    began = time.monotonic()
    while problems := unsettled(soak, truth):
        if time.monotonic() - began > bound:
            raise AssertionError(
                f"seed {soak.seed}: not settled {bound:.0f}s after {soak.ledger.phase}: "
                f"{problems}\n{findings(soak)}"
            )
        time.sleep(0.25)
    soak.say(f"settled in {time.monotonic() - began:.1f}s: {len(truth)} targets everywhere")
    soak.reasons.reset()


def findings(soak: Soak) -> str:
    """Every violation found so far, one per line (empty when there is none)."""
    lines = [f"output below the truth: {s}" for s in soak.ledger.shortfalls[:20]]
    lines += [
        f"status reason not of the faults in force: {m}" for m in soak.statuses.mismatches[:20]
    ]
    if len(soak.statuses.mismatches) > 20:
        lines.append(f"... {len(soak.statuses.mismatches)} status samples out of place in all")
    if len(soak.ledger.shortfalls) > 20:
        lines.append(f"... {len(soak.ledger.shortfalls)} output states below the truth in all")
    lines += [f"fault not reported: {u}" for u in soak.unreported]
    samplers: list[OutputWatch | StatusWatch] = [*soak.watches, soak.statuses]
    for sampler in samplers:
        if sampler.failure is not None:
            lines.append(f"sampler {type(sampler).__name__} broke: {sampler.failure!r}")
    for operator in soak.operators:
        text = operator.log_path.read_text(errors="replace")
        if "Traceback" in text:
            at = text.index("Traceback")
            lines.append(f"Traceback in {operator.log_path}:\n{text[max(0, at - 300) : at + 1500]}")
        if soak.token in text:
            lines.append(f"the ACL token is in {operator.log_path}")
    return "\n".join(lines)


@pytest.mark.timeout(480)
def test_outputs_never_drop_below_the_truth_and_status_names_each_fault_through_a_soak(
    control_plane: ControlPlane,
    consul_sd_crd: None,
    monitoring_crds: list[str],
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CONSUL_SD_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fault soak seed {seed} (rerun: CONSUL_SD_SOAK_SEED={seed})", flush=True)
    with started_soak(control_plane, tmp_path, seed) as soak:
        checkpoint(soak, bound=120.0)  # the first complete sync
        services = sorted({name for name in soak.fleet.existing_services()})
        for index, window in enumerate(schedule(soak.rng, services)):
            run_window(soak, index, window)
            restarted = window.restart_apiserver or window.kill_operator
            checkpoint(soak, bound=CONVERGE_BOUND_AFTER_RESTART if restarted else CONVERGE_BOUND)
        breaks = {w.kind: (w.breaks, w.gaps) for w in soak.watches}
        soak.say(
            f"done: {soak.ledger.events} output states checked, {soak.statuses.samples} status "
            f"samples (Ready=False samples: {dict(soak.statuses.not_ready)}), watch (breaks, gaps) "
            f"{breaks}"
        )
        problems = findings(soak)
    assert not problems, f"seed {seed}:\n{problems}"
