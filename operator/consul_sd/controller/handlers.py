"""kopf handlers: the only module that imports kopf, and the ``consul-sd operator`` entry point.

One daemon per ConsulDiscovery runs :func:`.runner.run_generation` for the CR's current
``metadata.generation``. A spec edit starts a new generation's runner and cancels the old one;
the new runner leaves the outputs in place until its first complete snapshot (see
:class:`consul_sd.outputs.publisher.OutputPublisher`). Deletion stops the daemon;
ownerReferences let the garbage collector remove the outputs.

Settings follow the reference: the project's own finalizer and annotation prefix
(``consul-sd.io``), never kopf's defaults; kopf posts only WARNING and above as events (our own
events come from the runner); a liveness endpoint; a cancellation timeout so a stuck worker cannot
block deletion. The operator's one HTTP port (``--metrics-port``) is the HTTP SD server of
:mod:`consul_sd.outputs.http_sd` (``/metrics``, ``/healthz``, ``/targets``): started in the
startup handler, stopped in the cleanup handler; its target store reaches every runner through
kopf's memo, and a deleted CR is forgotten by the store (404; an exiting operator forgets
nothing: its last answers stay the targets). Handlers are never attached to the generated
ConfigMaps or ScrapeConfigs, whose annotations kopf would otherwise fill.

Logging: the startup handler puts :class:`~.runner.NameTheCR` on the log handlers the command
configured (every line about a CR names it, kopf's own included) and drops the access-log
lines of probe requests (:class:`DropProbes`: kopf's liveness server would log one per kubelet
probe); other requests to that server are still logged.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from consul_sd import metrics
from consul_sd.api.names import FINALIZER, GROUP, PLURAL, VERSION
from consul_sd.controller.progress import PROGRESS
from consul_sd.controller.runner import HTTPSDServing, NameTheCR, run_generation, store_key
from consul_sd.kube import DiscoveryRef, Kube
from consul_sd.loops import cancel_and_wait
from consul_sd.outputs import http_sd

GENERATION_POLL_SECONDS = 1.0
CANCELLATION_TIMEOUT = 10.0
# The pause before a runner that crashed (a bug in it) starts again: never a hot loop.
RESTART_PAUSE_SECONDS = 5.0


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Every other request of kopf's own (patches, events) is bounded too.
    settings.networking.request_timeout = 30
    install_log_filters()
    memo.kube = Kube.from_environment()


# The paths the kubelet probes (the chart's liveness and readiness probes hit kopf's /healthz).
PROBE_PATHS = ("/healthz",)


class DropProbes(logging.Filter):
    """Drop aiohttp access-log lines of probe requests; every other line passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f" {path} " in message or f" {path}?" in message for path in PROBE_PATHS)


def install_log_filters() -> None:
    """NameTheCR on every handler of the root logger, DropProbes on aiohttp's access log; once."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, NameTheCR) for f in handler.filters):
            handler.addFilter(NameTheCR())
    access = logging.getLogger("aiohttp.access")
    if not any(isinstance(f, DropProbes) for f in access.filters):
        access.addFilter(DropProbes())


@kopf.on.startup()
async def start_target_server(*, memo: kopf.Memo, **_: Any) -> None:
    """The operator's port: /metrics, /healthz and /targets, before any CR is handled."""
    port = memo.get("port") or 0
    if not port:
        return  # --metrics-port 0: no server; a CR asking for HTTP SD reports HTTPSDUnavailable
    store = http_sd.TargetStore()
    memo.target_server = await http_sd.start_target_server(
        store, host=memo.get("host") or "0.0.0.0", port=port, app_kind="operator"
    )
    memo.serving = HTTPSDServing(store=store, base_url=memo.get("http_sd_url") or None)


@kopf.on.cleanup()
async def stop_target_server(*, memo: kopf.Memo, **_: Any) -> None:
    server = memo.get("target_server")
    if server is not None:
        await http_sd.stop_target_server(server)


