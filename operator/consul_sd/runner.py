"""One ConsulDiscovery generation at run time: credentials, the worker, outputs, status, events.

:func:`run_generation` is what the kopf daemon runs for each ``metadata.generation``; it does not
import kopf, so it is tested against a fake :class:`KubeAPI` or a real apiserver alike.

- The spec is validated first; rules the CRD schema cannot express end as Ready=False
  ``InvalidSpec`` with every problem named, and nothing runs until the spec changes.
- Everything after that runs inside one boundary: any exception (a missing or invalid Secret,
  an apiserver failure, a bug) ends in a status reason and a Warning event, the outputs keep
  what they hold, and the generation starts again after a backoff. The log line names the CR
  and, for an unexpected exception, its type and where it was raised, never its arguments
  (they may hold a credential).
- Whatever restarts the worker (a rotated Secret, a failure, an operator restart) hands the new
  one the targets last written (after a restart, what the outputs hold) as its starting point,
  so a service that fails during the new worker's first cycle keeps its targets.
- :class:`GenerationSink` takes the worker's snapshots: the outputs are written by
  :class:`consul_sd.publisher.OutputPublisher` (superset-first, owned objects only), nothing
  before the first complete snapshot; status is patched when it changes (at most every
  :data:`STATUS_MIN_INTERVAL` for counters alone); events mark transitions into and out of
  trouble, not every cycle.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from consul_sd import metrics
from consul_sd.backoff import backoff_delay
from consul_sd.consul import ConsulError, RequestObserver
from consul_sd.credentials import SecretReader, resolve_endpoint
from consul_sd.credentials import fingerprint as secrets_fingerprint
from consul_sd.credentials import read_values as read_secret_values
from consul_sd.durations import format_duration
from consul_sd.endpoints import build_client
from consul_sd.kube import DiscoveryRef, KubeError, SecretInvalid, SecretNotFound
from consul_sd.progress import PROGRESS
from consul_sd.publisher import OutputAPI, OutputPublisher, Problem
from consul_sd.spec import ConsulDiscoverySpec, SpecError, parse_spec, validate_discovery_name
from consul_sd.status import (
    REASON_FIRST_SYNC,
    REASON_HEALTHY,
    REASON_INTERNAL_ERROR,
    REASON_INVALID_SPEC,
    REASON_KUBERNETES_ERROR,
    REASON_SECRET_INVALID,
    REASON_SECRET_NOT_FOUND,
    REASON_SERVICES_FAILING,
    REASON_SYNCED,
)
from consul_sd.targets import TargetGroup, count_targets
from consul_sd.workers import DiscoveryQuery, Snapshot, is_permanent, is_publishable, run_discovery

logger = logging.getLogger(__name__)

STATUS_MIN_INTERVAL = 10.0
SECRET_RECHECK_SECONDS = 60.0
RESTART_BACKOFF_CAP = 60.0
# A worker that ran this long before it failed starts its backoff from the beginning again.
STABLE_RUN_SECONDS = 300.0

__all__ = ["GenerationSink", "KubeAPI", "Problem", "run_generation"]


class KubeAPI(OutputAPI, SecretReader, Protocol):
    """What the runner needs of :class:`consul_sd.kube.Kube` (the seam unit tests fake)."""

    async def patch_status(self, *, ref: DiscoveryRef, status: Mapping[str, Any]) -> None: ...
    async def post_event(
        self, *, ref: DiscoveryRef, kind: str, reason: str, message: str
    ) -> None: ...


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(ref: DiscoveryRef) -> str:
    return f"{ref.namespace}/{ref.name}"


class StatusReporter:
    """Conditions, status and events of one CR generation."""

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
        self._clock = clock
        self._conditions: dict[str, dict[str, Any]] = {}
        self._last_status: dict[str, Any] | None = None
        self._last_status_at = -1e18
        self._degraded: Problem | None = None

    async def report(
        self,
        *,
        snapshot: Snapshot | None,
        problem: Problem | None,
        written: Written | None,
        synced: bool = False,
    ) -> None:
        """Status for the current state; ``synced``: ``snapshot`` was just written."""
        self._set_conditions(problem=problem, written=written)
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
            if snapshot.duration:
                status["lastSyncDuration"] = format_duration(snapshot.duration)
            if synced:
                status["lastSyncTime"] = _now()
        if written is not None:
            status["targets"] = written.targets
            status["outputs"] = written.outputs
        await self._patch_status(status)

    def _set_conditions(self, *, problem: Problem | None, written: Written | None) -> None:
        if written is not None:
            message = written.describe()
            self._set("Ready", value="True", reason=REASON_SYNCED, message=message)
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
            logger.warning("%s: status not written: %s", _key(self.ref), exc)
            return
        self._last_status = status
        self._last_status_at = now


# Fields that change every cycle; alone they only refresh status every STATUS_MIN_INTERVAL.
_VOLATILE = frozenset({"lastSyncTime", "lastSyncDuration", "consulRequests"})


@dataclass(frozen=True)
class Written:
    """What the outputs hold since the last successful write: the status's figures."""

    targets: int
    services: int
    outputs: list[dict[str, Any]]

    def describe(self) -> str:
        kinds = "/".join(sorted({o["kind"] for o in self.outputs})) or "outputs"
        return (
            f"{self.targets} targets from {self.services} services written to "
            f"{len(self.outputs)} {kinds} objects"
        )


