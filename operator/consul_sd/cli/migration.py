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

from consul_sd.api.durations import parse_duration
from consul_sd.api.names import GROUP, KIND, VERSION
from consul_sd.api.spec import MAX_DISCOVERY_NAME, MIN_REFRESH_INTERVAL
from consul_sd.cli.arguments import UsageError

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
            if value is None and key != "allow_stale":
                continue  # Go's zero value: the field's default (allow_stale's is true)
            section, target = _COPIED[key]
            (spec[section] if section else spec)[target] = _as_prometheus_reads(key, value)
        elif key in ("token", "authorization", "basic_auth", "tls_config"):
            _credential(converted, key=key, value=value, where=f"{where}.{key}")
        else:
            converted.notes.append(f"unsupported: {where}.{key}")
    _server_scheme(spec["consul"], converted, where=f"{where}.server")
    _refresh_floor(spec, converted, where=f"{where}.refresh_interval")
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


def _as_prometheus_reads(key: str, value: Any) -> Any:
    """``value`` as Prometheus decodes it (Go yaml.v2 into a typed field): a null bool is
    false, a scalar in a string field its text (``rack: 1`` is ``"1"``). Anything else is kept
    for the spec's validation to name."""
    if key == "allow_stale":
        return bool(value) if value is None else value
    if key == "path_prefix" and isinstance(value, str) and value and value[0] != "/":
        return f"/{value}"  # Go's URL puts the slash between host and path
    if key in ("services", "tags") and isinstance(value, list):
        return [_text(item) for item in value]
    if key == "node_meta" and isinstance(value, dict):
        return {_text(k): _text("" if v is None else v) for k, v in value.items()}
    return _text(value)


def _text(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, int | float) else value


def _server_scheme(consul: dict[str, Any], converted: Converted, *, where: str) -> None:
    """Consul's Go client takes ``http://`` or ``https://`` before the address (https wins over
    ``scheme``); the spec wants them apart."""
    server = consul["server"]
    scheme, sep, address = server.partition("://") if isinstance(server, str) else ("", "", "")
    if not sep:
        return
    if scheme not in ("http", "https"):
        converted.notes.append(f"unsupported: {where} {scheme}:// (only http and https)")
        return
    consul["server"] = address
    if scheme == "https":
        consul["scheme"] = "https"


def _refresh_floor(spec: dict[str, Any], converted: Converted, *, where: str) -> None:
    """Prometheus takes any refresh_interval; below the spec's 1s minimum it becomes 1s."""
    try:
        seconds = parse_duration(spec.get("refreshInterval", "30s"))
    except (TypeError, ValueError):
        return  # not a duration: the spec's validation names it
    if seconds < MIN_REFRESH_INTERVAL:
        converted.notes.append(f"{where}: {spec['refreshInterval']} raised to 1s (the minimum)")
        spec["refreshInterval"] = "1s"


def _flag(value: Any, *, where: str) -> str:
    """A setting that becomes a discover flag: a scalar (as Prometheus reads a string field)."""
    if isinstance(value, list | dict) or value is None:
        raise UsageError(f"{where}: not a string")
    return str(_text(value))


def _credential(converted: Converted, *, key: str, value: Any, where: str) -> None:
    if value is None or value == "":  # none given (Go's zero value)
        return
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
            f"unsupported: {where}.type {_text(kind)!r:.40} "
            "(only Bearer credentials are a Consul token)"
        )
    elif "credentials_file" in value:
        converted.flags += [
            "--token-file",
            _flag(value["credentials_file"], where=f"{where}.credentials_file"),
        ]
    if "credentials" in value:
        converted.notes.append(f"{where}.credentials: not copied (a secret); use a file")
    for other in sorted(map(str, set(value) - {"type", "credentials", "credentials_file"})):
        converted.notes.append(f"unsupported: {where}.{other}")


def _basic_auth(converted: Converted, value: dict[str, Any], *, where: str) -> None:
    if "username" in value:
        converted.flags += [
            "--basic-auth-user",
            _flag(value["username"], where=f"{where}.username"),
        ]
    if "password_file" in value:
        converted.flags += [
            "--basic-auth-password-file",
            _flag(value["password_file"], where=f"{where}.password_file"),
        ]
    if "password" in value:
        converted.notes.append(
            f"{where}.password: not copied (a secret); use --basic-auth-password-file"
        )
    for other in sorted(map(str, set(value) - {"username", "password", "password_file"})):
        converted.notes.append(f"unsupported: {where}.{other}")


def _tls(converted: Converted, value: dict[str, Any], *, where: str) -> None:
    for key, setting in value.items():
        if key in _TLS_FLAGS:
            converted.flags += [_TLS_FLAGS[key], _flag(setting, where=f"{where}.{key}")]
        elif key == "server_name":
            converted.flags += ["--server-name", _flag(setting, where=f"{where}.{key}")]
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


def without_secrets(
    value: Any, *, where: str, notes: list[str], parent: str = "", memo: dict[tuple[int, str], Any]
) -> Any:
    """A copy of ``value`` (part of a scrape job, at ``where``; ``parent`` its key) with every
    inline secret replaced by a placeholder, each named in ``notes``; ``*_file`` forms kept.
    ``memo`` (copies by ``id`` and ``parent``, which decides what a secret is) keeps a YAML
    alias one shared copy: nested aliases (a "billion laughs" file) would otherwise be copied
    out exponentially. A shared secret is named once, at its first place."""
    if not isinstance(value, list | dict):
        return value
    if (id(value), parent) in memo:
        return memo[id(value), parent]
    if isinstance(value, list):
        copied_list: list[Any] = []
        memo[id(value), parent] = copied_list
        copied_list.extend(
            without_secrets(item, where=f"{where}[{i}]", notes=notes, parent=parent, memo=memo)
            for i, item in enumerate(value)
        )
        return copied_list
    copied: dict[Any, Any] = {}
    memo[id(value), parent] = copied
    for key, item in value.items():
        at = f"{where}.{key}" if where else str(key)
        file_form = _SECRETS.get(key) if key != "key" or parent != "tls_config" else "key_file"
        if file_form is not None and item not in (None, ""):
            copied[key] = _placeholder(file_form, where=at, notes=notes)
        elif key in ("http_headers", "proxy_connect_header") and isinstance(item, dict):
            copied[key] = _headers(item, where=at, notes=notes, connect=key != "http_headers")
        elif _is_url(key) and isinstance(item, str):
            copied[key] = _url_without_password(item, where=at, notes=notes)
        elif _is_url(key) and isinstance(item, list):  # marathon_sd_configs' servers
            copied[key] = [
                _url_without_password(url, where=f"{at}[{i}]", notes=notes)
                if isinstance(url, str)
                else url
                for i, url in enumerate(item)
            ]
        else:
            copied[key] = without_secrets(item, where=at, notes=notes, parent=str(key), memo=memo)
    return copied


def _is_url(key: Any) -> bool:
    """A key whose value is a URL (``proxy_url``, ``token_url``, ``url``) or URLs (the
    ``server``/``servers`` of nomad, eureka, marathon, uyuni, kuma... SD configs)."""
    return str(key).endswith("url") or key in ("server", "servers")


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
