"""A fake apiserver at the runner's seam (``runner.KubeAPI``): objects with uids and owners.

It keeps what a real apiserver keeps for the calls the operator makes (creates fail with 409 on
a taken name, deletes honour the uid precondition), records every call in order, and after
every mutating call records the union of targets all output objects hold, so a test can check
that no intermediate state lost a target. Faults: ``refuse`` answers a call with an error,
``kill_after`` raises :class:`Killed` instead of the Nth mutating call (the operator died
before it). Methods a test did not expect fail it.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Mapping
from typing import Any

from consul_sd.kube import (
    DiscoveryRef,
    KubeError,
    OutputKind,
    SecretNotFound,
    output_body,
)

REF = DiscoveryRef(namespace="ns", name="cr", uid="uid-cr")


class Killed(BaseException):
    """The operator process died before this call reached the apiserver."""


class FakeKube:
    def __init__(self, *, secrets: Mapping[tuple[str, str], str] | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets = dict(secrets or {})
        self.calls: list[tuple[str, str, str]] = []
        self.held_after_each_write: list[set[str]] = []
        # The output objects that exist after every mutating call, as (kind, name).
        self.objects_after_each_write: list[set[tuple[str, str]]] = []
        self.statuses: list[Mapping[str, Any]] = []
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str]] = []
        self.secret_reads: list[tuple[str, str, str]] = []
        # len(secret_reads) when each status was patched: which reads came before which status.
        self.secret_reads_at_each_status: list[int] = []
        self.refuse: Callable[[str, str, str], KubeError | None] = lambda *_: None
        self.kill_after: int | None = None
        # The apiserver's size limit of an object's data (a 422 "Too long" past it), if set.
        self.max_object_bytes: int | None = None
        self._uids = itertools.count(1)
        self._lines: dict[tuple[str, str], set[str]] = {}  # per object, parsed once per write

    # ---------------------------------------------------------------- what tests look at

    def held(self) -> set[str]:
        """Every target line any output object holds now."""
        lines: set[str] = set()
        for key, item in self.objects.items():
            if key not in self._lines:
                self._lines[key] = _lines(key[0], item)
            lines |= self._lines[key]
        return lines

    def add_object(
        self, kind: OutputKind, name: str, *, owner_uid: str | None, payload: Mapping[str, Any]
    ) -> None:
        """An object that exists before the test (another CR's, a user's, an earlier run's)."""
        owner = DiscoveryRef(namespace="ns", name="other", uid=owner_uid or "")
        body = output_body(owner=owner, kind=kind, name=name, labels={}, payload=payload)
        if owner_uid is None:
            del body["metadata"]["ownerReferences"]
        body["metadata"]["uid"] = f"uid-{next(self._uids)}"
        self.objects[(kind, name)] = body

    # ------------------------------------------------------------------------ the seam

    def _mutate(self, verb: str, *, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))
        if self.kill_after is not None:
            if self.kill_after <= 0:
                raise Killed()
            self.kill_after -= 1
        error = self.refuse(verb, kind, name)
        if error is not None:
            raise error

    def _check_size(self, name: str, payload: Mapping[str, Any]) -> None:
        size = sum(len(k) + len(str(v).encode()) for k, v in payload.items())
        if self.max_object_bytes is not None and size > self.max_object_bytes:
            raise KubeError(
                f'HTTP 422: ConfigMap "{name}" is invalid: []: Too long: must have at most '
                f"{self.max_object_bytes} bytes (was {size})",
                status=422,
            )

    def _written(self, key: tuple[str, str]) -> None:
        self._lines.pop(key, None)
        self.held_after_each_write.append(self.held())
        self.objects_after_each_write.append(set(self.objects))

    async def list_outputs(
        self, *, namespace: str, kind: OutputKind, discovery: str
    ) -> list[dict[str, Any]]:
        assert namespace == "ns"
        self.calls.append(("list", kind, ""))
        return [
            copy.deepcopy(item)
            for (k, _), item in self.objects.items()
            if k == kind
            and item["metadata"].get("labels", {}).get("consul-sd.io/discovery") == discovery
        ]

    async def read_output(self, *, namespace: str, kind: OutputKind, name: str) -> dict[str, Any]:
        self.calls.append(("read", kind, name))
        if (kind, name) not in self.objects:
            raise KubeError("HTTP 404: not found", status=404)
        return copy.deepcopy(self.objects[(kind, name)])

    async def create_output(
        self,
        *,
        owner: DiscoveryRef,
        kind: OutputKind,
        name: str,
        labels: Mapping[str, str],
        payload: Mapping[str, Any],
    ) -> str:
        self._mutate("create", kind=kind, name=name)
        self._check_size(name, payload)
        if (kind, name) in self.objects:
            raise KubeError(f'HTTP 409: {kind.lower()}s "{name}" already exists', status=409)
        body = output_body(owner=owner, kind=kind, name=name, labels=labels, payload=payload)
        body["metadata"]["uid"] = uid = f"uid-{next(self._uids)}"
        self.objects[(kind, name)] = body
        self._written((kind, name))
        return uid

    async def apply_output(
        self,
        *,
        owner: DiscoveryRef,
        kind: OutputKind,
        name: str,
        labels: Mapping[str, str],
        payload: Mapping[str, Any],
        uid: str | None = None,
    ) -> str:
        self._mutate("apply", kind=kind, name=name)
        self._check_size(name, payload)
        body = output_body(owner=owner, kind=kind, name=name, labels=labels, payload=payload)
        existing = self.objects.get((kind, name))
        # The real apiserver's answers to a uid in an apply (checked on kube-apiserver 1.36).
        if uid is not None and existing is None:
            raise KubeError(
                f"HTTP 409: uid mismatch: the provided object specified uid {uid}, "
                "and no existing object was found",
                status=409,
            )
        if uid is not None and existing is not None and existing["metadata"]["uid"] != uid:
            raise KubeError(
                f'HTTP 422: ConfigMap "{name}" is invalid: metadata.uid: Invalid '
                f'value: "{uid}": field is immutable',
                status=422,
            )
        body["metadata"]["uid"] = (
            existing["metadata"]["uid"] if existing else f"uid-{next(self._uids)}"
        )
        self.objects[(kind, name)] = body
        self._written((kind, name))
        return str(body["metadata"]["uid"])

    async def delete_output(self, *, namespace: str, kind: OutputKind, name: str, uid: str) -> None:
        self._mutate("delete", kind=kind, name=name)
        existing = self.objects.get((kind, name))
        if existing is None:
            return
        if existing["metadata"]["uid"] != uid:
            raise KubeError("HTTP 409: Precondition failed: UID in precondition", status=409)
        del self.objects[(kind, name)]
        self._written((kind, name))

    async def patch_status(self, *, ref: DiscoveryRef, status: Mapping[str, Any]) -> None:
        self.statuses.append(status)
        # A merge patch, as the apiserver applies it: null removes a field.
        for key, value in status.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        self.secret_reads_at_each_status.append(len(self.secret_reads))

    async def post_event(self, *, ref: DiscoveryRef, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason))

    async def read_secret_value(self, *, namespace: str, name: str, key: str) -> str:
        self.secret_reads.append((namespace, name, key))
        if (name, key) not in self.secrets:
            raise SecretNotFound(f"Secret {namespace}/{name} not found")
        return self.secrets[(name, key)]


def _lines(kind: str, item: Mapping[str, Any]) -> set[str]:
    if kind == "ConfigMap":
        entries = [
            entry
            for key, text in item.get("data", {}).items()
            if key.endswith(".json")
            for entry in json.loads(text)
        ]
    else:
        entries = item.get("spec", {}).get("staticConfigs", [])
    return {json.dumps(e, sort_keys=True) for e in entries}


def lines_of(groups: Mapping[str, Any]) -> set[str]:
    """The target lines of ``groups`` in the form :meth:`FakeKube.held` reports them."""
    return {
        json.dumps({"labels": t.label_dict(), "targets": [t.address]}, sort_keys=True)
        for group in groups.values()
        for t in group
    }