def consul_problem(snapshot: Snapshot) -> Problem | None:
    """The problem a snapshot shows: the catalog's error, else its failed services."""
    if snapshot.error is not None:
        return Problem(snapshot.error.reason, str(snapshot.error))
    if not snapshot.failed:
        return None
    names = sorted(snapshot.failed)
    first = snapshot.failed[names[0]]
    reasons = {error.reason for error in snapshot.failed.values()}
    if len(names) == snapshot.matched and len(reasons) == 1 and is_permanent(first):
        # Every service refused for one reason (a healthFilter Consul cannot compile): the
        # query is wrong, not the services.
        return Problem(first.reason, f"every service failed: {first}")
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return Problem(
        REASON_SERVICES_FAILING,
        f"{len(names)} services failed and keep their previous targets ({shown}); "
        f"first error: {first}",
    )


class GenerationSink:
    """Where a generation's workers publish: outputs, then status; and what a restart seeds."""

    def __init__(
        self,
        *,
        kube: KubeAPI,
        ref: DiscoveryRef,
        generation: int,
        spec: ConsulDiscoverySpec,
        ready_before: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``ready_before``: the status said Ready for this generation (an operator restart)."""
        assert spec.output is not None, "the runner requires an output"
        self._ready_before = ready_before
        self.ref = ref
        self.outputs = OutputPublisher(kube=kube, ref=ref, output=spec.output)
        self.status = StatusReporter(kube=kube, ref=ref, generation=generation, clock=clock)
        self.written: Written | None = None  # nothing written by this generation yet
        self.resumed = False
        # The targets the outputs hold (last written, or read back by resume): a new worker's
        # starting point.
        self.seed: Mapping[str, TargetGroup] = {}

    @property
    def published(self) -> bool:
        return self.written is not None

    async def resume(self) -> None:
        self.seed = await self.outputs.resume()
        self.resumed = True
        if self._ready_before and self.seed:
            # This generation was written completely before the restart, and the outputs still
            # hold it: Ready stays True, and the new worker updates it like any later snapshot.
            self.written = Written(
                targets=count_targets(self.seed),
                services=len(self.seed),
                outputs=self.outputs.outputs,
            )

    async def publish(self, snapshot: Snapshot) -> None:
        ns, cr = self.ref.namespace, self.ref.name
        with PROGRESS.publishing(_key(self.ref)):
            metrics.CYCLES.labels(ns, cr, snapshot.mode).inc()
            if snapshot.mode == "Polling" and snapshot.duration:
                metrics.CYCLE_DURATION.labels(ns, cr).observe(snapshot.duration)
            problem: Problem | None = None
            synced = is_publishable(snapshot, published_before=self.published)
            if synced:
                problem = await self.outputs.write(snapshot.groups)
                synced = problem is None
                if synced:
                    self.written = Written(
                        targets=snapshot.targets,
                        services=len(snapshot.groups),
                        outputs=self.outputs.outputs,
                    )
                    self.seed = snapshot.groups
                    metrics.TARGETS.labels(ns, cr).set(snapshot.targets)
            metrics.SERVICES.labels(ns, cr).set(snapshot.matched)
            metrics.FAILED_SERVICES.labels(ns, cr).set(len(snapshot.failed))
            await self.status.report(
                snapshot=snapshot,
                problem=problem or consul_problem(snapshot),
                written=self.written,
                synced=synced,
            )

    async def report_blocked(self, problem: Problem | None) -> None:
        """Discovery is not running (invalid spec, missing Secret, a failure); outputs stay."""
        await self.status.report(
            snapshot=None,
            problem=problem,
            written=self.written,
        )


def _observer(ref: DiscoveryRef) -> RequestObserver:
    key = _key(ref)

    def observe(*, endpoint: str, outcome: str, seconds: float) -> None:
        metrics.CONSUL_REQUESTS.labels(ref.namespace, ref.name, endpoint, outcome).inc()
        PROGRESS.step(key)

    return observe


async def run_generation(
    *,
    kube: KubeAPI,
    ref: DiscoveryRef,
    generation: int,
    spec_data: Mapping[str, Any],
    ready_before: bool = False,
) -> None:
    """Run one generation of a ConsulDiscovery until cancelled (by a spec change or deletion).

    ``ready_before``: its status said Ready for this generation when the runner started (after
    an operator restart), so the outputs it holds are a complete set of this generation.
    """
    reporter = StatusReporter(kube=kube, ref=ref, generation=generation)
    try:
        spec = parse_spec(spec_data, require_output=True)
        if name_problem := validate_discovery_name(ref.name):
            raise SpecError([name_problem])
    except SpecError as exc:
        logger.warning("%s: invalid spec: %s", _key(ref), exc)
        problem = Problem(REASON_INVALID_SPEC, str(exc))
        await reporter.report(snapshot=None, problem=problem, written=None)
        PROGRESS.forget(_key(ref))  # no loop runs: the previous generation's must not look stuck
        await asyncio.Event().wait()  # nothing to run until the spec changes
        return
    sink = GenerationSink(
        kube=kube, ref=ref, generation=generation, spec=spec, ready_before=ready_before
    )
    allowance = 3 * max(spec.refresh_seconds, spec.watch_seconds) + RESTART_BACKOFF_CAP
    PROGRESS.track(_key(ref), allowance=allowance)
    failures = 0
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await _run_worker(kube=kube, sink=sink, spec=spec)
            failures = 0
        except Exception as exc:  # the boundary: every failure ends in status and an event
            if loop.time() - started > STABLE_RUN_SECONDS:
                failures = 0  # a failure after a long good run is a new story, not the next try
            problem = describe_failure(exc)
            _log_failure(ref, problem, exc)
            await sink.report_blocked(problem)
            delay = backoff_delay(failures, base=2.0, cap=RESTART_BACKOFF_CAP, rng=_JITTER)
            failures += 1
            await asyncio.sleep(delay)
        PROGRESS.step(_key(ref))


_JITTER = random.Random()


async def _run_worker(*, kube: KubeAPI, sink: GenerationSink, spec: ConsulDiscoverySpec) -> None:
    """Run the worker until the credentials change (return) or something fails (raise)."""
    ref = sink.ref
    if not sink.resumed:
        await sink.resume()
        if not sink.published:
            await sink.report_blocked(None)  # Progressing: the first discovery is under way
    resolved = await resolve_endpoint(kube=kube, namespace=ref.namespace, consul=spec.consul)
    query = DiscoveryQuery.from_spec(spec)
    client = build_client(
        resolved.endpoint, max_concurrent=spec.max_concurrent, observer=_observer(ref)
    )
    async with client:
        worker = asyncio.create_task(
            run_discovery(query=query, client=client, publish=sink.publish, seed=sink.seed),
            name=f"consul-sd worker {_key(ref)}",
        )
        try:
            await _until_credentials_change(
                kube=kube, ref=ref, spec=spec, fingerprint=resolved.fingerprint, worker=worker
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
    """Return when the Secrets changed or vanished; raise what the worker raised."""
    while True:
        done, _ = await asyncio.wait({worker}, timeout=SECRET_RECHECK_SECONDS)
        if done:
            worker.result()
            raise RuntimeError("the discovery worker stopped")
        try:
            values = await read_secret_values(
                kube=kube, namespace=ref.namespace, consul=spec.consul
            )
        except (SecretNotFound, SecretInvalid):
            return  # resolved (and reported) again by the caller
        except KubeError as exc:
            # An apiserver blip: the worker's credentials are still good, keep it running.
            logger.info("%s: Secrets not re-read (%s); will try again", _key(ref), exc)
            continue
        if secrets_fingerprint(values) != fingerprint:
            logger.info("%s: Consul credentials changed; restarting the worker", _key(ref))
            return


def describe_failure(exc: Exception) -> Problem:
    """A status reason and message for an exception that reached the runner's boundary."""
    if isinstance(exc, SecretNotFound):
        return Problem(REASON_SECRET_NOT_FOUND, str(exc))
    if isinstance(exc, SecretInvalid):
        return Problem(REASON_SECRET_INVALID, str(exc))
    if isinstance(exc, KubeError):
        return Problem(REASON_KUBERNETES_ERROR, f"Kubernetes API: {exc}")
    if isinstance(exc, ConsulError):
        return Problem(exc.reason, str(exc))
    return Problem(
        REASON_INTERNAL_ERROR,
        f"unexpected {type(exc).__name__} at {_where(exc)}; outputs kept, restarting with "
        "backoff (see the operator log)",
    )


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown location"
    frame = frames[-1]
    return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"


def _log_failure(ref: DiscoveryRef, problem: Problem, exc: Exception) -> None:
    if problem.reason != REASON_INTERNAL_ERROR:
        logger.warning("%s: %s: %s", _key(ref), problem.reason, problem.message)
        return
    # The frames, never the exception's text: its arguments may hold a credential.
    frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
    logger.error("%s: %s\n%s", _key(ref), problem.message, frames.rstrip())
