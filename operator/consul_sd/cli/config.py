"""What ``consul-sd discover`` runs with: the spec and the Consul endpoint, from every source.

The spec comes from ``--spec`` with the flags laid over it; the address, when neither gives
one, from ``CONSUL_HTTP_ADDR`` (else the consul CLI's default, 127.0.0.1:8500); credentials
and TLS from the flags, else the CONSUL_* variables (:mod:`.environment`). Credentials come from
flags, files and variables only, because there is no Secret to read here: a spec that names
Secrets must be given the file flags instead. Every credential read is registered with
:func:`consul_sd.cli.logs.redact`, so no line this command prints can carry it. Called again on
SIGHUP, which is why the files are read here and not once at start-up.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from consul_sd.api.spec import ConsulDiscoverySpec, SpecError, parse_spec
from consul_sd.cli import logs
from consul_sd.cli.arguments import DEFAULT_SERVER, UsageError
from consul_sd.cli.environment import Address, environment_address, split_address
from consul_sd.cli.specfile import friendly_problem, read_text, spec_from_file
from consul_sd.consul.endpoint import ConsulEndpoint, validate_basic_auth, validate_token
from consul_sd.consul.errors import ConsulCredentialError
from consul_sd.endpoints import Credentials, build_endpoint

MAX_FILE_BYTES = 1024 * 1024  # a token, password, CA bundle, certificate or key file
MAX_TOKEN_CHARACTERS = 1024


def load_spec(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ConsulDiscoverySpec:
    """The spec from ``--spec`` (a CR, its spec, or the ConsulDiscovery of a multi-document
    file, ``--name`` choosing among several) with the flags laid over it."""
    data: dict[str, Any] = {}
    if args.spec is not None:
        data = spec_from_file(args.spec, name=args.name)
    elif args.name is not None:
        raise UsageError("--name goes with --spec")
    consul = _mapping(data, "consul", path=args.spec)
    _set_address(consul, args, env=os.environ if environ is None else environ)
    _set_given(
        consul,
        datacenter=args.datacenter,
        namespace=args.namespace,
        partition=args.partition,
        allowStale=args.allow_stale,
    )
    selector = _mapping(data, "selector", path=args.spec)
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
    if isinstance(spec.get("mode"), str):
        spec["mode"] = spec["mode"].capitalize()  # modes in any case, as the flag takes them
    _set_given(
        spec,
        tagSeparator=args.tag_separator,
        mode=args.mode.capitalize() if args.mode else None,
        maxConcurrent=args.max_concurrent,
        refreshInterval=args.refresh_interval,
        watchTimeout=args.watch_timeout,
        resyncInterval=args.resync_interval,
        wakeOnChange=args.wake_on_change,
    )
    try:
        return parse_spec(spec)
    except SpecError as exc:
        raise UsageError("; ".join(map(friendly_problem, exc.problems))) from None


def _mapping(data: Mapping[str, Any], key: str, *, path: Path | None) -> dict[str, Any]:
    """A copy of ``data[key]``, which the flags are laid over: a mapping, or absent."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        # The type, never the value: a misplaced credential must not reach the message.
        raise UsageError(
            f"--spec {path}: spec.{key} must be a mapping (key: value), not {type(value).__name__}"
        )
    return dict(value)


def _set_address(
    consul: dict[str, Any], args: argparse.Namespace, *, env: Mapping[str, str]
) -> None:
    """server, scheme and pathPrefix: the flags, else --spec, else CONSUL_HTTP_ADDR, else
    the default; a URL's scheme counts as --scheme unless --scheme says otherwise."""
    address: Address | None = None
    if args.server is not None:
        address = split_address(args.server, source="--server")
        if address.scheme and args.scheme and address.scheme != args.scheme:
            raise UsageError(
                f"--server {args.server} says {address.scheme}, --scheme {args.scheme}: drop one"
            )
    elif "server" not in consul:
        from_env = environment_address(env)
        address = from_env[0] if from_env else Address(server=DEFAULT_SERVER)
    if address is not None:
        consul["server"] = address.server
        _set_given(consul, scheme=address.scheme, pathPrefix=address.path_prefix)
    _set_given(consul, scheme=args.scheme, pathPrefix=args.path_prefix)


def _set_given(target: dict[str, Any], **values: object) -> None:
    """Set each value the command line gave (not None) over what the spec file said."""
    for key, value in values.items():
        if value is not None:
            target[key] = value


