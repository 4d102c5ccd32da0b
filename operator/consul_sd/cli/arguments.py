"""Every flag of ``consul-sd`` and its subcommands, with nothing but argparse.

This module is what ``--version`` and ``--help`` load, so it imports no part of the engine: the
choices it offers that the spec also defines (the modes, the schemes) are literals here, and
``tests/unit/test_cli_arguments.py`` checks they equal the spec's. Parsing only: what a flag
means is decided by the subcommand's module, when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from consul_sd import __version__

# The spec's values in the spelling of the command line; equal to consul_sd.api.spec's by a test.
MODES = ("auto", "polling", "blocking")  # spec.Mode, lower-cased
SCHEMES = ("http", "https")  # spec.ConsulConfig.scheme
LOG_LEVELS = ("debug", "info", "warning", "error")


class UsageError(Exception):
    """A problem with the command line or the files it names: one line for stderr."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consul-sd",
        description="Consul service discovery for Prometheus at fleet scale.",
    )
    parser.add_argument("--version", action="version", version=f"consul-sd {__version__}")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    discover = commands.add_parser(
        "discover",
        help="discover Consul services into a file_sd JSON file (or stdout with --once)",
        description="Discover Consul services and write Prometheus file_sd JSON. "
        "Flags override --spec; durations use Prometheus syntax (30s, 5m).",
    )
    add_discover_arguments(discover)

    operator = commands.add_parser(
        "operator",
        help="run the Kubernetes operator (kopf) that reconciles ConsulDiscovery objects",
        description="Reconcile ConsulDiscovery objects into file_sd ConfigMaps and ScrapeConfigs. "
        "Credentials: in-cluster, else KUBECONFIG.",
    )
    add_operator_arguments(operator)
    return parser


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: run as the only instance (the chart's default, with one replica)",
    )
    parser.add_argument("--peering-name", default=None, help="kopf peering object to join")
    parser.add_argument("--liveness-port", type=int, default=8080, help="0 disables /healthz")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="port of /metrics, /healthz and the HTTP SD /targets; 0 disables them",
    )
    parser.add_argument("--bind-address", default="0.0.0.0", help="address of both ports")
    parser.add_argument(
        "--http-sd-url",
        default=None,
        help="this operator's URL as Prometheus reaches it (http://NAME.NAMESPACE.svc:9090); "
        "ScrapeConfigs with targetsFrom: HTTPSD point at URL/targets/NAMESPACE/NAME",
    )


def add_discover_arguments(parser: argparse.ArgumentParser) -> None:
    consul = parser.add_argument_group("consul")
    consul.add_argument("--server", help="Consul host:port (spec.consul.server)")
    consul.add_argument("--scheme", choices=SCHEMES)
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
    engine.add_argument("--mode", choices=MODES)
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

    out = parser.add_argument_group("output (--once, --output, --listen; --once not with --listen)")
    out.add_argument(
        "--once",
        action="store_true",
        help="one complete discovery to --output (or stdout), then exit; non-zero on failure",
    )
    out.add_argument(
        "--output", type=Path, help="file_sd file, rewritten atomically whenever targets change"
    )
    out.add_argument(
        "--listen",
        type=_host_port,
        metavar="HOST:PORT",
        help="serve Prometheus HTTP SD at http://HOST:PORT/targets (and /metrics, /healthz); "
        "503 until the first complete discovery",
    )


def _host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (every interface)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]") or "0.0.0.0", int(port)


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
