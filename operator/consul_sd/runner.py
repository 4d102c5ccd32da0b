"""One ConsulDiscovery generation at run time: credentials, the worker, outputs, status, events.

:func:`run_generation` is what the kopf daemon runs for each ``metadata.generation``; it does not
import kopf, so it is tested against a fake :class:`KubeAPI` or a real apiserver alike.

- The spec is validated first; rules the CRD schema cannot express end as Ready=False
  ``InvalidSpec`` with every problem named, and nothing runs until the spec changes.
- Secrets (token, basic auth, TLS) are read from the CR's namespace; a missing one is
  ``SecretNotFound`` in status and retried with backoff, and a rotated one restarts the worker
  (checked every :data:`SECRET_RECHECK_SECONDS`). Secret values never reach logs, events or status.
- :class:`OutputPublisher` writes an output only when its bytes change, writes nothing before
  the first complete snapshot, deletes objects no longer wanted only after every write of the
  new set succeeded, and leaves previous generations' objects in place until then. Status is
  patched when it changes (at most every :data:`STATUS_MIN_INTERVAL` for counters alone); events
  mark transitions into and out of trouble, not every cycle.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from consul_sd import metrics
from consul_sd.backoff import backoff_delay
from consul_sd.consul import ConsulClient, ConsulEndpoint, RequestObserver
from consul_sd.durations import format_duration
from consul_sd.endpoints import Credentials, build_endpoint
from consul_sd.kube import DiscoveryRef, KubeError, SecretNotFound
from consul_sd.outputs import (
    DISCOVERY_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OutputTooLarge,
    config_map_shards,
    scrape_config_specs,
)
from consul_sd.spec import ConsulDiscoverySpec, SecretKeyRef, SpecError, parse_spec
from consul_sd.status import (
    REASON_FIRST_SYNC,
    REASON_HEALTHY,
    REASON_INVALID_SPEC,
    REASON_OUTPUT_TOO_LARGE,
    REASON_OUTPUT_WRITE_FAILED,
    REASON_SERVICES_FAILING,
    REASON_SYNCED,
)
from consul_sd.workers import DiscoveryQuery, Snapshot, is_publishable, run_discovery

logger = logging.getLogger(__name__)

STATUS_MIN_INTERVAL = 10.0
SECRET_RECHECK_SECONDS = 60.0
BLOCKED_BACKOFF_CAP = 60.0


class KubeAPI(Protocol):
    """What the runner needs of :class:`consul_sd.kube.Kube` (the seam unit tests fake)."""

    async def read_secret_value(self, *, namespace: str, name: str, key: str) -> str: ...
    async def list_config_maps(self, *, namespace: str, discovery: str) -> list[dict[str, Any]]: ...
    async def list_scrape_configs(
        self, *, namespace: str, discovery: str
    ) -> list[dict[str, Any]]: ...
    async def apply_config_map(
        self,
        *,
        owner: DiscoveryRef,
        name: str,
        data: Mapping[str, str],
        labels: Mapping[str, str],
    ) -> None: ...
    async def apply_scrape_config(
        self,
        *,
        owner: DiscoveryRef,
        name: str,
        spec: Mapping[str, Any],
        labels: Mapping[str, str],
    ) -> None: ...
    async def delete_output(self, *, namespace: str, kind: str, name: str) -> None: ...
    async def patch_status(self, *, ref: DiscoveryRef, status: Mapping[str, Any]) -> None: ...
    async def post_event(
        self, *, ref: DiscoveryRef, kind: str, reason: str, message: str
    ) -> None: ...


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclass(frozen=True)
class _Desired:
    kind: str
    name: str
    labels: Mapping[str, str]
    content: Mapping[str, Any]
    targets: int
    size: int

    @property
    def digest(self) -> str:
        return _digest(self.labels, self.content)


def _digest(labels: Mapping[str, Any], content: Mapping[str, Any]) -> str:
    canonical = json.dumps([labels, content], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OutputPublisher:
    """Snapshots in; output objects, status and events out, for one CR generation."""

    def __init__(
        self,
        *,
        kube: KubeAPI,
        ref: DiscoveryRef,
        generation: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.ref = ref
        self.generation = generation
        self.spec: ConsulDiscoverySpec | None = None
        self.published = False
        self._clock = clock
        self._written: dict[tuple[str, str], str] = {}
        self._shards: dict[str, int] = {}
        self._outputs: list[dict[str, Any]] = []
        self._conditions: dict[str, dict[str, Any]] = {}
        self._last_status: dict[str, Any] | None = None
        self._last_status_at = -1e18
        self._degraded: Problem | None = None

    async def resume(self) -> None:
        """Learn what earlier runs wrote, so a restart rewrites nothing that is current."""
        existing = await self.kube.list_config_maps(
            namespace=self.ref.namespace, discovery=self.ref.name
        )
        for item in existing:
            name = item["metadata"]["name"]
            labels = item["metadata"].get("labels") or {}
            self._written[("ConfigMap", name)] = _digest(labels, item.get("data") or {})
        existing_sc = await self.kube.list_scrape_configs(
            namespace=self.ref.namespace, discovery=self.ref.name
        )
        for item in existing_sc:
            name = item["metadata"]["name"]
            labels = item["metadata"].get("labels") or {}
            self._written[("ScrapeConfig", name)] = _digest(labels, item.get("spec") or {})
        self._shards["ConfigMap"] = len(existing) or 0
        self._shards["ScrapeConfig"] = len(existing_sc) or 0

    # -------------------------------------------------------------------------- publishing

    async def publish(self, snapshot: Snapshot) -> None:
        spec = self.spec
        assert spec is not None, "publish before the spec was set"
        metrics.CYCLES.labels(self.ref.namespace, self.ref.name, snapshot.mode).inc()
        if snapshot.mode == "Polling" and snapshot.duration:
            metrics.CYCLE_DURATION.labels(self.ref.namespace, self.ref.name).observe(
                snapshot.duration
            )
        output_problem: Problem | None = None
        if is_publishable(snapshot, published_before=self.published):
            try:
                desired = self._desired(spec, snapshot)
            except OutputTooLarge as exc:
                output_problem = Problem(REASON_OUTPUT_TOO_LARGE, str(exc))
            else:
                output_problem = await self._write(desired)
                if output_problem is None:
                    self.published = True
                    metrics.TARGETS.labels(self.ref.namespace, self.ref.name).set(snapshot.targets)
        metrics.SERVICES.labels(self.ref.namespace, self.ref.name).set(snapshot.matched)
        metrics.FAILED_SERVICES.labels(self.ref.namespace, self.ref.name).set(len(snapshot.failed))
        await self._report(snapshot=snapshot, problem=output_problem or _consul_problem(snapshot))

    def _desired(self, spec: ConsulDiscoverySpec, snapshot: Snapshot) -> list[_Desired]:
        output = spec.output
        assert output is not None
        base_labels = {DISCOVERY_LABEL: self.ref.name, MANAGED_BY_LABEL: MANAGED_BY}
        desired = []
        if output.config_map is not None:
            shards = config_map_shards(
                snapshot.groups,
                output=output.config_map,
                previous=self._shards.get("ConfigMap") or None,
            )
            for shard in shards:
                desired.append(
                    _Desired(
                        kind="ConfigMap",
                        name=shard.name,
                        labels=base_labels,
                        content={shard.key: shard.data.decode()},
                        targets=shard.targets,
                        size=len(shard.data),
                    )
                )
        if output.scrape_config is not None:
            labels = {**output.scrape_config.labels, **base_labels}
            for name, sc_spec in scrape_config_specs(
                snapshot.groups,
                output=output.scrape_config,
                previous=self._shards.get("ScrapeConfig") or None,
            ):
                desired.append(
                    _Desired(
                        kind="ScrapeConfig",
                        name=name,
                        labels=labels,
                        content=sc_spec,
                        targets=len(sc_spec["staticConfigs"]),
                        size=len(json.dumps(sc_spec, separators=(",", ":"))),
                    )
                )
        return desired

    async def _write(self, desired: list[_Desired]) -> Problem | None:
        ns, cr = self.ref.namespace, self.ref.name
        for item in desired:
            key = (item.kind, item.name)
            digest = item.digest
            if self._written.get(key) == digest:
                metrics.OUTPUT_WRITES.labels(ns, cr, item.kind, "unchanged").inc()
                continue
            try:
                if item.kind == "ConfigMap":
                    await self.kube.apply_config_map(
                        owner=self.ref, name=item.name, data=item.content, labels=item.labels
                    )
                else:
                    await self.kube.apply_scrape_config(
                        owner=self.ref, name=item.name, spec=item.content, labels=item.labels
                    )
            except KubeError as exc:
                metrics.OUTPUT_WRITES.labels(ns, cr, item.kind, "error").inc()
                # A failed write leaves that object as it was; forget its digest so the next
                # snapshot retries it.
                self._written.pop(key, None)
                reason = (
                    REASON_OUTPUT_TOO_LARGE
                    if exc.status in (413, 422)
                    else (REASON_OUTPUT_WRITE_FAILED)
                )
                return Problem(reason, f"writing {item.kind} {ns}/{item.name}: {exc}")
            self._written[key] = digest
            metrics.OUTPUT_WRITES.labels(ns, cr, item.kind, "written").inc()
        wanted = {(item.kind, item.name) for item in desired}
        for kind, name in sorted(set(self._written) - wanted):
            try:
                await self.kube.delete_output(namespace=ns, kind=kind, name=name)
            except KubeError as exc:
                return Problem(REASON_OUTPUT_WRITE_FAILED, f"deleting {kind} {ns}/{name}: {exc}")
            del self._written[(kind, name)]
            metrics.OUTPUT_WRITES.labels(ns, cr, kind, "deleted").inc()
        for kind in ("ConfigMap", "ScrapeConfig"):
            self._shards[kind] = sum(1 for item in desired if item.kind == kind)
        self._outputs = [
            {"kind": item.kind, "name": item.name, "targets": item.targets, "bytes": item.size}
            for item in desired
        ]
        return None

    # ------------------------------------------------------------------------ status, events

    async def report_blocked(self, problem: Problem) -> None:
        """Discovery cannot start (invalid spec, missing Secret): say so; outputs stay."""
        await self._report(snapshot=None, problem=problem)

    async def _report(self, *, snapshot: Snapshot | None, problem: Problem | None) -> None:
        if self.published:
            self._set(
                "Ready", value="True", reason=REASON_SYNCED, message=self._synced_message(snapshot)
            )
            self._set("Progressing", value="False", reason=REASON_SYNCED, message="")
        else:
            reason = problem.reason if problem else REASON_FIRST_SYNC
            message = problem.message if problem else "waiting for the first complete discovery"
            self._set("Ready", value="False", reason=reason, message=message)
            self._set("Progressing", value="True", reason=REASON_FIRST_SYNC, message=message)
        if problem is not None:
            self._set("Degraded", value="True", reason=problem.reason, message=problem.message)
        else:
            self._set("Degraded", value="False", reason=REASON_HEALTHY, message="")
        await self._announce(problem)
        status: dict[str, Any] = {
            "observedGeneration": self.generation,
            "conditions": [self._conditions[t] for t in ("Ready", "Degraded", "Progressing")],
        }
        if snapshot is not None:
            status.update(
                mode=snapshot.mode,
                services=snapshot.matched,
                failedServices=len(snapshot.failed),
                consulRequests=sum(snapshot.requests.values()),
            )
            if self.published:
                status["targets"] = snapshot.targets
            if snapshot.duration:
                status["lastSyncDuration"] = format_duration(snapshot.duration)
            if is_publishable(snapshot, published_before=self.published):
                status["lastSyncTime"] = _now()
        if self.published:
            status["outputs"] = self._outputs
        await self._patch_status(status)

    def _synced_message(self, snapshot: Snapshot | None) -> str:
        kinds = sorted({o["kind"] for o in self._outputs})
        count = len(self._outputs)
        target = (
            f"{snapshot.targets} targets from {len(snapshot.groups)} services"
            if snapshot
            else "targets"
        )
        return f"{target} written to {count} {'/'.join(kinds) or 'outputs'} objects"

    def _set(self, kind: str, *, value: str, reason: str, message: str) -> None:
        previous = self._conditions.get(kind)
        transition = _now()
        if previous is not None and previous["status"] == value:
            transition = previous["lastTransitionTime"]
        self._conditions[kind] = {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message[:2000],
            "lastTransitionTime": transition,
            "observedGeneration": self.generation,
        }

    async def _announce(self, problem: Problem | None) -> None:
        previous, self._degraded = self._degraded, problem
        if problem is not None and (previous is None or previous.reason != problem.reason):
            await self.kube.post_event(
                ref=self.ref, kind="Warning", reason=problem.reason, message=problem.message
            )
        elif problem is None and previous is not None:
            await self.kube.post_event(
                ref=self.ref,
                kind="Normal",
                reason="Recovered",
                message=f"recovered from {previous.reason}",
            )

    async def _patch_status(self, status: dict[str, Any]) -> None:
        now = self._clock()
        previous = self._last_status
        if previous is not None:
            significant = {k: v for k, v in status.items() if k not in _VOLATILE}
            before = {k: v for k, v in previous.items() if k not in _VOLATILE}
            if significant == before and now - self._last_status_at < STATUS_MIN_INTERVAL:
                return
        try:
            await self.kube.patch_status(ref=self.ref, status=status)
        except KubeError as exc:
            if exc.status == 404:
                return  # the CR is being deleted
            logger.warning(
                "status of %s/%s not written: %s", self.ref.namespace, self.ref.name, exc
            )
            return
        self._last_status = status
        self._last_status_at = now


# Fields that change every cycle; alone they only refresh status every STATUS_MIN_INTERVAL.
_VOLATILE = frozenset({"lastSyncTime", "lastSyncDuration", "consulRequests"})


def _consul_problem(snapshot: Snapshot) -> Problem | None:
    if snapshot.error is not None:
        return Problem(snapshot.error.reason, str(snapshot.error))
    if snapshot.failed:
        names = sorted(snapshot.failed)
        first = snapshot.failed[names[0]]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return Problem(
            REASON_SERVICES_FAILING,
            f"{len(names)} services failed and keep their previous targets ({shown}); "
            f"first error: {first}",
        )
    return None


# ------------------------------------------------------------------------------------- runner


async def resolve_endpoint(
    *, kube: KubeAPI, namespace: str, spec: ConsulDiscoverySpec
) -> ConsulEndpoint:
    """The Consul endpoint with credentials read from Secrets in the CR's namespace."""
    consul = spec.consul

    async def read(ref: SecretKeyRef | None) -> str | None:
        if ref is None:
            return None
        return await kube.read_secret_value(namespace=namespace, name=ref.name, key=ref.key)

    basic_auth = None
    if consul.basic_auth_secret_ref is not None:
        ref = consul.basic_auth_secret_ref
        username = await kube.read_secret_value(
            namespace=namespace, name=ref.name, key=ref.username_key
        )
        password = await kube.read_secret_value(
            namespace=namespace, name=ref.name, key=ref.password_key
        )
        basic_auth = (username, password)
    tls = consul.tls
    credentials = Credentials(
        token=await read(consul.token_secret_ref),
        basic_auth=basic_auth,
        ca_pem=await read(tls.ca_secret_ref) if tls else None,
        cert_pem=await read(tls.cert_secret_ref) if tls else None,
        key_pem=await read(tls.key_secret_ref) if tls else None,
    )
    return build_endpoint(consul, credentials)