def resolve_endpoint(
    spec: ConsulDiscoverySpec, args: argparse.Namespace, *, sources: Mapping[str, str]
) -> ConsulEndpoint:
    """The Consul endpoint with credentials from the flags, variables and the files they name.

    ``sources`` names the variable an attribute came from, for messages (else the flag).
    """
    consul = spec.consul
    token_flag = sources.get("token_file", "--token-file") if args.token_file else None
    token = _token(args, token_flag)
    # The flag or variable, with the file it names: what an error about the token points at.
    token_flag = (
        f"{token_flag} {args.token_file}" if token_flag else sources.get("token", "--token")
    )
    logs.redact(token)
    _check_token_length(token, token_flag)
    if token is None and consul.token_secret_ref is not None:
        raise UsageError("spec.consul.tokenSecretRef names a Secret: give --token-file instead")
    basic_auth = _basic_auth(args, secret_named=consul.basic_auth_secret_ref is not None)
    if basic_auth is not None and token and token.strip():
        raise UsageError("give an ACL token or basic auth, not both (Consul reads only one)")
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together (CONSUL_CLIENT_CERT/_KEY)")
    credentials = Credentials(
        token=token,
        basic_auth=basic_auth,
        ca_pem=_read_given(args.ca_file, sources.get("ca_file", "--ca-file")),
        cert_pem=_read_given(args.cert_file, sources.get("cert_file", "--cert-file")),
        key_pem=_read_given(args.key_file, sources.get("key_file", "--key-file")),
        insecure_skip_verify=bool(args.insecure_skip_verify),
        server_name=args.server_name,
    )
    try:
        if token and token.strip():
            validate_token(token)
        return build_endpoint(consul, credentials)
    except ConsulCredentialError as exc:
        raise UsageError(f"{token_flag}: {exc}") from None
    except (OSError, ValueError) as exc:  # ssl: a PEM that does not load
        raise UsageError(f"TLS files: {_ssl_problem(exc)}") from None


def _basic_auth(args: argparse.Namespace, *, secret_named: bool) -> tuple[str, str] | None:
    if (args.basic_auth_user is None) != (args.basic_auth_password_file is None):
        raise UsageError("--basic-auth-user and --basic-auth-password-file go together")
    if args.basic_auth_user is None:
        if secret_named:
            raise UsageError(
                "spec.consul.basicAuthSecretRef names a Secret: give --basic-auth-user and "
                "--basic-auth-password-file instead"
            )
        return None
    password = _read(args.basic_auth_password_file, "--basic-auth-password-file").rstrip("\r\n")
    logs.redact(password)
    try:
        validate_basic_auth(args.basic_auth_user, password)
    except ConsulCredentialError as exc:
        raise UsageError(f"--basic-auth-user/--basic-auth-password-file: {exc}") from None
    return args.basic_auth_user, password


def _ssl_problem(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return f"cannot load the CA, certificate or key ({reason})"


def _token(args: argparse.Namespace, flag: str | None) -> str | None:
    """The token from ``--token-file`` (named ``flag``: the flag or its variable), else
    ``--token``; a token file must hold a token of a plausible length."""
    if flag is None:
        return args.token  # type: ignore[no-any-return]
    token = _read(args.token_file, flag)
    if not token.strip():
        raise UsageError(
            f"{flag} {args.token_file}: the file is empty; write the ACL token in it "
            "(an empty token file is not taken as the anonymous token)"
        )
    return token


def _check_token_length(token: str | None, flag: str) -> None:
    # Consul tokens are 36-character UUIDs; a whole file of something else would be sent as a
    # header that a server may refuse by echoing its start, a piece of the secret.
    if token is not None and len(token.strip()) > MAX_TOKEN_CHARACTERS:
        raise UsageError(
            f"{flag}: the token is {len(token.strip())} characters long; a Consul ACL token is "
            "a 36-character UUID: is it the right token?"
        )


def _read_given(path: Path | None, flag: str) -> str | None:
    return _read(path, flag) if path is not None else None


def _read(path: Path, flag: str) -> str:
    """The text of a credential or TLS file, read at most :data:`MAX_FILE_BYTES`."""
    return read_text(path, where=f"{flag} {path}", max_bytes=MAX_FILE_BYTES)


def check_output(path: Path) -> None:
    """Before any discovery: ``--output`` must be a file path in a writable directory."""
    if path.is_dir():
        raise UsageError(f"--output {path}: is a directory; give the path of a file in it")
    if path.exists() and not path.is_file():
        # The file is replaced by a rename: a device (/dev/null), FIFO or socket would be too.
        raise UsageError(
            f"--output {path}: not a regular file (the output replaces it); give a file path, "
            "or leave --output out to print the targets"
        )
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"--output {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--output {path}: directory {parent} is not writable by this user")
