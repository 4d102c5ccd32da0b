"""One ConsulDiscovery generation at run time: its lifecycle, the worker and the failure boundary.

:func:`run_generation` is what the kopf daemon runs for each ``metadata.generation``; it does not
import kopf, so it is tested against a fake :class:`KubeAPI` or a real apiserver alike.

- The spec is validated first; rules the CRD schema cannot express end as Ready=False
  ``InvalidSpec`` with every problem named, and nothing runs until the spec changes.
- Everything after that runs inside one boundary: any exception (a missing or invalid Secret,
  an apiserver failure, a bug) ends in a status reason and a Warning event
  (:func:`describe_failure`), the outputs keep what they hold, and the worker starts again after
  a backoff (:class:`consul_sd.loops.Backoff`). The log line names the CR and, for an unexpected
  exception, its type and where it was raised, never its arguments (they may hold a credential).
- Each start reads each Secret key once (:mod:`.credentials`); a worker runs until a
  recheck every :data:`SECRET_RECHECK_SECONDS` finds other values (a rotation) or none, and the
  next start uses what that recheck read instead of reading again.
- Whatever restarts the worker (a rotated Secret, a failure, an operator restart) hands the new
  one the targets last written (after a restart, what the outputs hold) as its starting point,
  so a service that fails during the new worker's first cycle keeps its targets.
- HTTP SD (``spec.output.httpSD`` or ``scrapeConfig.targetsFrom: HTTPSD``): each worker start
  registers the CR with the operator's target store (:class:`TargetServer`, 503 until a complete
  snapshot) with the bearer token it read; every publishable snapshot is served before the
  outputs are written (so the HTTP SD ScrapeConfig never points at less than the static shards
  it replaces held); a generation that no longer asks for it is forgotten (404). Without the
  store or, for the ScrapeConfig form, ``--http-sd-url``, the generation stops at
  ``HTTPSDUnavailable`` and the outputs keep what they hold.
- :class:`GenerationSink` takes the worker's snapshots: the outputs are written by
  :class:`consul_sd.outputs.publisher.OutputPublisher` (superset-first, owned objects only), nothing
  before the first complete snapshot; status and events are :mod:`.reporting`'s, the
  conditions :mod:`.conditions`'.
- Every log line about a CR names it (``namespace/name: ...``): :func:`run_generation` marks
  its task (and so every task the worker starts) with :data:`CURRENT_CR`, and
  :class:`NameTheCR`, a filter on the log handlers, prefixes lines from that context, or from
  kopf's per-object loggers, that do not name it already; it also sets ``record.cr`` for a
  structured formatter.
- The metrics of each publication and the last-success rule are
  :class:`consul_sd.metrics.SyncTracker`'s (shared with the CLI): a failure reaches the sink as
  a publication (within a second in Blocking, at the end of the cycle in Polling), which stops
  the Consul answers' confirmations until a clean one.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from consul_sd import metrics
from consul_sd.api.spec import (
    ConsulDiscoverySpec,
    Output,
    SecretKeyRef,
    SpecError,
    parse_spec,
    validate_discovery_name,
)
from consul_sd.api.status import (
    REASON_HTTP_SD_UNAVAILABLE,
    REASON_INTERNAL_ERROR,
    REASON_INVALID_SPEC,
    REASON_KUBERNETES_ERROR,
    REASON_SECRET_INVALID,
    REASON_SECRET_NOT_FOUND,
    Problem,
)
from consul_sd.consul.client import RequestObserver
from consul_sd.consul.errors import ConsulError
from consul_sd.controller.conditions import consul_problem
from consul_sd.controller.credentials import (
    ResolvedEndpoint,
    SecretReader,
    SecretValues,
    endpoint_from_values,
    resolve_endpoint,
)
from consul_sd.controller.credentials import fingerprint as secrets_fingerprint
from consul_sd.controller.credentials import read_values as read_secret_values
from consul_sd.controller.progress import PROGRESS
from consul_sd.controller.reporting import StatusAPI, StatusReporter, Written
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import run_discovery
from consul_sd.discovery.snapshots import Snapshot, is_publishable
from consul_sd.endpoints import build_client
from consul_sd.kube import DiscoveryRef, KubeError, SecretInvalid, SecretNotFound
from consul_sd.loops import Backoff, cancel_and_wait
from consul_sd.outputs.publisher import OutputAPI, OutputPublisher
from consul_sd.outputs.shards import SCRAPE_CONFIG_MAX_BYTES
from consul_sd.targets import TargetGroup, count_targets

logger = logging.getLogger(__name__)

SECRET_RECHECK_SECONDS = 60.0
# A publication whose write failed (the apiserver away) is written again this often until it
# lands: Blocking publishes only on a change, so a quiet fleet would otherwise never retry it.
REWRITE_SECONDS = 10.0
# lastSyncTime follows the Consul answers that confirm a quiet fleet's targets this often at
# most (a status patch per CR per minute), when no publication moved it in between.
SYNC_STATUS_SECONDS = 60.0
RESTART_BACKOFF_CAP = 60.0
# A worker that ran this long before it failed starts its backoff from the beginning again.
STABLE_RUN_SECONDS = 300.0

__all__ = [
    "CURRENT_CR",
    "GenerationSink",
    "HTTPSDServing",
    "KubeAPI",
    "NameTheCR",
    "TargetServer",
    "describe_failure",
    "run_generation",
]

# The CR (namespace/name) a task works for: set by run_generation, inherited by the tasks it
# starts, read by NameTheCR.
CURRENT_CR: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "consul_sd_cr", default=None
)


class NameTheCR(logging.Filter):
    """Prefix ``namespace/name: `` to every log line about a CR that does not start with it.

    The CR is the task's (:data:`CURRENT_CR`) or that of a kopf per-object logger (its
    ``k8s_ref``). Installed on handlers, so it sees the records of every logger; it never drops
    a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        cr = _record_cr(record)
        if cr is None:
            return True
        record.cr = cr
        if not record.getMessage().startswith(f"{cr}:"):
            record.msg, record.args = f"{cr}: {record.getMessage()}", None
        return True


