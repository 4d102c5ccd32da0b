"""Prometheus ``consul_sd_configs`` as ConsulDiscovery objects and file_sd/http_sd jobs.

Pure: a parsed prometheus.yml in, documents and comments out. Every ``consul_sd_configs`` entry
becomes one ConsulDiscovery (named ``<job>-<i>``, plus ``-2``, ``-3``... when two jobs give one
name), the fields Prometheus and the spec share copied over; the job itself is kept whole
(relabelings, scrape settings, other service discovery) with its ``consul_sd_configs`` replaced
by ``file_sd_configs`` on the files ``consul-sd discover`` writes (``--for cli``) or the
operator's ConfigMaps mount (``--for operator``), or by ``http_sd_configs`` on
``consul-sd discover --listen`` (``http_sd``). Credentials are never
copied (they would land in a file or a terminal): an inline token or password is named in a
comment that says where it goes instead, and credential *files* become the CLI's flags. The
kept job's inline secrets (basic_auth.password, authorization.credentials, oauth2.client_secret,
bearer_token, tls_config.key, header secrets, a proxy URL's password, SD credentials) become
placeholders, each named in a comment; their ``*_file`` forms are kept. Every field with no
counterpart is named in a comment, so nothing is dropped silently. Limits: secrets are found by
Prometheus's field names, not by their values.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from consul_sd.api.names import GROUP, KIND, VERSION
from consul_sd.api.spec import MAX_DISCOVERY_NAME

# Prometheus consul_sd field -> (spec section, spec field); section "" is the spec itself.
_COPIED = {
    "server": ("consul", "server"),
    "scheme": ("consul", "scheme"),
    "path_prefix": ("consul", "pathPrefix"),
    "datacenter": ("consul", "datacenter"),
    "namespace": ("consul", "namespace"),
    "partition": ("consul", "partition"),
    "allow_stale": ("consul", "allowStale"),
    "services": ("selector", "services"),
    "tags": ("selector", "tags"),
    "node_meta": ("selector", "nodeMeta"),
    "filter": ("selector", "filter"),
    "health_filter": ("selector", "healthFilter"),
    "tag_separator": ("", "tagSeparator"),
    "refresh_interval": ("", "refreshInterval"),
}
# TLS file fields -> the discover flag that reads them.
_TLS_FLAGS = {"ca_file": "--ca-file", "cert_file": "--cert-file", "key_file": "--key-file"}
# Inline secret fields of a Prometheus scrape job (HTTP client and SD configs) -> their file form
# ("" when Prometheus has none). ``key`` is one only inside ``tls_config``.
_SECRETS = {
    "password": "password_file",
    "credentials": "credentials_file",
    "client_secret": "client_secret_file",
    "bearer_token": "bearer_token_file",
    "auth_token": "auth_token_file",
    "secret_key": "",
    "application_credential_secret": "",
    "application_secret": "",
    "consumer_key": "",
}
# Prometheus's default server, which the spec requires spelled out.
PROMETHEUS_DEFAULT_SERVER = "localhost:8500"


@dataclass
class Converted:
    """One consul_sd_configs entry: its ConsulDiscovery, the discover flags, the notes."""

    name: str
    document: dict[str, Any]
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """Where the replacement jobs read targets: ``kind`` file_sd (cli/operator) or http_sd."""

    kind: str = "cli"
    file_sd_dir: str = "/etc/prometheus/consul-sd"
    http_sd: str = "127.0.0.1:9100"


def object_name(job: str, index: int) -> str:
    """A Kubernetes object name for the ``index``-th consul_sd_configs entry of ``job``."""
    base = re.sub(r"[^a-z0-9-]+", "-", job.lower()).strip("-") or "job"
    return f"{base[:50].rstrip('-')}-{index}"


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... if ``taken`` holds it (jobs ``web_a`` and ``web-a``
    both give ``web-a-0``: one object would replace the other, two jobs would read one file);
    the result is added to ``taken`` and stays a valid ConsulDiscovery name."""
    candidate, number = name, 1
    while candidate in taken:  # ends: each round tries a new suffix, ``taken`` is finite
        number += 1
        suffix = f"-{number}"
        candidate = name[: MAX_DISCOVERY_NAME - len(suffix)].rstrip("-") + suffix
    taken.add(candidate)
    return candidate