async def _credentials_fingerprint(
    *, kube: KubeAPI, namespace: str, spec: ConsulDiscoverySpec
) -> str:
    """A digest of every Secret value the spec names, to notice rotation without keeping them."""
    consul = spec.consul
    refs: list[tuple[str, str]] = []
    if consul.token_secret_ref:
        refs.append((consul.token_secret_ref.name, consul.token_secret_ref.key))
    if consul.basic_auth_secret_ref:
        ref = consul.basic_auth_secret_ref
        refs += [(ref.name, ref.username_key), (ref.name, ref.password_key)]
    if consul.tls:
        for secret in (
            consul.tls.ca_secret_ref,
            consul.tls.cert_secret_ref,
            consul.tls.key_secret_ref,
        ):
            if secret:
                refs.append((secret.name, secret.key))
    digest = hashlib.sha256()
    for name, key in refs:
        value = await kube.read_secret_value(namespace=namespace, name=name, key=key)
        digest.update(hashlib.sha256(value.encode()).digest())
    return digest.hexdigest()


def _observer(ref: DiscoveryRef) -> RequestObserver:
    def observe(*, endpoint: str, outcome: str, seconds: float) -> None:
        metrics.CONSUL_REQUESTS.labels(ref.namespace, ref.name, endpoint, outcome).inc()

    return observe