def _record_cr(record: logging.LogRecord) -> str | None:
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, Mapping) and ref.get("name"):
        return f"{ref.get('namespace') or ''}/{ref['name']}".lstrip("/")
    return CURRENT_CR.get()


# What a Secret recheck read: the new values, or why they cannot be used. The next start takes
# it instead of reading the Secrets again.
Reread = SecretValues | SecretNotFound | SecretInvalid


class KubeAPI(OutputAPI, SecretReader, StatusAPI, Protocol):
    """What the runner needs of :class:`consul_sd.kube.Kube` (the seam unit tests fake)."""


class TargetServer(Protocol):
    """What the runner needs of :class:`consul_sd.outputs.http_sd.TargetStore`."""

    def reserve(self, key: tuple[str, str]) -> None: ...
    def expect(self, key: tuple[str, str], *, token: str | None) -> None: ...
    def serve(
        self, key: tuple[str, str], groups: Mapping[str, TargetGroup], *, token: str | None
    ) -> None: ...
    def forget(self, key: tuple[str, str]) -> None: ...


@dataclass(frozen=True)
class HTTPSDServing:
    """The operator's HTTP SD endpoint: its target store and the URL ScrapeConfigs point at."""

    store: TargetServer
    base_url: str | None = None


def _key(ref: DiscoveryRef) -> str:
    return f"{ref.namespace}/{ref.name}"