def convert_sd_config(name: str, sd: dict[str, Any], *, where: str) -> Converted:
    """The ConsulDiscovery for one consul_sd_configs entry (``where`` names it in notes)."""
    spec: dict[str, Any] = {"consul": {"server": PROMETHEUS_DEFAULT_SERVER}, "selector": {}}
    converted = Converted(name, {})
    for key, value in sd.items():
        if key in _COPIED:
            section, target = _COPIED[key]
            (spec[section] if section else spec)[target] = value
        elif key in ("token", "authorization", "basic_auth", "tls_config"):
            _credential(converted, key=key, value=value, where=f"{where}.{key}")
        else:
            converted.notes.append(f"unsupported: {where}.{key}")
    if not spec["selector"]:
        del spec["selector"]
    spec["output"] = {"configMap": {"name": f"{name}-targets"}}  # the operator's; the CLI skips it
    converted.document = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": spec,
    }
    return converted


def _credential(converted: Converted, *, key: str, value: Any, where: str) -> None:
    if key == "token" or not isinstance(value, dict):  # an inline secret
        converted.notes.append(
            f"{where}: not copied (a secret); put it in a file for --token-file, "
            "or a Secret for spec.consul.tokenSecretRef"
        )
        return
    if key == "authorization":
        _authorization(converted, value, where=where)
    elif key == "basic_auth":
        _basic_auth(converted, value, where=where)
    else:
        _tls(converted, value, where=where)


def _authorization(converted: Converted, value: dict[str, Any], *, where: str) -> None:
    kind = value.get("type", "Bearer")
    if not (isinstance(kind, str) and kind.lower() == "bearer"):
        # Consul reads only a Bearer credential as its ACL token: anything else is not converted.
        converted.notes.append(
            f"unsupported: {where}.type {kind!r} (only Bearer credentials are a Consul token)"
        )
    elif "credentials_file" in value:
        converted.flags += ["--token-file", str(value["credentials_file"])]
    if "credentials" in value:
        converted.notes.append(f"{where}.credentials: not copied (a secret); use a file")
    for other in sorted(map(str, set(value) - {"type", "credentials", "credentials_file"})):
        converted.notes.append(f"unsupported: {where}.{other}")


def _basic_auth(converted: Converted, value: dict[str, Any], *, where: str) -> None:
    if "username" in value:
        converted.flags += ["--basic-auth-user", str(value["username"])]
    if "password_file" in value:
        converted.flags += ["--basic-auth-password-file", str(value["password_file"])]
    if "password" in value:
        converted.notes.append(
            f"{where}.password: not copied (a secret); use --basic-auth-password-file"
        )
    for other in sorted(map(str, set(value) - {"username", "password", "password_file"})):
        converted.notes.append(f"unsupported: {where}.{other}")


def _tls(converted: Converted, value: dict[str, Any], *, where: str) -> None:
    for key, setting in value.items():
        if key in _TLS_FLAGS:
            converted.flags += [_TLS_FLAGS[key], str(setting)]
        elif key == "server_name":
            converted.flags += ["--server-name", str(setting)]
        elif key == "insecure_skip_verify":
            if setting:
                converted.flags.append("--insecure-skip-verify")
        else:
            converted.notes.append(f"unsupported: {where}.{key}")


