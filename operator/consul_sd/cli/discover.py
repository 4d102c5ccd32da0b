"""``consul-sd discover``: the operator's engine for a Prometheus outside Kubernetes.

Writes Prometheus file_sd JSON, once to a file or stdout (``--once``), or keeps ``--output``
current and/or serves the targets as Prometheus HTTP SD (``--listen HOST:PORT``: ``/targets``,
503 until the first complete snapshot; see :mod:`consul_sd.outputs.http_sd`) until
SIGTERM/SIGINT. Its flags (in :mod:`consul_sd.cli.arguments`) mirror the
ConsulDiscovery spec; ``--spec FILE`` reads a CR, its spec, or a multi-document file (``--name``
picks the CR), and flags override it. Credentials come from flags or files only, because there
is no Secret to read here; a spec that names Secrets must be given ``--token-file`` (or the TLS
file flags) instead. The token is never printed.

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
from pathlib import Path
from typing import Any

import yaml

from consul_sd.api.names import KIND
from consul_sd.api.spec import ConsulDiscoverySpec, SpecError, parse_spec
from consul_sd.cli.arguments import UsageError
from consul_sd.consul.client import ConsulClient
from consul_sd.consul.endpoint import ConsulEndpoint, validate_token
from consul_sd.consul.errors import ConsulCredentialError, ConsulError
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import discover_once, run_discovery
from consul_sd.discovery.snapshots import DiscoveryIncomplete, Publish, Snapshot
from consul_sd.endpoints import Credentials, build_client, build_endpoint
from consul_sd.outputs.filesd import FileSDWriter, write_atomically
from consul_sd.outputs.http_sd import (
    RunningServer,
    SnapshotServer,
    TargetStore,
    start_target_server,
    stop_target_server,
)
from consul_sd.outputs.render import render_file_sd

logger = logging.getLogger("consul_sd")


def load_spec(args: argparse.Namespace) -> ConsulDiscoverySpec:
    """The spec from ``--spec`` (a CR, its spec, or the ConsulDiscovery of a multi-document
    file, ``--name`` choosing among several) with the flags laid over it."""
    data: dict[str, Any] = {}
    if args.spec is not None:
        data = _spec_from_file(args.spec, name=args.name)
    elif args.name is not None:
        raise UsageError("--name goes with --spec")
    consul = dict(data.get("consul") or {})
    selector = dict(data.get("selector") or {})
    _set_given(
        consul,
        server=args.server,
        scheme=args.scheme,
        pathPrefix=args.path_prefix,
        datacenter=args.datacenter,
        namespace=args.namespace,
        partition=args.partition,
        allowStale=args.allow_stale,
    )
    _set_given(
        selector,
        services=args.services,
        tags=args.tags,
        nodeMeta=args.node_meta,
        filter=args.filter,
        healthFilter=args.health_filter,
    )
    spec = dict(data, consul=consul, selector=selector)
    spec.pop("output", None)  # outputs are the operator's; discover writes --output
    _set_given(
        spec,
        tagSeparator=args.tag_separator,
        mode=args.mode.capitalize() if args.mode else None,
        maxConcurrent=args.max_concurrent,
        refreshInterval=args.refresh_interval,
        watchTimeout=args.watch_timeout,
        resyncInterval=args.resync_interval,
    )
    if "server" not in consul:
        raise UsageError("--server is required (or spec.consul.server in --spec)")
    return parse_spec(spec)


def _spec_from_file(path: Path, *, name: str | None) -> dict[str, Any]:
    """The spec in ``path``: a bare spec, one CR, or the ConsulDiscovery of a multi-document
    file (examples/ keep a Secret or a Prometheus beside it); ``name`` picks one of several."""
    try:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--spec {path}: {exc}") from None
    if not all(isinstance(doc, dict) for doc in documents):
        raise UsageError(f"--spec {path}: a document is not a YAML mapping")
    if len(documents) == 1 and "kind" not in documents[0] and name is None:
        return _spec_of(path, documents[0])
    found = [doc for doc in documents if doc.get("kind") == KIND]
    names = [str((doc.get("metadata") or {}).get("name", "")) for doc in found]
    if name is not None:
        found = [doc for doc, doc_name in zip(found, names, strict=True) if doc_name == name]
        if not found:
            raise UsageError(
                f"--spec {path}: no ConsulDiscovery named {name!r} (found: {names or 'none'})"
            )
    if not found:
        raise UsageError(f"--spec {path}: no ConsulDiscovery in the file")
    if len(found) > 1:
        raise UsageError(
            f"--spec {path}: {len(found)} ConsulDiscovery objects ({', '.join(names)}): "
            "choose one with --name"
        )
    return _spec_of(path, found[0])


def _spec_of(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    data = document.get("spec", document) if "kind" in document or "spec" in document else document
    if not isinstance(data, dict):
        raise UsageError(f"--spec {path}: spec is not a mapping")
    return data


def _set_given(target: dict[str, Any], **values: object) -> None:
    """Set each value the command line gave (not None) over what the spec file said."""
    for key, value in values.items():
        if value is not None:
            target[key] = value


def resolve_endpoint(spec: ConsulDiscoverySpec, args: argparse.Namespace) -> ConsulEndpoint:
    """The Consul endpoint with credentials from the flags and the files they name."""
    consul = spec.consul
    token = args.token
    if args.token_file is not None:
        token = _read(args.token_file, "--token-file")
    if token is None and consul.token_secret_ref is not None:
        raise UsageError("spec.consul.tokenSecretRef names a Secret: give --token-file instead")
    if consul.basic_auth_secret_ref is not None:
        raise UsageError("spec.consul.basicAuthSecretRef names a Secret: not supported here")
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together")
    credentials = Credentials(
        token=token,
        ca_pem=_read(args.ca_file, "--ca-file") if args.ca_file else None,
        cert_pem=_read(args.cert_file, "--cert-file") if args.cert_file else None,
        key_pem=_read(args.key_file, "--key-file") if args.key_file else None,
        insecure_skip_verify=bool(args.insecure_skip_verify),
        server_name=args.server_name,
    )
    try:
        if credentials.token and credentials.token.strip():
            validate_token(credentials.token)
        return build_endpoint(consul, credentials)
    except ConsulCredentialError as exc:
        raise UsageError(f"{'--token-file' if args.token_file else '--token'}: {exc}") from None


def _read(path: Path, flag: str) -> str:
    try:
        return path.read_bytes().decode()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        # The error's own text quotes the bytes, which may be a credential.
        raise UsageError(f"{flag} {path}: not UTF-8 text (byte {exc.start})") from None


def run(args: argparse.Namespace) -> int:
    """``consul-sd discover``: one discovery (``--once``), or a file kept current and/or the
    targets served over HTTP (``--listen``) until a signal."""
    if args.once and args.listen is not None:
        raise UsageError("--listen serves until stopped: it does not go with --once")
    if not args.once and args.output is None and args.listen is None:
        raise UsageError("give --once, --output FILE, --listen HOST:PORT, or --output with one")
    try:
        spec = load_spec(args)
    except SpecError as exc:
        raise UsageError(str(exc)) from None
    endpoint = resolve_endpoint(spec, args)
    query = DiscoveryQuery.from_spec(spec)
    if args.once:
        return asyncio.run(_discover_once(query=query, endpoint=endpoint, output=args.output))
    return asyncio.run(
        _discover_forever(query=query, endpoint=endpoint, output=args.output, listen=args.listen)
    )


def _client(query: DiscoveryQuery, endpoint: ConsulEndpoint) -> ConsulClient:
    return build_client(endpoint, max_concurrent=query.max_concurrent)


async def _discover_once(
    *, query: DiscoveryQuery, endpoint: ConsulEndpoint, output: Path | None
) -> int:
    async with _client(query, endpoint) as client:
        try:
            snapshot = await discover_once(query=query, client=client)
        except (DiscoveryIncomplete, ConsulError) as exc:
            print(f"consul-sd: error: {exc}", file=sys.stderr)
            return 1
    data = render_file_sd(snapshot.groups)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        write_atomically(output, data)
    logger.info(
        "discovered %d targets in %d services (%s, %d requests)",
        snapshot.targets,
        len(snapshot.groups),
        snapshot.mode,
        sum(snapshot.requests.values()),
    )
    return 0


async def _discover_forever(
    *,
    query: DiscoveryQuery,
    endpoint: ConsulEndpoint,
    output: Path | None,
    listen: tuple[str, int] | None,
) -> int:
    """Keep ``output`` current and/or serve the targets at ``listen`` until SIGTERM/SIGINT."""
    if output is not None and not output.parent.is_dir():
        raise UsageError(f"--output {output}: directory {output.parent} does not exist")
    writer = FileSDWriter(output) if output is not None else None
    store = TargetStore()
    # The writer logs Consul's problems; without one, the HTTP sink does.
    served = SnapshotServer(store, log_problems=writer is None) if listen is not None else None
    sinks = [sink.publish for sink in (writer, served) if sink is not None]

    async def publish(snapshot: Snapshot) -> None:
        for sink in sinks:
            await sink(snapshot)

    server = await _listen(store, listen) if listen is not None else None
    try:
        await _until_signal(query=query, endpoint=endpoint, publish=publish)
    finally:
        if server is not None:
            await stop_target_server(server)
    logger.info(
        "stopped after %d writes, %d snapshots served",
        writer.writes if writer is not None else 0,
        served.served if served is not None else 0,
    )
    return 0


async def _listen(store: TargetStore, listen: tuple[str, int]) -> RunningServer:
    host, port = listen
    try:
        return await start_target_server(store, host=host, port=port, app_kind="cli")
    except OSError as exc:  # in use, or an address this host does not have
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UsageError(f"--listen {host}:{port}: {reason}") from None


async def _until_signal(
    *, query: DiscoveryQuery, endpoint: ConsulEndpoint, publish: Publish
) -> None:
    loop = asyncio.get_running_loop()
    async with _client(query, endpoint) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