def store_key(ref: DiscoveryRef) -> tuple[str, str]:
    """The key of a ConsulDiscovery in the target store: ``/targets/<namespace>/<name>``."""
    return (ref.namespace, ref.name)


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
        serving: HTTPSDServing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``ready_before``: the status said Ready for this generation (an operator restart).

        ``serving``: where the targets are served, when the spec asks for HTTP SD.
        """
        assert spec.output is not None, "the runner requires an output"
        self._ready_before = ready_before
        self.ref = ref
        self._store = serving.store if serving and spec.output.serves_http_sd else None
        # A generation that stops asking for HTTP SD: what an earlier one served stays until
        # this one's outputs are written, so the ScrapeConfig pointing at it never sees a 404.
        self._forget_after_write = serving.store if serving and self._store is None else None
        self._token: str | None = None
        self.outputs = OutputPublisher(
            kube=kube,
            ref=ref,
            output=spec.output,
            http_sd_base=serving.base_url if serving else None,
        )
        self.status = StatusReporter(kube=kube, ref=ref, generation=generation, clock=clock)
        self.written: Written | None = None  # nothing written by this generation yet
        self.resumed = False
        # The targets the outputs hold (last written, or read back by resume): a new worker's
        # starting point.
        self.seed: Mapping[str, TargetGroup] = {}
        # The latest publishable snapshot whose write failed, until one lands.
        self.unwritten: Snapshot | None = None
        self._publishing = asyncio.Lock()  # the worker's publications and the rewrites
        self.tracker = metrics.SyncTracker(ref.namespace, ref.name)
        self._status_synced_at: float | None = None  # the tracker's time status last showed
        self._limits = output_limits(spec.output)
        metrics.SYNC_INTERVAL.labels(ref.namespace, ref.name).set(sync_interval(spec))

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

    def lock(self) -> None:
        """503 to every request until :meth:`expect` gives this start's token.

        A start that cannot read its token (a Secret deleted or not created yet) thus revokes
        the previous one, and a generation that adds a token never serves without it.
        """
        if self._store is not None:
            self._store.reserve(store_key(self.ref))

    def expect(self, token: str | None) -> None:
        """A worker starts: register the CR (503 until complete) with the token it read."""
        if self._store is not None:
            self._token = token
            self._store.expect(store_key(self.ref), token=token)

    async def rewrite(self) -> None:
        """Write again the latest publication whose write failed, if it is still the latest."""
        if self.unwritten is not None:
            await self.publish(self.unwritten)

    async def publish(self, snapshot: Snapshot) -> None:
        async with self._publishing:
            await self._publish(snapshot)

    async def _publish(self, snapshot: Snapshot) -> None:
        with PROGRESS.publishing(_key(self.ref)):
            problem: Problem | None = None
            synced = is_publishable(snapshot, published_before=self.published)
            if synced and self._store is not None:
                # Before the writes: a static shard the write deletes is already served.
                self._store.serve(store_key(self.ref), snapshot.groups, token=self._token)
            if synced:
                problem = await self.outputs.write(snapshot.groups)
                synced = problem is None
                self.unwritten = None if synced else snapshot
                if synced and self._forget_after_write is not None:
                    self._forget_after_write.forget(store_key(self.ref))  # now: 404
                    self._forget_after_write = None
                if synced:
                    self.written = Written(
                        targets=snapshot.targets,
                        services=len(snapshot.groups),
                        outputs=self.outputs.outputs,
                        served=self._store is not None,
                    )
                    self.seed = snapshot.groups
                    self._record_outputs()
            self.tracker.published(snapshot, written=synced)
            if synced:
                self._status_synced_at = self.tracker.synced_at
            await self.status.report(
                snapshot=snapshot,
                problem=problem or consul_problem(snapshot),
                written=self.written,
                synced=synced,
            )

    async def refresh_sync_time(self) -> None:
        """Move lastSyncTime to the latest confirmation, if no publication did for a while."""
        confirmed, shown = self.tracker.synced_at, self._status_synced_at
        if confirmed is None or shown is None or confirmed - shown < SYNC_STATUS_SECONDS:
            return
        self._status_synced_at = confirmed
        await self.status.confirm_sync()

    def _record_outputs(self) -> None:
        """The bytes each output kind holds against its limit (consul_sd_output_*_bytes)."""
        sizes = dict.fromkeys(self._limits, 0)
        for output in self.outputs.outputs:
            sizes[output.kind] = sizes.get(output.kind, 0) + output.bytes
        metrics.set_output_sizes(
            self.ref.namespace,
            self.ref.name,
            {kind: (size, self._limits.get(kind, 0)) for kind, size in sizes.items()},
        )

    async def report_blocked(self, problem: Problem | None) -> None:
        """Discovery is not running (invalid spec, missing Secret, a failure); outputs stay."""
        await self.status.report(
            snapshot=None,
            problem=problem,
            written=self.written,
        )


def output_limits(output: Output) -> dict[str, int]:
    """The bytes each output kind can hold before its writes fail with OutputTooLarge."""
    limits = {}
    if output.config_map is not None:
        limits["ConfigMap"] = output.config_map.max_shards * output.config_map.max_shard_bytes
    scrape = output.scrape_config
    if scrape is not None and scrape.targets_from != "HTTPSD":
        limits["ScrapeConfig"] = 256 * SCRAPE_CONFIG_MAX_BYTES  # the shard planner's bound
    return limits


def sync_interval(spec: ConsulDiscoverySpec) -> float:
    """How often the targets are confirmed current when all is well (see SYNC_INTERVAL)."""
    if spec.mode == "Polling":
        return spec.refresh_seconds
    return max(spec.refresh_seconds, spec.watch_seconds)


def _observer(sink: GenerationSink) -> RequestObserver:
    key = _key(sink.ref)

    def observe(*, endpoint: str, outcome: str, seconds: float) -> None:
        sink.tracker.observe(endpoint=endpoint, outcome=outcome, seconds=seconds)
        PROGRESS.step(key)

    return observe


async def run_generation(
    *,
    kube: KubeAPI,
    ref: DiscoveryRef,
    generation: int,
    spec_data: Mapping[str, Any],
    ready_before: bool = False,
    serving: HTTPSDServing | None = None,
) -> None:
    """Run one generation of a ConsulDiscovery until cancelled (by a spec change or deletion).

    ``ready_before``: its status said Ready for this generation when the runner started (after
    an operator restart), so the outputs it holds are a complete set of this generation.
    ``serving``: the operator's HTTP SD endpoint, None when it serves none.
    """
    CURRENT_CR.set(_key(ref))  # this task's context: every task it starts inherits it
    reporter = StatusReporter(kube=kube, ref=ref, generation=generation)
    try:
        spec = parse_spec(spec_data, require_output=True)
        if name_problem := validate_discovery_name(ref.name):
            raise SpecError([name_problem])
    except SpecError as exc:
        logger.warning("%s: invalid spec: %s", _key(ref), exc)
        await _stay_blocked(reporter, Problem(REASON_INVALID_SPEC, str(exc)))
        return
    assert spec.output is not None
    if (unavailable := http_sd_unavailable(spec, serving)) is not None:
        logger.warning("%s: %s", _key(ref), unavailable)
        await _stay_blocked(reporter, Problem(REASON_HTTP_SD_UNAVAILABLE, unavailable))
        return
    sink = GenerationSink(
        kube=kube,
        ref=ref,
        generation=generation,
        spec=spec,
        ready_before=ready_before,
        serving=serving,
    )
    allowance = 3 * max(spec.refresh_seconds, spec.watch_seconds) + RESTART_BACKOFF_CAP
    PROGRESS.track(_key(ref), allowance=allowance)
    await _keep_running(kube=kube, sink=sink, spec=spec)


async def _stay_blocked(reporter: StatusReporter, problem: Problem) -> None:
    """Report why this generation cannot run, then wait for the next one; outputs stay."""
    await reporter.report(snapshot=None, problem=problem, written=None)
    PROGRESS.forget(_key(reporter.ref))  # no loop runs: the previous one's must not look stuck
    await asyncio.Event().wait()  # nothing to run until the spec changes


def http_sd_unavailable(spec: ConsulDiscoverySpec, serving: HTTPSDServing | None) -> str | None:
    """Why this operator cannot give the spec the HTTP SD it asks for, or None."""
    output = spec.output
    if output is None or not output.serves_http_sd:
        return None
    if serving is None:
        return (
            "spec.output asks for HTTP SD but this operator serves none (--metrics-port 0): "
            "enable its port"
        )
    scrape = output.scrape_config
    if scrape is not None and scrape.targets_from == "HTTPSD" and not serving.base_url:
        return (
            "scrapeConfig.targetsFrom HTTPSD needs the operator's --http-sd-url (chart value "
            "httpSD.url, set by default); outputs kept"
        )
    return None


async def _keep_running(*, kube: KubeAPI, sink: GenerationSink, spec: ConsulDiscoverySpec) -> None:
    """The failure boundary: start the worker again and again, after a backoff if it failed."""
    backoff = Backoff(base=2.0, cap=RESTART_BACKOFF_CAP)
    reread: Reread | None = None
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            reread = await _run_worker(kube=kube, sink=sink, spec=spec, reread=reread)
            backoff.reset()
        except Exception as exc:  # the boundary: every failure ends in status and an event
            reread = None
            if loop.time() - started > STABLE_RUN_SECONDS:
                backoff.reset()  # a failure after a long good run is a new story, not a retry
            problem = describe_failure(exc)
            _log_failure(sink.ref, problem=problem, exc=exc)
            await sink.report_blocked(problem)
            await backoff.wait()
        PROGRESS.step(_key(sink.ref))


async def _run_worker(
    *, kube: KubeAPI, sink: GenerationSink, spec: ConsulDiscoverySpec, reread: Reread | None
) -> Reread:
    """Run the worker until the credentials change (return what was read) or it fails (raise).

    ``reread``: what the recheck that ended the previous worker read, used instead of reading
    the Secrets again.
    """
    ref = sink.ref
    if not sink.resumed:
        await sink.resume()
        if not sink.published:
            await sink.report_blocked(None)  # Progressing: the first discovery is under way
    sink.lock()  # until this start's token is known, nobody reads the targets (nor an old token)
    resolved = await _credentials(kube=kube, ref=ref, spec=spec, reread=reread)
    sink.expect(resolved.http_sd_token)
    query = DiscoveryQuery.from_spec(spec)
    client = build_client(
        resolved.endpoint,
        max_concurrent=spec.max_concurrent,
        wake_on_change=spec.wake_on_change,
        observer=_observer(sink),
    )
    async with client:
        worker = asyncio.create_task(
            run_discovery(query=query, client=client, publish=sink.publish, seed=sink.seed),
            name=f"consul-sd worker {_key(ref)}",
        )
        try:
            return await _until_credentials_change(
                kube=kube, sink=sink, spec=spec, fingerprint=resolved.fingerprint, worker=worker
            )
        finally:
            await cancel_and_wait([worker])


async def _credentials(
    *, kube: KubeAPI, ref: DiscoveryRef, spec: ConsulDiscoverySpec, reread: Reread | None
) -> ResolvedEndpoint:
    """The endpoint of this start, from what the last recheck read if it read anything."""
    if isinstance(reread, SecretNotFound | SecretInvalid):
        raise reread  # reported by the boundary, as if this start had read it
    http_sd = _http_sd_secret(spec)
    if reread is None:
        return await resolve_endpoint(
            kube=kube, namespace=ref.namespace, consul=spec.consul, http_sd=http_sd
        )
    return endpoint_from_values(
        reread, namespace=ref.namespace, consul=spec.consul, http_sd=http_sd
    )


def _http_sd_secret(spec: ConsulDiscoverySpec) -> SecretKeyRef | None:
    """The Secret key holding the HTTP SD bearer token, when the spec serves with one."""
    if spec.output is None or not spec.output.serves_http_sd:
        return None
    authorization = spec.output.http_sd_settings.authorization
    return authorization.secret_ref if authorization else None


async def _until_credentials_change(
    *,
    kube: KubeAPI,
    sink: GenerationSink,
    spec: ConsulDiscoverySpec,
    fingerprint: str,
    worker: asyncio.Task[None],
) -> Reread:
    """Return what was read when the Secrets changed or vanished; raise what the worker raised.

    Meanwhile a publication whose write failed is written again every :data:`REWRITE_SECONDS`.
    """
    ref = sink.ref
    loop = asyncio.get_running_loop()
    recheck_at = loop.time() + SECRET_RECHECK_SECONDS
    while True:
        # Not loops.first_done: the recheck is a timeout, not a second task to cancel.
        done, _ = await asyncio.wait({worker}, timeout=REWRITE_SECONDS)
        if done:
            worker.result()
            raise RuntimeError("the discovery worker stopped")
        await sink.rewrite()
        await sink.refresh_sync_time()
        if loop.time() < recheck_at:
            continue
        recheck_at = loop.time() + SECRET_RECHECK_SECONDS
        try:
            values = await read_secret_values(
                kube=kube,
                namespace=ref.namespace,
                consul=spec.consul,
                http_sd=_http_sd_secret(spec),
            )
        except (SecretNotFound, SecretInvalid) as exc:
            return exc  # reported by the next start
        except KubeError as exc:
            # An apiserver blip: the worker's credentials are still good, keep it running.
            logger.info("%s: Secrets not re-read (%s); will try again", _key(ref), exc)
            continue
        if secrets_fingerprint(values) != fingerprint:
            logger.info("%s: Consul credentials changed; restarting the worker", _key(ref))
            return values


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


def _log_failure(ref: DiscoveryRef, *, problem: Problem, exc: Exception) -> None:
    if problem.reason != REASON_INTERNAL_ERROR:
        logger.warning("%s: %s: %s", _key(ref), problem.reason, problem.message)
        return
    # The frames, never the exception's text: its arguments may hold a credential.
    frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
    logger.error("%s: %s\n%s", _key(ref), problem.message, frames.rstrip())
