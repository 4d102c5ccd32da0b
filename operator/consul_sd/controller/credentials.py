"""Consul credentials of one ConsulDiscovery, and its HTTP SD bearer token, from Secrets.

Each Secret key the spec names is read once per worker start (:func:`read_values`); the same
values give the endpoint (:func:`endpoint_from_values`, no I/O) and a fingerprint, and a later
read that gives another fingerprint is a rotation (the runner restarts the worker with the values
that read returned, handing it the targets it had). Values are validated before use, with a
message that names the Secret, the key and what is wrong, never a byte of the value: a token
must be a header-safe string, basic auth must encode as HTTP basic auth, TLS material must load.
The HTTP SD token (``spec.output.httpSD.authorization.secretRef``) is read, fingerprinted and
validated with them, like the Consul token: a rotation of it restarts the worker, whose start
hands the new token to the target store.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from consul_sd.api.spec import ConsulConfig, SecretKeyRef
from consul_sd.consul.endpoint import ConsulEndpoint, validate_basic_auth, validate_token
from consul_sd.consul.errors import ConsulCredentialError
from consul_sd.endpoints import Credentials, build_endpoint
from consul_sd.kube import SecretInvalid


class SecretReader(Protocol):
    """What reading credentials needs of :class:`consul_sd.kube.Kube`."""

    async def read_secret_value(self, *, namespace: str, name: str, key: str) -> str: ...


# Every Secret key the spec names and its value: ``{(secret, key): value}``.
SecretValues = dict[tuple[str, str], str]


@dataclass(frozen=True)
class ResolvedEndpoint:
    """The endpoint to discover with, and a digest of the Secret values that built it."""

    endpoint: ConsulEndpoint = field(repr=False)
    fingerprint: str
    # The bearer token HTTP SD clients must send, when the spec asks for one.
    http_sd_token: str | None = field(default=None, repr=False)


def _named_refs(consul: ConsulConfig) -> list[tuple[str, SecretKeyRef | None]]:
    tls = consul.tls
    return [
        ("token", consul.token_secret_ref),
        ("ca", tls.ca_secret_ref if tls else None),
        ("cert", tls.cert_secret_ref if tls else None),
        ("key", tls.key_secret_ref if tls else None),
    ]


def _basic_auth_keys(consul: ConsulConfig) -> list[tuple[str, str]]:
    ref = consul.basic_auth_secret_ref
    if ref is None:
        return []
    return [(ref.name, ref.username_key), (ref.name, ref.password_key)]


async def read_values(
    *,
    kube: SecretReader,
    namespace: str,
    consul: ConsulConfig,
    http_sd: SecretKeyRef | None = None,
) -> SecretValues:
    """Every Secret key the spec names, each read once: ``{(secret, key): value}``."""
    wanted = [(ref.name, ref.key) for _, ref in _named_refs(consul) if ref is not None]
    wanted += _basic_auth_keys(consul)
    if http_sd is not None:
        wanted.append((http_sd.name, http_sd.key))
    values: SecretValues = {}
    for name, key in wanted:
        if (name, key) not in values:
            values[(name, key)] = await kube.read_secret_value(
                namespace=namespace, name=name, key=key
            )
    return values


def fingerprint(values: SecretValues) -> str:
    """A digest of the values, to notice a rotation without keeping them around."""
    digest = hashlib.sha256()
    for (name, key), value in sorted(values.items()):
        digest.update(hashlib.sha256(f"{name}\0{key}\0{value}".encode()).digest())
    return digest.hexdigest()


async def resolve_endpoint(
    *,
    kube: SecretReader,
    namespace: str,
    consul: ConsulConfig,
    http_sd: SecretKeyRef | None = None,
) -> ResolvedEndpoint:
    """The Consul endpoint with validated credentials; :class:`SecretInvalid` names a bad one."""
    values = await read_values(kube=kube, namespace=namespace, consul=consul, http_sd=http_sd)
    return endpoint_from_values(values, namespace=namespace, consul=consul, http_sd=http_sd)


def http_sd_token(values: SecretValues, *, namespace: str, ref: SecretKeyRef | None) -> str | None:
    """The HTTP SD bearer token from ``values``, validated like a Consul token; None if unset."""
    if ref is None:
        return None
    raw = values[(ref.name, ref.key)]
    # A blank token would make every request without one match it after stripping.
    _check(lambda: validate_token(raw), where=_where(namespace, ref))
    return raw.strip()


def endpoint_from_values(
    values: SecretValues,
    *,
    namespace: str,
    consul: ConsulConfig,
    http_sd: SecretKeyRef | None = None,
) -> ResolvedEndpoint:
    """The endpoint from values :func:`read_values` returned, validated; no I/O."""
    served_token = http_sd_token(values, namespace=namespace, ref=http_sd)

    def value(ref: SecretKeyRef | None) -> str | None:
        return None if ref is None else values[(ref.name, ref.key)]

    refs = dict(_named_refs(consul))
    token = value(refs["token"])
    if token is not None:
        raw = token
        # A blank token would silently become the anonymous one.
        _check(lambda: validate_token(raw), where=_where(namespace, refs["token"]))
        token = raw.strip()
    basic_auth = None
    if consul.basic_auth_secret_ref is not None:
        user_key, password_key = _basic_auth_keys(consul)
        basic_auth = (values[user_key], values[password_key])
        pair = basic_auth
        _check(
            lambda: validate_basic_auth(*pair),
            where=f"Secret {namespace}/{consul.basic_auth_secret_ref.name} (basic auth)",
        )
    credentials = Credentials(
        token=token,
        basic_auth=basic_auth,
        ca_pem=value(refs["ca"]),
        cert_pem=value(refs["cert"]),
        key_pem=value(refs["key"]),
    )
    try:
        endpoint = build_endpoint(consul, credentials)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise SecretInvalid(_tls_problem(namespace, refs=refs, exc=exc)) from None
    return ResolvedEndpoint(
        endpoint=endpoint, fingerprint=fingerprint(values), http_sd_token=served_token
    )


def _where(namespace: str, ref: SecretKeyRef | None) -> str:
    assert ref is not None
    return f"Secret {namespace}/{ref.name} key {ref.key!r}"


def _check(validate: Callable[[], None], *, where: str) -> None:
    try:
        validate()
    except ConsulCredentialError as exc:
        raise SecretInvalid(f"{where}: {exc}") from None


def _tls_problem(
    namespace: str, *, refs: dict[str, SecretKeyRef | None], exc: BaseException
) -> str:
    # An SSLError's reason is a library code (e.g. NO_CERTIFICATE_OR_CRL_FOUND), never the
    # material; any other error's text may quote it, so only its type is named.
    detail = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
    named: Sequence[str] = [
        f"{ref.name}/{ref.key}" for what, ref in refs.items() if what != "token" and ref
    ]
    return (
        f"TLS material from Secret(s) {', '.join(named) or '(none)'} in {namespace} cannot be "
        f"loaded ({detail or type(exc).__name__}): expected PEM certificates and a PEM key"
    )
