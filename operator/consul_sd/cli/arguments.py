"""Every flag of ``consul-sd`` and its subcommands, with nothing but argparse.

This module is what ``--version`` and ``--help`` load, so it imports no part of the engine: the
choices and defaults it shows that the spec also defines (the modes, the schemes, the intervals)
are literals here, and ``tests/unit/test_cli_arguments.py`` checks they equal the spec's.
Parsing only: what a flag means (and the environment variables beneath it) is decided by the
subcommand's module, when it runs. A usage error is two lines: the error, and one line of usage
pointing at ``--help``; never argparse's full usage block.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from consul_sd import __version__

# The spec's values in the spelling of the command line; equal to consul_sd.api.spec's by a test.
MODES = ("auto", "polling", "blocking")  # spec.Mode, lower-cased
SCHEMES = ("http", "https")  # spec.ConsulConfig.scheme
# The spec's defaults, shown by --help; equal to consul_sd.api.spec's by a test.
SPEC_DEFAULTS = {
    "mode": "auto",
    "max_concurrent": 100,
    "refresh_interval": "30s",
    "watch_timeout": "2m",
    "resync_interval": "10m",
    "tag_separator": ",",
    "wake_on_change": True,
}
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "logfmt", "json")
PROGRESS = ("auto", "always", "never")
# The address the consul CLI uses when neither a flag nor CONSUL_HTTP_ADDR gives one.
DEFAULT_SERVER = "127.0.0.1:8500"


class UsageError(Exception):
    """A problem with the command line or the files it names: one line for stderr, exit 2."""


class CommandError(Exception):
    """A failure the user can meet at run time (Consul, files): one line for stderr, exit 1."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``consul-sd: error: ...`` and one line of usage."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"consul-sd: error: {message}\n{usage_line(self.prog)}\n")
        sys.exit(2)


def usage_line(prog: str) -> str:
    """The one line of usage shown after a usage error."""
    if prog == "consul-sd":
        return "usage: consul-sd [--log-level LEVEL] COMMAND ... (consul-sd --help lists them)"
    return f"usage: {prog} [OPTIONS] (see {prog} --help)"


class _Formatter(argparse.HelpFormatter):
    """Shows each flag's default after its help, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, [], argparse.SUPPRESS):
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="consul-sd",
        description="Consul service discovery for Prometheus at fleet scale.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"consul-sd {__version__}")
    add_global_arguments(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, description, add in _COMMANDS:
        sub = commands.add_parser(
            name, help=help_text, description=description, formatter_class=_Formatter
        )
        add_global_arguments(sub, suppress=True)
        add(sub)
    return parser


def add_global_arguments(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--log-level and --log-format, accepted before and after the subcommand.

    After it (``suppress``) they default to nothing, so a value given before it is kept.
    """
    group = parser.add_argument_group("logging (before or after the command)")
    group.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS if suppress else "info",
        help="log threshold; debug also prints the traceback of an unexpected error "
        "(default: info)",
    )
    group.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS if suppress else "text",
        help="text for people, logfmt or json (one object a line) for log collectors "
        "(default: text)",
    )


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
    parser.add_argument(
        "--peering-name", default=None, help="kopf peering object to join (default: none)"
    )
    parser.add_argument(
        "--liveness-port", type=int, default=8080, help="port of kopf's /healthz; 0 disables it"
    )
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
    _add_consul_arguments(parser)
    _add_selector_arguments(parser)
    _add_engine_arguments(parser)
    _add_output_arguments(parser)


def _add_consul_arguments(parser: argparse.ArgumentParser) -> None:
    consul = parser.add_argument_group(
        "consul (flags override --spec, which overrides the CONSUL_* environment variables)"
    )
    consul.add_argument(
        "--server",
        metavar="ADDRESS",
        help="Consul host:port, or a URL (http://host:port, https://host:port[/prefix]) whose "
        f"scheme sets --scheme; env CONSUL_HTTP_ADDR (default: {DEFAULT_SERVER})",
    )
    consul.add_argument(
        "--scheme",
        type=str.lower,
        choices=SCHEMES,
        help="http or https; env CONSUL_HTTP_SSL=true means https (default: http, or the "
        "scheme of the address)",
    )
    consul.add_argument("--path-prefix", help="prefix of every API path (Consul behind a proxy)")
    consul.add_argument("--datacenter", help="datacenter to read (default: the agent's own)")
    consul.add_argument("--namespace", help="Consul Enterprise namespace (default: none)")
    consul.add_argument("--partition", help="Consul Enterprise admin partition (default: none)")
    consul.add_argument(
        "--token", help="ACL token; visible in ps: prefer --token-file; env CONSUL_HTTP_TOKEN"
    )
    consul.add_argument(
        "--token-file",
        type=Path,
        help="file holding the ACL token, read again on SIGHUP; env CONSUL_HTTP_TOKEN_FILE",
    )
    consul.add_argument("--basic-auth-user", help="HTTP basic-auth user name (a proxy's)")
    consul.add_argument(
        "--basic-auth-password-file",
        type=Path,
        help="file holding the basic-auth password, read again on SIGHUP",
    )
    consul.add_argument(
        "--ca-file", type=Path, help="CA bundle verifying Consul's certificate; env CONSUL_CACERT"
    )
    consul.add_argument(
        "--cert-file", type=Path, help="client certificate (PEM); env CONSUL_CLIENT_CERT"
    )
    consul.add_argument("--key-file", type=Path, help="client key (PEM); env CONSUL_CLIENT_KEY")
    consul.add_argument(
        "--server-name",
        help="TLS name to verify Consul's certificate against; env CONSUL_TLS_SERVER_NAME "
        "(default: the host of the address)",
    )
    consul.add_argument(
        "--insecure-skip-verify",
        action="store_true",
        default=None,
        help="do not verify Consul's certificate (testing only); env CONSUL_HTTP_SSL_VERIFY=false",
    )
    consul.add_argument(
        "--no-allow-stale",
        dest="allow_stale",
        action="store_false",
        default=None,
        help="read from the leader only, not ?stale from any server (default: stale allowed)",
    )


