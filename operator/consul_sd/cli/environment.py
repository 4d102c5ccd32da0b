"""Consul's conventions for ``consul-sd discover``: the CONSUL_* variables and addresses as URLs.

The consul CLI and consul-template read ``CONSUL_HTTP_ADDR`` (``host:port`` or a URL whose
scheme sets TLS), ``CONSUL_HTTP_SSL``, ``CONSUL_HTTP_TOKEN``, ``CONSUL_HTTP_TOKEN_FILE``,
``CONSUL_CACERT``, ``CONSUL_CLIENT_CERT``, ``CONSUL_CLIENT_KEY``, ``CONSUL_TLS_SERVER_NAME`` and
``CONSUL_HTTP_SSL_VERIFY``; so does this command. A flag always wins over its variable, and the
address and scheme of ``--spec`` win over the variables too (the file was named on the command
line). Every value keeps the name of where it came from, so an error names the flag or the
variable the user has to fix. Pure: the caller passes the environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from consul_sd.cli.arguments import DEFAULT_SERVER, UsageError

# Flag attribute -> the variable beneath it, for the settings that are files or plain strings.
_VARIABLES = {
    "ca_file": "CONSUL_CACERT",
    "cert_file": "CONSUL_CLIENT_CERT",
    "key_file": "CONSUL_CLIENT_KEY",
    "server_name": "CONSUL_TLS_SERVER_NAME",
}
_PATHS = {"ca_file", "cert_file", "key_file"}
# Go's strconv.ParseBool, which the consul CLI uses for its boolean variables.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True)
class Address:
    """A Consul address split into what the spec holds: scheme and prefix only if it said so."""

    server: str
    scheme: str | None = None
    path_prefix: str | None = None


def split_address(text: str, *, source: str) -> Address:
    """``host:port``, ``[v6]:port`` or ``http(s)://host:port[/prefix]``; :class:`UsageError` else.

    ``source`` names the flag or variable for the message.
    """
    scheme: str | None = None
    rest = text.strip()
    _refuse_secrets(rest, source=source)  # before any message that echoes the address
    if "://" in rest:
        scheme, _, rest = rest.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise UsageError(
                f"{source} {text!r}: scheme {scheme}:// is not supported: "
                "give host:port, http://host:port or https://host:port"
            )
    try:
        parts = urlsplit(f"//{rest}")
    except ValueError:  # a bracket not closed, or no IPv6 address inside: "[::1", "[zz]"
        raise UsageError(
            f"{source} {text!r}: not an address: an IPv6 address goes in brackets, as [::1]:8500"
        ) from None
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port in (-1, 0):
        raise UsageError(f"{source} {text!r}: the port must be a number from 1 to 65535")
    if any(char.isspace() for char in rest) or not parts.hostname or parts.fragment:
        raise UsageError(
            f"{source} {text!r}: not an address: give host:port, http://host:port "
            "or https://host:port"
        )
    prefix = parts.path.rstrip("/") or None
    return Address(server=parts.netloc, scheme=scheme, path_prefix=prefix)


def _refuse_secrets(text: str, *, source: str) -> None:
    """Refuse an address holding ``user:password@`` or a query (``?token=``), not echoing it."""
    if "@" in text:
        raise UsageError(
            f"{source}: credentials in the address are not supported (and not shown): use "
            "--basic-auth-user and --basic-auth-password-file, or a token file"
        )
    if "?" in text:
        raise UsageError(
            f"{source}: a query (?...) in the address is not supported (and not shown): give "
            "host:port or http(s)://host:port[/prefix], and the token in a token file"
        )


def parse_bool(value: str, *, source: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"{source}={value!r}: not a boolean (true or false)")


def environment_address(environ: Mapping[str, str]) -> tuple[Address, str] | None:
    """The address CONSUL_HTTP_ADDR (and CONSUL_HTTP_SSL) give, with the variable's name.

    CONSUL_HTTP_SSL alone applies to the default address, as for the consul CLI.
    """
    text = environ.get("CONSUL_HTTP_ADDR", "").strip()
    ssl = environ.get("CONSUL_HTTP_SSL", "").strip()
    if not text and not ssl:
        return None
    address = split_address(text or DEFAULT_SERVER, source="CONSUL_HTTP_ADDR")
    # As the consul CLI: CONSUL_HTTP_SSL=true means https even over an http:// address.
    if ssl and parse_bool(ssl, source="CONSUL_HTTP_SSL"):
        address = Address(server=address.server, scheme="https", path_prefix=address.path_prefix)
    return address, "CONSUL_HTTP_ADDR"


def apply_credential_environment(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> dict[str, str]:
    """Fill the credential and TLS flags not given from the CONSUL_* variables.

    Returns, for each attribute set from a variable, the variable's name (errors name it).
    """
    sources: dict[str, str] = {}
    if args.token is None and args.token_file is None:
        if environ.get("CONSUL_HTTP_TOKEN_FILE"):
            args.token_file = Path(environ["CONSUL_HTTP_TOKEN_FILE"])
            sources["token_file"] = "CONSUL_HTTP_TOKEN_FILE"
        elif environ.get("CONSUL_HTTP_TOKEN"):
            args.token = environ["CONSUL_HTTP_TOKEN"]
            sources["token"] = "CONSUL_HTTP_TOKEN"
    for attribute, variable in _VARIABLES.items():
        value = environ.get(variable, "")
        if getattr(args, attribute) is None and value:
            setattr(args, attribute, Path(value) if attribute in _PATHS else value)
            sources[attribute] = variable
    verify = environ.get("CONSUL_HTTP_SSL_VERIFY", "").strip()
    skip = bool(verify) and not parse_bool(verify, source="CONSUL_HTTP_SSL_VERIFY")
    if args.insecure_skip_verify is None and skip:
        args.insecure_skip_verify = True
        sources["insecure_skip_verify"] = "CONSUL_HTTP_SSL_VERIFY"
    return sources
