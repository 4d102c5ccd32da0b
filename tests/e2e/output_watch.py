"""Every intermediate state of one ConsulDiscovery's ConfigMaps, from a Kubernetes watch.

Role: the no-loss e2e tests' sampler. :class:`OutputWatch` lists the ConfigMaps labelled
``consul-sd.io/discovery=<cr>`` in one namespace, then watches them from that list's
resourceVersion in a thread, so it sees each write the apiserver committed, in order. After
every event it takes the union of the targets all those ConfigMaps hold and checks it against
the current ``floor`` (the targets that must never be missing); every shortfall is recorded.
A callback sees each event too (a test kills the operator from it).

Limits: a target is its file_sd group as canonical JSON (address and labels); a watch that
expires (410 Gone) is re-listed and counted in ``gaps``, since events in between are lost; the
thread stops within ~5 s of :meth:`OutputWatch.stop`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

DISCOVERY_LABEL = "consul-sd.io/discovery"
Event = tuple[str, str]  # (ADDED | MODIFIED | DELETED, ConfigMap name)


def targets_of(data: Mapping[str, str] | None) -> frozenset[str]:
    """The targets one ConfigMap's data holds, each as canonical JSON."""
    found: set[str] = set()
    for text in (data or {}).values():
        for group in json.loads(text):
            found.add(json.dumps(group, sort_keys=True))
    return frozenset(found)


@dataclass(frozen=True)
class Shortfall:
    """An event after which the union lacked targets of the floor."""

    sequence: int
    event: Event
    missing: int
    union: int


class OutputWatch:
    """The ConfigMaps of one CR as the apiserver committed them, checked after every event."""

    def __init__(self, api: k8s.ApiClient, *, namespace: str, discovery: str) -> None:
        self._core = k8s.CoreV1Api(api)
        self.namespace = namespace
        self._selector = f"{DISCOVERY_LABEL}={discovery}"
        self._lock = threading.Lock()
        self._maps: dict[str, frozenset[str]] = {}
        self._floor: frozenset[str] = frozenset()
        self.events: list[Event] = []
        self.shortfalls: list[Shortfall] = []
        self.smallest_union: int | None = None
        self.gaps = 0
        self.on_event: Callable[[Event], None] | None = None
        self._stopped = threading.Event()
        self._failure: BaseException | None = None
        version = self._relist()
        self._thread = threading.Thread(target=self._run, args=(version,), daemon=True)
        self._thread.start()

    def union(self) -> frozenset[str]:
        with self._lock:
            return frozenset().union(*self._maps.values())

    def names(self) -> set[str]:
        with self._lock:
            return set(self._maps)

    def sizes(self) -> dict[str, int]:
        """How many targets each ConfigMap holds."""
        with self._lock:
            return {name: len(targets) for name, targets in self._maps.items()}

    def set_floor(self, targets: Iterable[str]) -> None:
        """From now on, every event must leave all of ``targets`` in the union."""
        with self._lock:
            self._floor = frozenset(targets)
            self.smallest_union = None

    def stop(self) -> None:
        """Stop watching; re-raise what broke the watch thread, if anything did."""
        self._stopped.set()
        self._thread.join(15)
        if self._failure is not None:
            raise AssertionError(f"the output watch failed: {self._failure!r}")

    def _relist(self) -> str:
        listed = self._core.list_namespaced_config_map(
            self.namespace, label_selector=self._selector
        )
        with self._lock:
            self._maps = {m.metadata.name: targets_of(m.data) for m in listed.items}
        return str(listed.metadata.resource_version)

    def _run(self, version: str) -> None:
        try:
            while not self._stopped.is_set():
                version = self._watch_from(version)
        except BaseException as exc:  # surfaced by stop(): a thread cannot fail a test
            self._failure = exc

    def _watch_from(self, version: str) -> str:
        watcher = k8s_watch.Watch()
        try:
            for item in watcher.stream(
                self._core.list_namespaced_config_map,
                self.namespace,
                label_selector=self._selector,
                resource_version=version,
                timeout_seconds=5,
                _request_timeout=30,
            ):
                self._observe(item["type"], item["raw_object"])
                version = watcher.resource_version or version
                if self._stopped.is_set():
                    break
        except k8s.ApiException as exc:
            if exc.status != 410:
                raise
            self.gaps += 1
            return self._relist()
        return version

    def _observe(self, kind: str, raw: dict[str, Any]) -> None:
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        name = raw["metadata"]["name"]
        event = (kind, name)
        with self._lock:
            if kind == "DELETED":
                self._maps.pop(name, None)
            else:
                self._maps[name] = targets_of(raw.get("data"))
            union = frozenset().union(*self._maps.values())
            self.events.append(event)
            size = len(union)
            if self.smallest_union is None or size < self.smallest_union:
                self.smallest_union = size
            missing = len(self._floor - union)
            if missing:
                self.shortfalls.append(Shortfall(len(self.events), event, missing, size))
        if self.on_event is not None:
            self.on_event(event)
