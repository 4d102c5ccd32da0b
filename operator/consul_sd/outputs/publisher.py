"""Writes a snapshot's targets to the output objects one ConsulDiscovery owns.

The rules, each kept for a kill -9 between any two API calls:

- Every intermediate state of the outputs holds a superset of the last written targets (that
  still exist). A target that moves between objects (the shard count grew or shrank, a large
  service is spread by instance) is first written to its new object while its old object keeps
  it ("widened"), and only then removed from the old one; objects no longer wanted are deleted
  last. Prometheus merges identical targets, so a target held twice for a moment is harmless.
- Nothing is written that this ConsulDiscovery does not own. Objects are recognised as its own
  by their controlling ownerReference (the CR's uid), never by name or label alone: a new name
  is created, not applied, and a name taken by another object is an ``OutputConflict`` that
  leaves that object untouched; deletes carry a uid precondition.
- An object is written only when its bytes change; a failed write stops the pass, keeps what
  the objects hold, and is retried with the next snapshot.

A ScrapeConfig in the HTTP SD form (``targetsFrom: HTTPSD``) is one object named as the output,
holding no targets; switching from the static form, it is written before the static shards are
deleted (deletes come last), so Prometheus always has one of the two.

After an operator restart, :meth:`OutputPublisher.resume` reads the objects back: what they hold
is the seed of the first discovery (a service that fails then keeps its targets) and the
starting point of the superset rule. Limits: the targets each object holds are kept as hashes
of their rendered lines, about 80 bytes per target.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from consul_sd import metrics
from consul_sd.api.names import DISCOVERY_LABEL, MANAGED_BY_LABEL, OPERATOR_NAME
from consul_sd.api.spec import Output
from consul_sd.api.status import (
    REASON_OUTPUT_CONFLICT,
    REASON_OUTPUT_TOO_LARGE,
    REASON_OUTPUT_WRITE_FAILED,
    OutputRef,
    Problem,
)
from consul_sd.kube import DiscoveryRef, KubeError, OutputKind, owner_uid
from consul_sd.outputs.shards import (
    OutputTooLarge,
    config_map_data,
    config_map_shards,
    held_targets,
    http_sd_scrape_config_spec,
    http_sd_url,
    scrape_config_shards,
    scrape_config_spec,
    scrape_settings,
)
from consul_sd.targets import SERVICE_LABEL, Target, TargetGroup, count_targets, group_targets

OUTPUT_KINDS: tuple[OutputKind, ...] = ("ConfigMap", "ScrapeConfig")
# How often what the objects hold is read back from the apiserver instead of trusted from memory.
RELIST_SECONDS = 600.0


class OutputAPI(Protocol):
    """What the publisher needs of :class:`consul_sd.kube.Kube` (the seam unit tests fake)."""

    async def list_outputs(
        self, *, namespace: str, kind: OutputKind, discovery: str
    ) -> list[dict[str, Any]]: ...
    async def read_output(
        self, *, namespace: str, kind: OutputKind, name: str
    ) -> dict[str, Any]: ...
    async def create_output(
        self,
        *,
        owner: DiscoveryRef,
        kind: OutputKind,
        name: str,
        labels: Mapping[str, str],
        payload: Mapping[str, Any],
    ) -> str: ...
    async def apply_output(
        self,
        *,
        owner: DiscoveryRef,
        kind: OutputKind,
        name: str,
        labels: Mapping[str, str],
        payload: Mapping[str, Any],
        uid: str | None = None,
    ) -> str: ...
    async def delete_output(
        self, *, namespace: str, kind: OutputKind, name: str, uid: str
    ) -> None: ...


@dataclass(frozen=True)
class _Planned:
    """One output object the snapshot wants: its name, labels and the targets it holds."""

    kind: OutputKind
    name: str
    labels: Mapping[str, str]
    members: tuple[Target, ...]
    # The payload of exactly ``members`` when the shard builder rendered it already.
    rendered: Mapping[str, Any] | None = None
    # The targets to report for an object that points at them instead of holding them.
    serves: int | None = None

    @property
    def key(self) -> tuple[OutputKind, str]:
        return (self.kind, self.name)


@dataclass
class _Held:
    """What one owned object holds now, as far as this publisher knows."""

    uid: str
    digest: str
    lines: frozenset[int] = field(default_factory=frozenset)
    size: int = 0


def _digest(labels: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    canonical = json.dumps([labels, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _payload_size(kind: OutputKind, payload: Mapping[str, Any]) -> int:
    if kind == "ConfigMap":
        return sum(len(str(value).encode()) for value in payload.values())
    return len(json.dumps(payload, separators=(",", ":")))


def _line_hashes(targets: Iterable[Target]) -> frozenset[int]:
    return frozenset(hash(t.line) for t in targets)


class OutputPublisher:
    """Snapshots' targets in; the ConfigMaps and ScrapeConfigs of one CR out."""

    def __init__(
        self,
        *,
        kube: OutputAPI,
        ref: DiscoveryRef,
        output: Output,
        http_sd_base: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``http_sd_base``: the operator's ``--http-sd-url`` (``targetsFrom: HTTPSD`` needs it)."""
        self.kube = kube
        self.ref = ref
        self.output = output
        self.http_sd_base = http_sd_base
        # What each object holds, for the status.
        self.outputs: list[OutputRef] = []
        self._held: dict[tuple[OutputKind, str], _Held] = {}
        self._shards: dict[OutputKind, int] = {}
        self._clock = clock
        self._listed_at = -math.inf

    async def resume(self) -> dict[str, TargetGroup]:
        """Learn the objects this CR owns; return the targets they hold, by service."""
        found = await self._list_owned()
        # Both kinds hold the same targets; a crash between two writes may leave one target in
        # two objects, hence the set.
        held = found.get("ConfigMap") or found.get("ScrapeConfig") or set()
        by_service: dict[str, list[Target]] = {}
        for target in held:
            service = target.label_dict().get(SERVICE_LABEL)
            if service:
                by_service.setdefault(service, []).append(target)
        return {name: group_targets(targets) for name, targets in by_service.items()}

    async def _list_owned(self) -> dict[OutputKind, set[Target]]:
        """What the objects this CR owns hold now, read from the apiserver, not from memory."""
        # Starts over: nothing from a half-finished listing counts twice.
        self.outputs, self._held, self._shards = [], {}, {}
        found: dict[OutputKind, set[Target]] = {}
        for kind in OUTPUT_KINDS:
            listed = await self.kube.list_outputs(
                namespace=self.ref.namespace, kind=kind, discovery=self.ref.name
            )
            owned = [item for item in listed if owner_uid(item) == self.ref.uid]
            for item in owned:
                members = self._learn(kind, item)
                found.setdefault(kind, set()).update(members)
            self._shards[kind] = len(owned)
        self._listed_at = self._clock()
        return found

    def _learn(self, kind: OutputKind, item: Mapping[str, Any]) -> list[Target]:
        meta = item["metadata"]
        payload = item.get("data" if kind == "ConfigMap" else "spec") or {}
        members = held_targets(kind, payload)
        size = _payload_size(kind, payload)
        self._held[(kind, meta["name"])] = _Held(
            uid=meta["uid"],
            digest=_digest(meta.get("labels") or {}, payload),
            lines=_line_hashes(members),
            size=size,
        )
        self.outputs.append(
            OutputRef(kind=kind, name=meta["name"], targets=len(members), bytes=size)
        )
        return members

    async def write(self, groups: Mapping[str, TargetGroup]) -> Problem | None:
        """Make the outputs hold ``groups``, superset-first; the problem if a step failed.

        Every :data:`RELIST_SECONDS` what the objects hold is read again first: an object
        deleted or edited out of band is then rewritten even when the targets did not change.
        """
        if self._clock() - self._listed_at >= RELIST_SECONDS:
            try:
                await self._list_owned()
            except KubeError as exc:
                return Problem(REASON_OUTPUT_WRITE_FAILED, f"listing the outputs: {exc}")
        try:
            planned = self._plan(groups)
        except OutputTooLarge as exc:
            return Problem(REASON_OUTPUT_TOO_LARGE, str(exc))
        problem = await self._widen_then_narrow(planned)
        if problem is None:
            problem = await self._delete_unwanted({p.key for p in planned})
        if problem is None:
            for kind in OUTPUT_KINDS:
                self._shards[kind] = sum(1 for p in planned if p.kind == kind)
            self.outputs = [self._describe(p) for p in planned]
        return problem

    def _plan(self, groups: Mapping[str, TargetGroup]) -> list[_Planned]:
        base = {DISCOVERY_LABEL: self.ref.name, MANAGED_BY_LABEL: OPERATOR_NAME}
        planned = []
        if self.output.config_map is not None:
            for shard in config_map_shards(
                groups,
                output=self.output.config_map,
                previous=self._shards.get("ConfigMap") or None,
            ):
                rendered = {shard.key: shard.data.decode()}
                planned.append(_Planned("ConfigMap", shard.name, base, shard.members, rendered))
        scrape = self.output.scrape_config
        if scrape is not None and scrape.targets_from == "HTTPSD":
            labels = {**scrape.labels, **base}
            planned.append(self._http_sd_object(labels, served=count_targets(groups)))
        elif scrape is not None:
            labels = {**scrape.labels, **base}
            for name, members in scrape_config_shards(
                groups,
                output=scrape,
                previous=self._shards.get("ScrapeConfig") or None,
            ):
                planned.append(_Planned("ScrapeConfig", name, labels, members))
        return planned

    def _http_sd_object(self, labels: Mapping[str, str], *, served: int) -> _Planned:
        """The one ScrapeConfig of the HTTP SD form: the user's settings and the operator's URL."""
        scrape = self.output.scrape_config
        assert scrape is not None
        assert self.http_sd_base is not None, "the runner refuses HTTPSD without it"
        url = http_sd_url(self.http_sd_base, namespace=self.ref.namespace, name=self.ref.name)
        payload = http_sd_scrape_config_spec(
            scrape_settings(scrape), url=url, http_sd=self.output.http_sd_settings
        )
        return _Planned("ScrapeConfig", scrape.name, labels, (), payload, served)

    def _payload(self, *, kind: OutputKind, name: str, members: Iterable[Target]) -> dict[str, Any]:
        if kind == "ConfigMap":
            return config_map_data(name, members)
        assert self.output.scrape_config is not None
        return scrape_config_spec(scrape_settings(self.output.scrape_config), members)

    async def _widen_then_narrow(self, planned: Sequence[_Planned]) -> Problem | None:
        """Write every object with what it must keep for now, then with its final targets.

        An object keeps, for the first pass, the targets it held that now belong to another
        object of its kind: until every object was written once, their new home may not
        hold them yet. New objects go first, so a refused creation (a quota) changes nothing
        that existed.
        """
        wanted: dict[OutputKind, dict[int, Target]] = {kind: {} for kind in OUTPUT_KINDS}
        for item in planned:
            wanted[item.kind].update((hash(t.line), t) for t in item.members)
        widened: list[_Planned] = []
        first_pass: list[tuple[_Planned, tuple[Target, ...]]] = []
        # Targets an earlier write of this pass already put in their new object: no need to
        # keep them (and keeping them could push an object past its size limit).
        placed: dict[OutputKind, set[int]] = {kind: set() for kind in OUTPUT_KINDS}
        for item in sorted(planned, key=lambda p: (p.key in self._held, p.key)):
            held = self._held.get(item.key)
            own = _line_hashes(item.members)
            keep = held.lines - own - placed[item.kind] if held else frozenset()
            moving = tuple(wanted[item.kind][h] for h in sorted(keep) if h in wanted[item.kind])
            first_pass.append((item, item.members + moving))
            placed[item.kind] |= own
            if moving:
                widened.append(item)
        for item, members in first_pass:
            if problem := await self._put(item, members):
                return problem
        for item in widened:
            if problem := await self._put(item, item.members):
                return problem
        return None

    async def _put(self, item: _Planned, members: tuple[Target, ...]) -> Problem | None:
        """Write one object unless it already holds these bytes; create it if it is new."""
        ns, cr = self.ref.namespace, self.ref.name
        if members is item.members and item.rendered is not None:
            payload: Mapping[str, Any] = item.rendered
        else:
            payload = self._payload(kind=item.kind, name=item.name, members=members)
        digest = _digest(item.labels, payload)
        held = self._held.get(item.key)
        if held is not None and held.digest == digest:
            metrics.OUTPUT_WRITES.labels(ns, cr, item.kind, "unchanged").inc()
            return None
        try:
            if held is None:
                uid = await self._create(item, payload)
            else:
                uid = await self._rewrite(item, payload, held=held)
        except _Conflict as conflict:
            return Problem(REASON_OUTPUT_CONFLICT, str(conflict))
        except KubeError as exc:
            metrics.OUTPUT_WRITES.labels(ns, cr, item.kind, "error").inc()
            reason = REASON_OUTPUT_TOO_LARGE if _is_size_refusal(exc) else None
            return Problem(
                reason or REASON_OUTPUT_WRITE_FAILED,
                f"writing {item.kind} {ns}/{item.name}: {exc}",
            )
        self._held[item.key] = _Held(
            uid=uid,
            digest=digest,
            lines=_line_hashes(members),
            size=_payload_size(item.kind, payload),
        )
        metrics.OUTPUT_WRITES.labels(ns, cr, item.kind, "written").inc()
        return None

    async def _create(self, item: _Planned, payload: Mapping[str, Any]) -> str:
        """Create a new object; an existing one is taken only if this CR controls it."""
        try:
            return await self.kube.create_output(
                owner=self.ref,
                kind=item.kind,
                name=item.name,
                labels=item.labels,
                payload=payload,
            )
        except KubeError as exc:
            if exc.status != 409:
                raise
        existing = await self.kube.read_output(
            namespace=self.ref.namespace, kind=item.kind, name=item.name
        )
        if owner_uid(existing) != self.ref.uid:
            raise _Conflict(self._conflict_message(item, existing))
        return await self._apply(item, payload)

    async def _rewrite(self, item: _Planned, payload: Mapping[str, Any], *, held: _Held) -> str:
        """Apply to the very object written before; if it is gone or replaced, start over.

        An object deleted out of band is created again; a namesake someone created meanwhile
        goes through :meth:`_create`'s ownership check, never gets our data.
        """
        try:
            return await self._apply(item, payload, uid=held.uid)
        except KubeError as exc:
            if not _is_another_object(exc):
                raise
        del self._held[item.key]
        return await self._create(item, payload)

    async def _apply(
        self, item: _Planned, payload: Mapping[str, Any], *, uid: str | None = None
    ) -> str:
        return await self.kube.apply_output(
            owner=self.ref,
            kind=item.kind,
            name=item.name,
            labels=item.labels,
            payload=payload,
            uid=uid,
        )

    def _conflict_message(self, item: _Planned, existing: Mapping[str, Any]) -> str:
        owner = next(
            (
                f"{r.get('kind')} {r.get('name')}"
                for r in (existing.get("metadata") or {}).get("ownerReferences") or []
                if r.get("controller")
            ),
            "no ConsulDiscovery",
        )
        return (
            f"{item.kind} {self.ref.namespace}/{item.name} already exists and belongs to "
            f"{owner}; it was left untouched: choose another output name"
        )

    async def _delete_unwanted(self, wanted: set[tuple[OutputKind, str]]) -> Problem | None:
        ns, cr = self.ref.namespace, self.ref.name
        for kind, name in sorted(set(self._held) - wanted):
            try:
                await self.kube.delete_output(
                    namespace=ns, kind=kind, name=name, uid=self._held[(kind, name)].uid
                )
            except KubeError as exc:
                return Problem(REASON_OUTPUT_WRITE_FAILED, f"deleting {kind} {ns}/{name}: {exc}")
            del self._held[(kind, name)]
            metrics.OUTPUT_WRITES.labels(ns, cr, kind, "deleted").inc()
        return None

    def _describe(self, item: _Planned) -> OutputRef:
        size = self._held[item.key].size
        targets = len(item.members) if item.serves is None else item.serves
        return OutputRef(kind=item.kind, name=item.name, targets=targets, bytes=size)


def _is_another_object(exc: KubeError) -> bool:
    """The apiserver's answers to an apply whose uid is not the object's (or no object's)."""
    return exc.status == 409 or (exc.status == 422 and "metadata.uid" in str(exc))


def _is_size_refusal(exc: KubeError) -> bool:
    """413, or a 422 / 500 whose message is about size (Too long, request is too large)."""
    if exc.status == 413:
        return True
    text = str(exc).lower()
    return exc.status in (422, 500) and ("too long" in text or "too large" in text)


class _Conflict(Exception):
    """The name of an output is taken by an object this CR does not control."""