def replacement_job(
    job: dict[str, Any], names: list[str], *, target: Target, first_port: int
) -> dict[str, Any]:
    """``job`` with its consul_sd_configs replaced, every other setting kept in its order."""
    replaced: dict[str, Any] = {}
    for key, value in job.items():
        if key != "consul_sd_configs":
            replaced[key] = value
        elif target.kind == "http_sd":
            host = target.http_sd.rpartition(":")[0]
            replaced["http_sd_configs"] = [
                {"url": f"http://{host}:{first_port + i}/targets"} for i in range(len(names))
            ]
        else:
            replaced["file_sd_configs"] = [
                {"files": [file_sd_path(n, target=target)]} for n in names
            ]
    return replaced


def file_sd_path(name: str, *, target: Target) -> str:
    directory = target.file_sd_dir.rstrip("/")
    if target.kind == "operator":
        return f"{directory}/{name}-targets-*.json"  # every shard of the ConfigMap output
    return f"{directory}/{name}.json"


def without_secrets(value: Any, *, where: str, notes: list[str], parent: str = "") -> Any:
    """A copy of ``value`` (part of a scrape job, at ``where``; ``parent`` its key) with every
    inline secret replaced by a placeholder, each named in ``notes``; ``*_file`` forms kept."""
    if isinstance(value, list):
        return [
            without_secrets(item, where=f"{where}[{i}]", notes=notes, parent=parent)
            for i, item in enumerate(value)
        ]
    if not isinstance(value, dict):
        return value
    copied: dict[Any, Any] = {}
    for key, item in value.items():
        at = f"{where}.{key}" if where else str(key)
        file_form = _SECRETS.get(key) if key != "key" or parent != "tls_config" else "key_file"
        if file_form is not None and item not in (None, ""):
            copied[key] = _placeholder(file_form, where=at, notes=notes)
        elif key in ("http_headers", "proxy_connect_header") and isinstance(item, dict):
            copied[key] = _headers(item, where=at, notes=notes, connect=key != "http_headers")
        elif isinstance(item, str) and str(key).endswith("url"):
            copied[key] = _url_without_password(item, where=at, notes=notes)
        else:
            copied[key] = without_secrets(item, where=at, notes=notes, parent=str(key))
    return copied


def _placeholder(file_form: str, *, where: str, notes: list[str]) -> str:
    instead = f"use {file_form}" if file_form else "put it back by hand"
    notes.append(f"{where}: not copied (a secret); {instead}")
    return f"<secret not copied: {instead}>"


def _headers(headers: dict[Any, Any], *, where: str, notes: list[str], connect: bool) -> Any:
    """http_headers (a header's ``secrets`` are secrets, ``files`` their file form) or
    proxy_connect_header (every value a secret, with no file form)."""
    copied: dict[Any, Any] = {}
    for name, header in headers.items():
        at = f"{where}.{name}"
        if connect:
            copied[name] = _each_secret(header, file_form="", where=at, notes=notes)
        elif isinstance(header, dict) and "secrets" in header:
            secrets = _each_secret(
                header["secrets"], file_form="files", where=f"{at}.secrets", notes=notes
            )
            copied[name] = {**header, "secrets": secrets}
        else:
            copied[name] = header
    return copied


def _each_secret(value: Any, *, file_form: str, where: str, notes: list[str]) -> Any:
    if not isinstance(value, list):
        return _placeholder(file_form, where=where, notes=notes)
    return [_placeholder(file_form, where=f"{where}[{i}]", notes=notes) for i in range(len(value))]


def _url_without_password(url: str, *, where: str, notes: list[str]) -> str:
    """``url`` with the password of its user info (``user:pass@``) replaced as Go's
    ``URL.Redacted`` does, so that it stays a URL Prometheus accepts."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # Prometheus refuses it too; whole, unless it may hold a password
        return _placeholder("", where=where, notes=notes) if "@" in url else url
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (at and colon and password):
        return url
    notes.append(f"{where}: its password not copied (a secret); put it back by hand")
    return parts._replace(netloc=f"{user}:xxxxx@{host}").geturl()
