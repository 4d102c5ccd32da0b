"""The one line ``consul-sd discover`` prints when Consul fails it, naming what to fix.

The engine's errors say what failed (``/v1/agent/self: HTTP 404: <html>...``); a user at a
terminal needs what to do: check the address (and which flag or variable sets it), the token,
or that the server is Consul at all. Pure text over the error and the endpoint.
"""

from __future__ import annotations

import re

from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.consul.errors import (
    ConsulACLDenied,
    ConsulDatacenterUnknown,
    ConsulError,
    ConsulUnreachable,
)
from consul_sd.discovery.snapshots import DiscoveryIncomplete

# aiohttp's connection errors name the TLS setting ("ssl:default", "ssl:None"), which on plain
# HTTP only suggests TLS is involved.
_SSL_NOTE = re.compile(r" ssl:\S+")


def describe_failure(error: Exception, *, endpoint: ConsulEndpoint) -> str:
    """One line for a failed ``--once`` (or a discovery that cannot start)."""
    cause: Exception = error
    prefix = ""
    if isinstance(error, DiscoveryIncomplete):
        snapshot = error.snapshot
        problem = snapshot.problem
        if problem is None:
            return str(error)
        cause = problem
        if snapshot.matched:
            missing = snapshot.matched - len(snapshot.groups)
            prefix = f"{missing} of {snapshot.matched} services not discovered: "
    return prefix + _describe_consul(cause, endpoint=endpoint)


def _describe_consul(error: Exception, *, endpoint: ConsulEndpoint) -> str:
    url = endpoint.base_url
    text = str(error)
    if endpoint.scheme == "http":
        text = _SSL_NOTE.sub("", text)
    if isinstance(error, ConsulUnreachable):
        if endpoint.scheme == "https" and "WRONG_VERSION_NUMBER" in text:
            return (
                f"cannot reach Consul at {url}: the server does not speak TLS there ({text}); "
                "use http:// (or --scheme http), or the HTTPS port"
            )
        return (
            f"cannot reach Consul at {url} ({text}); is it running there? "
            "Set the address with --server or CONSUL_HTTP_ADDR"
        )
    if isinstance(error, ConsulDatacenterUnknown):
        return (
            f"Consul at {url} does not know the datacenter ({text}); check --datacenter "
            "(or spec.consul.datacenter) against `consul catalog datacenters`"
        )
    if isinstance(error, ConsulACLDenied):
        return (
            f"Consul at {url} denied the request ({text}); check the token "
            "(--token-file, CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN) and its policy"
        )
    if isinstance(error, ConsulError) and error.status == 404:
        path = text.split(":", 1)[0]
        return (
            f"{url} does not look like Consul (HTTP 404 on {path}); "
            "check --server (or CONSUL_HTTP_ADDR) and --path-prefix"
        )
    reason = error.reason if isinstance(error, ConsulError) else type(error).__name__
    if isinstance(error, ConsulError) and error.status is not None and error.status >= 500:
        return f"Consul at {url}: {reason}: {text}; retry later, or check the Consul servers"
    return f"Consul at {url}: {reason}: {text}"


def nothing_matched(*, services: list[str], found: set[str]) -> str:
    """The warning for a discovery that matched no target, or missed a name: which names
    Consul does not have."""
    missing = [name for name in services if name not in found]
    if missing:
        return (
            f"{'' if found else 'no targets: '}Consul has no instance of {', '.join(missing)} "
            "(--services takes exact names; see `consul catalog services`)"
        )
    return "no targets: no service in Consul matched the selector (--services, --tags, --filter)"
