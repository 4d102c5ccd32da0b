"""How to reach Consul and with which credentials, checked before any request.

:func:`validate_token` and :func:`validate_basic_auth` name the field and a position, never the
value; :func:`credential_headers` builds the only headers that carry credentials (the token in
``X-Consul-Token``, never in a URL) and :func:`credential_texts` every form in which an answer
could echo them, so the client can scrub error bodies.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from consul_sd.consul.errors import ConsulCredentialError


def validate_token(token: str) -> None:
    """Check an ACL token before it becomes the ``X-Consul-Token`` header.

    After stripping surrounding whitespace, the token must be non-empty visible ASCII (Consul
    tokens are UUIDs; a CR/LF would split the header). Positions count from 1 in the value as
    given, so a user can find the character without the message showing it.
    """
    stripped = token.strip()
    if not stripped:
        raise ConsulCredentialError("token is empty")
    offset = len(token) - len(token.lstrip())
    for i, char in enumerate(stripped):
        if not "!" <= char <= "~":
            raise ConsulCredentialError(
                f"token has a character outside visible ASCII (position {offset + i + 1})"
            )


def validate_basic_auth(username: str, password: str) -> None:
    """Check basic-auth credentials: Latin-1 without control characters, no ':' in the username.

    HTTP encodes ``username:password`` in Latin-1 (as aiohttp does), so anything else cannot be
    sent; checking here keeps encoding errors, whose arguments hold both values, from arising.
    """
    for field_name, value in (("username", username), ("password", password)):
        for i, char in enumerate(value):
            problem = _credential_char_problem(char)
            if problem is None and field_name == "username" and char == ":":
                problem = "a ':'"
            if problem is not None:
                raise ConsulCredentialError(
                    f"basic-auth {field_name} has {problem} (position {i + 1})"
                )


def _credential_char_problem(char: str) -> str | None:
    code = ord(char)
    if code > 0xFF:
        return "a character outside Latin-1"
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return "a control character"
    return None


@dataclass(frozen=True)
class ConsulEndpoint:
    """How to reach Consul. Credentials are excluded from repr so they never reach a log."""

    server: str
    scheme: str = "http"
    path_prefix: str = ""
    datacenter: str = ""
    namespace: str = ""
    partition: str = ""
    allow_stale: bool = True
    token: str | None = field(default=None, repr=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    server_name: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.server}{self.path_prefix.rstrip('/')}"


def credential_headers(endpoint: ConsulEndpoint) -> dict[str, str]:
    """Request headers with the endpoint's credentials, checked (:class:`ConsulCredentialError`)."""
    headers = {"Accept": "application/json"}
    if endpoint.token:
        validate_token(endpoint.token)
        headers["X-Consul-Token"] = endpoint.token.strip()
    if endpoint.basic_auth:
        username, password = endpoint.basic_auth
        validate_basic_auth(username, password)
        # Built here rather than by aiohttp.BasicAuth (deprecated): Latin-1, as RFC 7617 allows.
        pair = f"{username}:{password}".encode("latin-1")
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return headers


def credential_texts(endpoint: ConsulEndpoint, headers: Mapping[str, str]) -> list[str]:
    """Every form in which the endpoint's credentials could come back in an answer."""
    texts = [headers.get("X-Consul-Token", ""), headers.get("Authorization", "")]
    texts.append(headers.get("Authorization", "").removeprefix("Basic "))
    if endpoint.basic_auth:
        texts.extend(endpoint.basic_auth)
    return sorted({t for t in texts if len(t) >= 4}, key=len, reverse=True)