async def run_generation(
    *,
    kube: KubeAPI,
    ref: DiscoveryRef,
    generation: int,
    spec_data: Mapping[str, Any],
) -> None:
    """Run one generation of a ConsulDiscovery until cancelled (by a spec change or deletion)."""
    publisher = OutputPublisher(kube=kube, ref=ref, generation=generation)
    try:
        spec = parse_spec(spec_data, require_output=True)
    except SpecError as exc:
        logger.warning("%s/%s: invalid spec: %s", ref.namespace, ref.name, exc)
        await publisher.report_blocked(Problem(REASON_INVALID_SPEC, str(exc)))
        await asyncio.Event().wait()  # nothing to run until the spec changes
        return
    publisher.spec = spec
    rng = random.Random()
    failures = 0
    resumed = False
    while True:
        try:
            if not resumed:
                await publisher.resume()
                resumed = True
            endpoint = await resolve_endpoint(kube=kube, namespace=ref.namespace, spec=spec)
            fingerprint = await _credentials_fingerprint(
                kube=kube, namespace=ref.namespace, spec=spec
            )
        except (SecretNotFound, KubeError) as exc:
            reason = getattr(exc, "reason", "KubernetesError")
            if not isinstance(reason, str) or not isinstance(exc, SecretNotFound):
                reason = "KubernetesError"
            await publisher.report_blocked(Problem(reason, str(exc)))
            await asyncio.sleep(backoff_delay(failures, base=2.0, cap=BLOCKED_BACKOFF_CAP, rng=rng))
            failures += 1
            continue
        failures = 0
        query = DiscoveryQuery.from_spec(spec)
        client = ConsulClient(
            endpoint=endpoint,
            max_connections=spec.max_concurrent + 1,
            observer=_observer(ref),
        )
        async with client:
            worker = asyncio.create_task(
                run_discovery(query=query, client=client, publish=publisher.publish)
            )
            try:
                await _until_credentials_change(
                    kube=kube, ref=ref, spec=spec, fingerprint=fingerprint, worker=worker
                )
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)


async def _until_credentials_change(
    *,
    kube: KubeAPI,
    ref: DiscoveryRef,
    spec: ConsulDiscoverySpec,
    fingerprint: str,
    worker: asyncio.Task[None],
) -> None:
    """Return when the Secrets changed (the caller restarts the worker); raise if it died."""
    while True:
        done, _ = await asyncio.wait({worker}, timeout=SECRET_RECHECK_SECONDS)
        if done:
            worker.result()  # a bug in the worker: let the daemon log it and restart
            return
        try:
            current = await _credentials_fingerprint(kube=kube, namespace=ref.namespace, spec=spec)
        except (SecretNotFound, KubeError):
            return  # resolved (and reported) again by the caller
        if current != fingerprint:
            logger.info("%s/%s: Consul credentials changed; restarting", ref.namespace, ref.name)
            return
