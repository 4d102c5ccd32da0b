"""The ``consul-sd`` command: ``discover`` (standalone file_sd), ``simulate``, ``operator``.

``discover`` runs the same engine as the operator for a Prometheus outside Kubernetes. Its flags
mirror the ConsulDiscovery spec; ``--spec FILE`` reads a CR, its spec, or a multi-document file
(``--name`` picks the CR), and flags override it. Credentials come from flags or files only,
because there is no Secret to read here; a spec that names Secrets must be given ``--token-file``
(or the TLS file flags) instead. The token is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from consul_sd import __version__
from consul_sd.consul import (
    ConsulClient,
    ConsulCredentialError,
    ConsulEndpoint,
    ConsulError,
    validate_token,
)
from consul_sd.endpoints import Credentials, build_client, build_endpoint
from consul_sd.filesd import FileSDWriter, write_atomically
from consul_sd.render import render_file_sd
from consul_sd.simulator import cli as simulator_cli
from consul_sd.spec import ConsulDiscoverySpec, SpecError, parse_spec
from consul_sd.workers import DiscoveryIncomplete, DiscoveryQuery, discover_once, run_discovery

logger = logging.getLogger("consul_sd")


class UsageError(Exception):
    """A problem with the command line or the files it names: one line for stderr."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.run(args)
    except (UsageError, SpecError) as exc:
        print(f"consul-sd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consul-sd",
        description="Consul service discovery for Prometheus at fleet scale.",
    )
    parser.add_argument("--version", action="version", version=f"consul-sd {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    discover = commands.add_parser(
        "discover",
        help="discover Consul services into a file_sd JSON file (or stdout with --once)",
        description="Discover Consul services and write Prometheus file_sd JSON. "
        "Flags override --spec; durations use Prometheus syntax (30s, 5m).",
    )
    add_discover_arguments(discover)
    discover.set_defaults(run=run_discover_command)

    simulate = commands.add_parser(
        "simulate",
        help="run the Consul simulator (tests, benchmarks, demos)",
        description="A fake Consul HTTP API with generated services, faults and counters.",
    )
    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(run=lambda args: asyncio.run(simulator_cli.run(args)))

    operator = commands.add_parser(
        "operator",
        help="run the Kubernetes operator (kopf) that reconciles ConsulDiscovery objects",
        description="Reconcile ConsulDiscovery objects into file_sd ConfigMaps and ScrapeConfigs. "
        "Credentials: in-cluster, else KUBECONFIG.",
    )
    add_operator_arguments(operator)
    operator.set_defaults(run=_run_operator)
    return parser


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    from consul_sd import handlers  # noqa: PLC0415 - kopf loads only for this command

    handlers.add_operator_arguments(parser)


def _run_operator(args: argparse.Namespace) -> int:
    from consul_sd import handlers  # noqa: PLC0415 - kopf loads only for this command

    return handlers.run_operator(args)


def add_discover_arguments(parser: argparse.ArgumentParser) -> None:
    consul = parser.add_argument_group("consul")
    consul.add_argument("--server", help="Consul host:port (spec.consul.server)")
    consul.add_argument("--scheme", choices=["http", "https"])
    consul.add_argument("--path-prefix")
    consul.add_argument("--datacenter")
    consul.add_argument("--namespace")
    consul.add_argument("--partition")
    consul.add_argument("--token", help="ACL token (visible in ps: prefer --token-file)")
    consul.add_argument("--token-file", type=Path, help="file holding the ACL token")
    consul.add_argument("--ca-file", type=Path)
    consul.add_argument("--cert-file", type=Path)
    consul.add_argument("--key-file", type=Path)
    consul.add_argument("--server-name", help="TLS server name to verify")
    consul.add_argument("--insecure-skip-verify", action="store_true", default=None)
    consul.add_argument("--no-allow-stale", dest="allow_stale", action="store_false", default=None)

    selector = parser.add_argument_group("selector")
    selector.add_argument("--services", type=_csv, help="exact names, comma-separated")
    selector.add_argument("--tags", type=_csv, help="required tags, comma-separated")
    selector.add_argument("--node-meta", type=_key_values, help="k=v,k2=v2")
    selector.add_argument("--filter", help="Consul filter for the catalog")
    selector.add_argument("--health-filter", help="Consul filter for /v1/health/service")
    selector.add_argument("--tag-separator")

    engine = parser.add_argument_group("engine")
    engine.add_argument("--mode", choices=["auto", "polling", "blocking"])
    engine.add_argument("--max-concurrent", type=int)
    engine.add_argument("--refresh-interval")
    engine.add_argument("--watch-timeout")
    engine.add_argument(
        "--resync-interval", help="read every target again this often whatever the indexes say"
    )
    engine.add_argument(
        "--spec",
        type=Path,
        help="a ConsulDiscovery YAML (CR or spec); a multi-document file (kubectl style) is "
        "searched for its ConsulDiscovery",
    )
    engine.add_argument(
        "--name", help="with --spec: the ConsulDiscovery to use when the file holds several"
    )

    out = parser.add_argument_group("output (one of --once, --output, or both)")
    out.add_argument(
        "--once",
        action="store_true",
        help="one complete discovery to --output (or stdout), then exit; non-zero on failure",
    )
    out.add_argument(
        "--output", type=Path, help="file_sd file, rewritten atomically whenever targets change"
    )


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _key_values(text: str) -> dict[str, str]:
    pairs = {}
    for part in _csv(text):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{part!r} is not key=value")
        pairs[key] = value
    return pairs


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
    found = [doc for doc in documents if doc.get("kind") == "ConsulDiscovery"]
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


def run_discover_command(args: argparse.Namespace) -> int:
    if not args.once and args.output is None:
        raise UsageError("give --once, --output FILE, or both")
    spec = load_spec(args)
    endpoint = resolve_endpoint(spec, args)
    query = DiscoveryQuery.from_spec(spec)
    if args.once:
        return asyncio.run(_discover_once(query=query, endpoint=endpoint, output=args.output))
    return asyncio.run(_discover_forever(query=query, endpoint=endpoint, output=args.output))


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
    *, query: DiscoveryQuery, endpoint: ConsulEndpoint, output: Path
) -> int:
    if not output.parent.is_dir():
        raise UsageError(f"--output {output}: directory {output.parent} does not exist")
    writer = FileSDWriter(output)
    loop = asyncio.get_running_loop()
    async with _client(query, endpoint) as client:
        task = asyncio.create_task(
            run_discovery(query=query, client=client, publish=writer.publish)
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
    logger.info("stopped after %d writes", writer.writes)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
