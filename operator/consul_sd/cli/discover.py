"""``consul-sd discover``: the operator's engine for a Prometheus outside Kubernetes.

Writes Prometheus file_sd JSON, once to a file or stdout (``--once``, with progress on a
terminal), or keeps ``--output`` current and/or serves the targets as Prometheus HTTP SD
(``--listen HOST:PORT``: ``/targets``, 503 until the first complete snapshot; see
:mod:`consul_sd.outputs.http_sd`) until SIGTERM/SIGINT, with a heartbeat line per publication.
What it runs with (the spec, the flags over it, the CONSUL_* variables beneath them and the
credential files) is :mod:`.config`'s. SIGHUP reads all of it again and restarts discovery
seeded with the targets the outputs hold (never an outage's empty snapshot), so the outputs
never lose targets to a reload; a reload that fails, whatever the error, is one ERROR line and
the previous configuration keeps running. ``--output`` is checked before anything is
discovered, and a write that fails later is retried (:mod:`.sinks`), never fatal.

Imported by :func:`consul_sd.cli.main` only when this subcommand runs: it loads the engine
(pydantic, aiohttp, yaml), never kopf or the Kubernetes client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from consul_sd import metrics
from consul_sd.api.durations import parse_duration
from consul_sd.cli.arguments import CommandError, UsageError
from consul_sd.cli.config import check_output, load_spec, resolve_endpoint
from consul_sd.cli.environment import apply_credential_environment
from consul_sd.cli.messages import describe_failure, nothing_matched
from consul_sd.cli.progress import CountingClient, Heartbeat, OnceProgress, RequestTally
from consul_sd.cli.sinks import RetryingFileSink
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.consul.errors import ConsulError
from consul_sd.controller.conditions import consul_problem
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import discover_once, run_discovery
from consul_sd.discovery.snapshots import (
    DiscoveryIncomplete,
    Publish,
    Snapshot,
    is_publishable,
)
from consul_sd.endpoints import connection_cap
from consul_sd.outputs.filesd import FileSDWriter, write_atomically
from consul_sd.outputs.http_sd import (
    RunningServer,
    SnapshotServer,
    TargetStore,
    start_target_server,
    stop_target_server,
)
from consul_sd.outputs.render import render_file_sd
from consul_sd.targets import TargetGroup

logger = logging.getLogger("consul_sd")

# Re-exported for tests and callers that knew it here.
__all__ = ["load_spec", "run"]


@dataclass(frozen=True)
class Setup:
    """What one discovery run uses; built again from the files on SIGHUP."""

    query: DiscoveryQuery
    endpoint: ConsulEndpoint
    services: list[str]


def configure(args: argparse.Namespace, *, sources: dict[str, str]) -> Setup:
    spec = load_spec(args)
    endpoint = resolve_endpoint(spec, args, sources=sources)
    return Setup(DiscoveryQuery.from_spec(spec), endpoint, list(spec.selector.services))


def run(args: argparse.Namespace) -> int:
    """``consul-sd discover``: one discovery (``--once``), or a file kept current and/or the
    targets served over HTTP (``--listen``) until a signal."""
    if args.once and args.listen is not None:
        raise UsageError("--listen serves until stopped: it does not go with --once")
    if not args.once and args.output is None and args.listen is None:
        raise UsageError("give --once, --output FILE, --listen HOST:PORT, or --output with one")
    if args.output is not None:
        check_output(args.output)
    try:
        heartbeat = parse_duration(args.heartbeat_interval)
    except ValueError as exc:
        raise UsageError(f"--heartbeat-interval: {exc}") from None
    sources = apply_credential_environment(args, os.environ)
    setup = configure(args, sources=sources)
    if args.once:
        show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
        return asyncio.run(_discover_once(setup, output=args.output, progress=show))
    reconfigure = lambda: configure(args, sources=sources)  # noqa: E731 - read again on SIGHUP
    return asyncio.run(
        _discover_forever(
            setup,
            reconfigure=reconfigure,
            output=args.output,
            listen=args.listen,
            heartbeat_interval=heartbeat,
        )
    )


CLI_METRICS_NAME = "discover"  # the name label of the CLI's one discovery (namespace "")
# The metrics of this process's one discovery (consul_sd.metrics), across SIGHUP restarts.
TRACKER = metrics.SyncTracker("", CLI_METRICS_NAME)


def _sync_interval(query: DiscoveryQuery) -> float:
    if query.mode == "Polling":
        return query.refresh_interval
    return max(query.refresh_interval, query.watch_timeout)


def _client(setup: Setup, tally: RequestTally) -> CountingClient:
    # The long-polls beside the maxConcurrent service reads, as build_client sizes them.
    cap = connection_cap(
        max_concurrent=setup.query.max_concurrent, wake_on_change=setup.query.wake_on_change
    )

    def observe(*, endpoint: str, outcome: str, seconds: float) -> None:
        tally(endpoint=endpoint, outcome=outcome, seconds=seconds)
        TRACKER.observe(endpoint=endpoint, outcome=outcome, seconds=seconds)

    return CountingClient(
        matches=setup.query.matches,
        endpoint=setup.endpoint,
        max_connections=cap,
        observer=observe,
    )


async def _discover_once(setup: Setup, *, output: Path | None, progress: bool) -> int:
    tally = RequestTally()
    started = asyncio.get_running_loop().time()
    client = _client(setup, tally)
    async with client:
        reporter = OnceProgress(tally=tally, client=client) if progress else None
        if reporter is not None:
            reporter.start()
        try:
            snapshot = await discover_once(query=setup.query, client=client)
        except (DiscoveryIncomplete, ConsulError) as exc:
            raise CommandError(describe_failure(exc, endpoint=setup.endpoint)) from None
        finally:
            if reporter is not None:
                await reporter.stop()
    _emit(render_file_sd(snapshot.groups), output=output)
    _warn_if_skipped(snapshot, endpoint=setup.endpoint)
    _warn_if_empty(snapshot, services=setup.services)
    elapsed = asyncio.get_running_loop().time() - started
    logger.info(
        "discovered %d targets in %d services in %.1fs (%s, %d Consul requests)",
        snapshot.targets,
        len(snapshot.groups),
        elapsed,
        snapshot.mode,
        tally.requests,
    )
    return 0


def _emit(data: bytes, *, output: Path | None) -> None:
    """Write the targets to ``output``, else to standard output; a failure is one line."""
    if output is not None:
        try:
            write_atomically(output, data)
        except OSError as exc:
            raise CommandError(f"--output {output}: {exc.strerror or exc}") from None
        return
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): nothing to tell it; stdout is pointed at /dev/null
        # so that the interpreter's own flush at exit does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise CommandError("standard output closed before the targets were written") from None
    except OSError as exc:
        raise CommandError(
            f"cannot write the targets to standard output ({exc.strerror or exc}); "
            "use --output FILE"
        ) from None


def _warn_if_skipped(snapshot: Snapshot, *, endpoint: ConsulEndpoint) -> None:
    """A service left out for an answer no retry changes (as Prometheus skips it) is named."""
    for name in sorted(snapshot.failed):
        error = snapshot.failed[name]
        logger.warning("service %s skipped: %s", name, describe_failure(error, endpoint=endpoint))


def _warn_if_empty(snapshot: Snapshot, *, services: list[str]) -> None:
    """Warn of a discovery with no target, or of a ``--services`` name Consul has no instance of
    (a typo among correct names must not pass unseen)."""
    found = {name for name, group in snapshot.groups.items() if group}
    if snapshot.targets == 0 or any(name not in found for name in services):
        logger.warning("%s", nothing_matched(services=services, found=found))


async def _discover_forever(
    setup: Setup,
    *,
    reconfigure: Callable[[], Setup],
    output: Path | None,
    listen: tuple[str, int] | None,
    heartbeat_interval: float,
) -> int:
    """Keep ``output`` current and/or serve the targets at ``listen`` until SIGTERM/SIGINT."""
    tally = RequestTally()
    current = _Current(setup)

    def describe(error: ConsulError) -> str:  # with the flag or variable to fix
        return describe_failure(error, endpoint=current.setup.endpoint)

    writer = None
    if output is not None:
        writer = RetryingFileSink(FileSDWriter(output, describe=describe))
    store = TargetStore()
    # The writer logs Consul's problems; without one, the HTTP sink does.
    served = SnapshotServer(store, log_problems=writer is None) if listen is not None else None
    heartbeat = Heartbeat(tally=tally, interval=heartbeat_interval)
    sinks = [sink.publish for sink in (writer, served, heartbeat) if sink is not None]

    async def publish(snapshot: Snapshot) -> None:
        for sink in sinks:
            await sink(snapshot)
        written = is_publishable(snapshot, published_before=TRACKER.written_once)
        TRACKER.published(snapshot, written=written)
        if written:
            current.held = snapshot.groups
        problem = consul_problem(snapshot)
        metrics.set_degraded("", CLI_METRICS_NAME, problem.reason if problem else None)
        if not current.warned and snapshot.complete:
            current.warned = True
            _warn_if_empty(snapshot, services=current.setup.services)

    server = await _listen(store, listen) if listen is not None else None
    background = [asyncio.create_task(heartbeat.run())]
    if writer is not None:
        background.append(asyncio.create_task(writer.retry_forever()))
    try:
        await _supervise(current, reconfigure=reconfigure, publish=publish, tally=tally)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if server is not None:
            await stop_target_server(server)
    logger.info(
        "stopped after %d writes, %d snapshots served",
        writer.writer.writes if writer is not None else 0,
        served.served if served is not None else 0,
    )
    return 0


async def _listen(store: TargetStore, listen: tuple[str, int]) -> RunningServer:
    host, port = listen
    try:
        return await start_target_server(store, host=host, port=port, app_kind="cli")
    except OSError as exc:  # in use, or an address this host does not have
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        shown = f"[{host}]" if ":" in host else host  # as the user wrote an IPv6 address
        raise UsageError(f"--listen {shown}:{port}: {reason}") from None


@dataclass
class _Current:
    """The run's setup and what the outputs hold, for the publish path and SIGHUP restarts."""

    setup: Setup
    # The groups of the last snapshot the sinks took (is_publishable): what a restart is seeded
    # with. Never a snapshot they refused, such as the empty one an outage publishes.
    held: Mapping[str, TargetGroup] | None = None
    warned: bool = False  # the "nothing matched" check ran for this setup

    def start(self, setup: Setup) -> None:
        """A discovery run begins with ``setup``: its interval and services are the ones now."""
        self.setup, self.warned = setup, False
        metrics.SYNC_INTERVAL.labels("", CLI_METRICS_NAME).set(_sync_interval(setup.query))