def _add_selector_arguments(parser: argparse.ArgumentParser) -> None:
    selector = parser.add_argument_group("selector")
    selector.add_argument(
        "--services", type=_csv, help="exact service names, comma-separated (default: all)"
    )
    selector.add_argument("--tags", type=_csv, help="tags a service must have, comma-separated")
    selector.add_argument(
        "--node-meta", type=_key_values, help="node metadata a node must have: k=v,k2=v2"
    )
    selector.add_argument("--filter", help="Consul filter expression for the catalog")
    selector.add_argument("--health-filter", help="Consul filter for /v1/health/service")
    selector.add_argument(
        "--tag-separator",
        help=f"joins tags in __meta_consul_tags (default: {SPEC_DEFAULTS['tag_separator']!r})",
    )


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--mode",
        type=str.lower,
        choices=MODES,
        help="how Consul is read, in any case (Polling = polling) "
        f"(default: {SPEC_DEFAULTS['mode']})",
    )
    engine.add_argument(
        "--max-concurrent",
        type=int,
        help="requests (Polling) or long-polls (Blocking) in flight "
        f"(default: {SPEC_DEFAULTS['max_concurrent']})",
    )
    engine.add_argument(
        "--refresh-interval",
        help="Polling: time between cycles; Blocking: least time between two reads of a watch "
        f"(default: {SPEC_DEFAULTS['refresh_interval']})",
    )
    engine.add_argument(
        "--watch-timeout",
        help=f"Blocking query wait, at most 10m (default: {SPEC_DEFAULTS['watch_timeout']})",
    )
    engine.add_argument(
        "--wake-on-change",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Polling: hold four long-polls on Consul's tables and start a cycle as soon as one "
        "moves (changes seen in about a second); --no-wake-on-change: a cycle every "
        f"--refresh-interval (default: {SPEC_DEFAULTS['wake_on_change']})",
    )
    engine.add_argument(
        "--resync-interval",
        help="read every target again this often whatever the indexes say "
        f"(default: {SPEC_DEFAULTS['resync_interval']})",
    )
    engine.add_argument(
        "--spec",
        type=Path,
        help="a ConsulDiscovery YAML (CR or spec), read again on SIGHUP; a multi-document file "
        "(kubectl style) is searched for its ConsulDiscovery",
    )
    engine.add_argument(
        "--name", help="with --spec: the ConsulDiscovery to use when the file holds several"
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
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
    out.add_argument(
        "--progress",
        type=str.lower,
        choices=PROGRESS,
        default="auto",
        help="--once: progress lines on stderr (services fetched/total, rate, ETA); auto: "
        "only when stderr is a terminal",
    )
    out.add_argument(
        "--heartbeat-interval",
        metavar="DURATION",
        default="0s",
        help="continuous mode: one INFO line (targets, services, changes, requests) at most "
        "this often; 0s: one per publication",
    )


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="YAML files (multi-document allowed)"
    )


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="PROMETHEUS_YML", help="prometheus.yml to read")
    parser.add_argument(
        "--for",
        dest="target",
        type=str.lower,
        choices=("cli", "operator", "http_sd"),
        default="cli",
        help="cli: file_sd on files consul-sd discover writes; operator: file_sd on the mounted "
        "ConfigMaps; http_sd: http_sd_configs on consul-sd discover --listen",
    )
    parser.add_argument(
        "--file-sd-dir",
        default="/etc/prometheus/consul-sd",
        help="where Prometheus reads the file_sd files (cli, operator)",
    )
    parser.add_argument(
        "--http-sd",
        default="127.0.0.1:9100",
        metavar="HOST:PORT",
        help="first address consul-sd discover --listen serves at (http_sd); one port each",
    )
    parser.add_argument(
        "--spec-file",
        default="consul-discoveries.yaml",
        help="the name you save this output as, used in the printed commands",
    )


_COMMANDS = (
    (
        "discover",
        "discover Consul services into a file_sd JSON file (or stdout with --once)",
        "Discover Consul services and write Prometheus file_sd JSON. Durations use Prometheus "
        "syntax (30s, 5m). SIGHUP re-reads --spec and the credential files and restarts "
        "discovery, keeping the output.",
        add_discover_arguments,
    ),
    (
        "operator",
        "run the Kubernetes operator (kopf) that reconciles ConsulDiscovery objects",
        "Reconcile ConsulDiscovery objects into file_sd ConfigMaps and ScrapeConfigs. "
        "Credentials: in-cluster, else KUBECONFIG or ~/.kube/config.",
        add_operator_arguments,
    ),
    (
        "validate",
        "check ConsulDiscovery YAML files offline, one line per problem",
        "Check every ConsulDiscovery in the files against the CRD's and the operator's rules, "
        "without a cluster. Prints one line per problem (FILE[DOCUMENT]: problem); exit 1 on any.",
        add_validate_arguments,
    ),
    (
        "convert",
        "turn Prometheus consul_sd_configs into ConsulDiscovery objects and file_sd jobs",
        "Read a prometheus.yml and print, for every job with consul_sd_configs, the "
        "ConsulDiscovery objects (also usable as --spec files) and the replacement job "
        "(file_sd or http_sd) with its relabelings and scrape settings kept. Fields that have "
        "no counterpart are named in comments; credentials are never printed.",
        add_convert_arguments,
    ),
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
