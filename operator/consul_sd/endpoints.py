"""A Consul endpoint and client from the spec plus credentials, for the CLI and the operator.

The two differ only in where credentials come from (files and flags for ``consul-sd discover``,
Secrets for the operator); everything else about building the endpoint, TLS included, and the
connection cap of the client that talks to it, is here, so both honour ``maxConcurrent`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consul_sd.api.spec import ConsulConfig
from consul_sd.consul.client import ConsulClient, RequestObserver
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.consul.tls import build_ssl_context
from consul_sd.discovery.tables import TABLE_WATCHES


@dataclass(frozen=True)
class Credentials:
    """Secret material resolved by the caller; excluded from repr so it never reaches a log."""

    token: str | None = field(default=None, repr=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)
    cert_pem: str | None = field(default=None, repr=False)
    key_pem: str | None = field(default=None, repr=False)
    insecure_skip_verify: bool = False
    server_name: str | None = None


def build_endpoint(consul: ConsulConfig, credentials: Credentials) -> ConsulEndpoint:
    """The endpoint for ``consul``; TLS whenever the scheme is https or TLS material is given."""
    tls = consul.tls
    ssl_context = None
    if consul.scheme == "https" or tls is not None or credentials.ca_pem or credentials.cert_pem:
        ssl_context = build_ssl_context(
            ca_pem=credentials.ca_pem,
            cert_pem=credentials.cert_pem,
            key_pem=credentials.key_pem,
            insecure_skip_verify=credentials.insecure_skip_verify
            or bool(tls and tls.insecure_skip_verify),
        )
    return ConsulEndpoint(
        server=consul.server,
        scheme=consul.scheme,
        path_prefix=consul.path_prefix,
        datacenter=consul.datacenter,
        namespace=consul.namespace,
        partition=consul.partition,
        allow_stale=consul.allow_stale,
        token=(credentials.token or "").strip() or None,
        basic_auth=credentials.basic_auth,
        ssl_context=ssl_context,
        server_name=credentials.server_name or (tls.server_name if tls else "") or None,
    )


def build_client(
    endpoint: ConsulEndpoint,
    *,
    max_concurrent: int,
    wake_on_change: bool,
    observer: RequestObserver | None = None,
) -> ConsulClient:
    """The client a discovery worker uses, with :func:`connection_cap` connections at most."""
    cap = connection_cap(max_concurrent=max_concurrent, wake_on_change=wake_on_change)
    return ConsulClient(endpoint=endpoint, max_connections=cap, observer=observer)


def connection_cap(*, max_concurrent: int, wake_on_change: bool) -> int:
    """The connections a discovery may hold: its ``maxConcurrent`` reads and its long-polls.

    Blocking's catalog long-poll holds one connection beside the service reads; Polling's table
    watches hold four (Auto may run either). Sized below that, parked long-polls would hold the
    connections the reads wait for.
    """
    return max_concurrent + (TABLE_WATCHES if wake_on_change else 1)
