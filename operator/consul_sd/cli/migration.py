"""Prometheus ``consul_sd_configs`` as ConsulDiscovery objects and file_sd/http_sd jobs.

Pure: a parsed prometheus.yml in, documents and comments out. Every ``consul_sd_configs`` entry
becomes one ConsulDiscovery (named ``<job>-<i>``), the fields Prometheus and the spec share copied
over; the job itself is kept whole (relabelings, scrape settings, other service discovery) with
its ``consul_sd_configs`` replaced by ``file_sd_configs`` on the files ``consul-sd discover``
writes (``--for cli``) or the operator's ConfigMaps mount (``--for operator``), or by
``http_sd_configs`` on ``consul-sd discover --listen`` (``http_sd``). Credentials are never
copied (they would land in a file or a terminal): an inline token or password is named in a
comment that says where it goes instead, and credential *files* become the CLI's flags. Every
field with no counterpart is named in a comment, so nothing is dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from consul_sd.api.names import GROUP, KIND, VERSION

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
    if not isinstance(value, dict):  # token: an inline secret
        converted.notes.append(
            f"{where}: not copied (a secret); put it in a file for --token-file, "
            "or a Secret for spec.consul.tokenSecretRef"
        )
        return
    if key == "authorization":
        if "credentials_file" in value:
            converted.flags += ["--token-file", str(value["credentials_file"])]
        if "credentials" in value:
            converted.notes.append(f"{where}.credentials: not copied (a secret); use a file")
    elif key == "basic_auth":
        _basic_auth(converted, value, where=where)
    else:
        _tls(converted, value, where=where)


def _basic_auth(converted: Converted, value: dict[str, Any], *, where: str) -> None:
    if "username" in value:
        converted.flags += ["--basic-auth-user", str(value["username"])]
    if "password_file" in value:
        converted.flags += ["--basic-auth-password-file", str(value["password_file"])]
    if "password" in value:
        converted.notes.append(
            f"{where}.password: not copied (a secret); use --basic-auth-password-file"
        )
    for other in sorted(set(value) - {"username", "password", "password_file"}):
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