@kopf.daemon(
    GROUP,
    VERSION,
    PLURAL,
    # Above GENERATION_POLL_SECONDS, so the daemon stops by itself before kopf cancels it.
    cancellation_backoff=2 * GENERATION_POLL_SECONDS,
    cancellation_timeout=CANCELLATION_TIMEOUT,
)
async def run_consul_discovery(
    *,
    name: str,
    namespace: str | None,
    uid: str,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Keep one runner alive per generation of this ConsulDiscovery until it is deleted."""
    assert namespace is not None, "ConsulDiscovery is namespaced"
    ref = DiscoveryRef(namespace=namespace, name=name, uid=uid)
    generation: int | None = None
    runner: asyncio.Task[None] | None = None
    try:
        while not stopped:
            current = int(meta.get("generation") or 0)
            if current != generation or runner is None or runner.done():
                if (error := _crash(runner)) is not None:
                    # run_generation reports its own failures; only a bug in it lands here.
                    logger.error(
                        "%s/%s: discovery runner stopped (%s); restarting",
                        namespace,
                        name,
                        type(error).__name__,
                    )
                    await stopped.wait(RESTART_PAUSE_SECONDS)
                    if stopped:
                        break
                await _stop(runner)
                generation = current
                logger.info(
                    "%s/%s: starting discovery for generation %d", namespace, name, generation
                )
                runner = _start(memo, ref=ref, generation=generation, spec=spec, status=status)
            await stopped.wait(GENERATION_POLL_SECONDS)
    finally:
        try:
            await _stop(runner)
        finally:
            # Even when kopf cancels this daemon during the teardown: a deleted CR is never
            # served on. The runner is cancelled by then, and serving is synchronous.
            if (serving := memo.get("serving")) is not None and not _operator_stops(stopped):
                serving.store.forget(store_key(ref))  # deleted, or no longer handled: 404
            metrics.forget(namespace, name)
            PROGRESS.forget(f"{namespace}/{name}")


def _operator_stops(stopped: kopf.DaemonStopped) -> bool:
    """The daemon stops because the operator exits or pauses, not because of the CR."""
    reason = getattr(stopped, "reason", None)
    exiting = (
        kopf.DaemonStoppingReason.OPERATOR_EXITING | kopf.DaemonStoppingReason.OPERATOR_PAUSING
    )
    return reason is not None and bool(reason & exiting)


def _crash(runner: asyncio.Task[None] | None) -> BaseException | None:
    """What a runner that ended by itself raised; None while it runs, or if it was cancelled."""
    if runner is None or not runner.done() or runner.cancelled():
        return None
    return runner.exception()


def _start(
    memo: kopf.Memo,
    *,
    ref: DiscoveryRef,
    generation: int,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
) -> asyncio.Task[None]:
    return asyncio.create_task(
        run_generation(
            kube=memo.kube,
            ref=ref,
            generation=generation,
            # A copy: kopf updates the live spec view in place.
            spec_data=copy.deepcopy(dict(spec)),
            ready_before=was_ready(status, generation=generation),
            serving=memo.get("serving"),
        ),
        name=f"consul-sd {ref.namespace}/{ref.name}",
    )


def was_ready(status: Mapping[str, Any], *, generation: int) -> bool:
    """Whether the status says this generation's outputs were written completely."""
    if status.get("observedGeneration") != generation:
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        await cancel_and_wait([task])


@kopf.on.probe(id="discoveries")
async def count_discoveries(**_: Any) -> int:
    """The number of running discoveries; fails liveness when one stopped progressing."""
    stalled = PROGRESS.stalled()
    if stalled:
        raise kopf.PermanentError("discovery stalled: " + "; ".join(stalled))
    return sum(1 for task in asyncio.all_tasks() if task.get_name().startswith("consul-sd "))


# ----------------------------------------------------------------------------------- command


def run_operator(args: argparse.Namespace) -> int:
    """``consul-sd operator``: kopf's runner with this module's handlers."""
    # Read by the startup handler, which starts the port inside kopf's event loop.
    memo = kopf.Memo(port=args.metrics_port, host=args.bind_address, http_sd_url=args.http_sd_url)
    liveness = None
    if args.liveness_port:
        liveness = f"http://{args.bind_address}:{args.liveness_port}/healthz"
    namespaces = tuple(args.namespace)
    kopf.run(
        standalone=args.standalone or None,
        peering_name=args.peering_name,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        memo=memo,
    )
    return 0