@dataclass
class _Control:
    """What every discovery run of one process shares: how to publish, count and reload."""

    reconfigure: Callable[[], Setup]
    publish: Publish
    tally: RequestTally
    stop: asyncio.Event
    reload: asyncio.Event


async def _supervise(
    current: _Current, *, reconfigure: Callable[[], Setup], publish: Publish, tally: RequestTally
) -> None:
    """Run discovery until SIGTERM/SIGINT; on SIGHUP, restart it with what ``reconfigure``
    reads, seeded with the targets the outputs hold."""
    loop = asyncio.get_running_loop()
    control = _Control(reconfigure, publish, tally, asyncio.Event(), asyncio.Event())
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, control.stop.set)
    loop.add_signal_handler(signal.SIGHUP, control.reload.set)
    try:
        setup = current.setup
        while not control.stop.is_set():
            current.start(setup)
            # The targets the outputs hold: a service the new run cannot read yet keeps them.
            seed = dict(current.held) if current.held else None
            setup = await _run_until_reload(setup, control=control, seed=seed)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


async def _run_until_reload(
    setup: Setup, *, control: _Control, seed: Mapping[str, TargetGroup] | None
) -> Setup:
    """One discovery run, until ``stop`` or a ``reload`` that read a usable configuration."""
    async with _client(setup, control.tally) as client:
        task = asyncio.create_task(
            run_discovery(query=setup.query, client=client, publish=control.publish, seed=seed)
        )
        try:
            while True:
                await _first_of(task, control.stop, control.reload)
                if task.done():
                    task.result()  # the engine gave up: its error ends the command
                if control.stop.is_set():
                    return setup
                control.reload.clear()
                new = _reconfigure(control.reconfigure)
                if new is None:
                    continue
                logger.info("SIGHUP: configuration read again; restarting discovery")
                return new
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _reconfigure(reconfigure: Callable[[], Setup]) -> Setup | None:
    """The configuration read again, or None (one ERROR line) if it cannot be used: whatever
    went wrong, a SIGHUP never ends the run."""
    try:
        return reconfigure()
    except UsageError as exc:
        logger.error("SIGHUP: %s; the previous configuration keeps running", exc)
    except Exception as exc:  # a reload must not end the run, as main's guard would
        logger.debug("SIGHUP: unexpected error", exc_info=exc)
        logger.error(
            "SIGHUP: unexpected %s: %s; the previous configuration keeps running",
            type(exc).__name__,
            exc,
        )
    return None


async def _first_of(task: asyncio.Task[None], *events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait([task, *waits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
