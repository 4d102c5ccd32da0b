"""``consul-sd validate FILE...``: ConsulDiscovery YAML checked offline, one line per problem.

Every ConsulDiscovery document of every file is checked as the cluster and the operator would:
``apiVersion``, ``metadata.name`` (an object name, short enough to be a label value), and the
spec through the same model the CRD schema is generated from, with the operator's own rules
(an output is required). Documents of other kinds are skipped (examples keep Secrets beside
their CRs). Each problem is printed as ``FILE[DOCUMENT]: problem`` (documents count from 0, as
``yq`` does), a YAML error at the document it breaks (the ones before it still checked), and
two ConsulDiscovery of one name in one namespace across all the files (applied together, the
second would replace the first). The exit code is 1 on any problem, 0 otherwise. No cluster
and no Consul are contacted.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from consul_sd.api.names import GROUP, KIND, VERSION
from consul_sd.api.spec import (
    OBJECT_NAME_PATTERN,
    SpecError,
    parse_spec,
    validate_discovery_name,
)
from consul_sd.cli.arguments import UsageError
from consul_sd.cli.specfile import friendly_problem, iter_documents

logger = logging.getLogger("consul_sd")
API_VERSION = f"{GROUP}/{VERSION}"
_TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}
# A namespace is a DNS-1123 label (at most 63 characters).
_NAMESPACE_PATTERN = r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def document_problems(document: Any) -> list[str]:
    """The problems of one ConsulDiscovery document (a mapping with its kind already checked)."""
    problems = []
    if document.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: {document.get('apiVersion')!r}, expected {API_VERSION}")
    for unknown in sorted(map(str, set(document) - _TOP_LEVEL)):
        problems.append(f"{unknown}: unknown field")  # kubectl's strict field validation
    problems += _metadata_problems(document.get("metadata"))
    spec = document.get("spec")
    if not isinstance(spec, dict):
        problems.append("spec: required, a mapping")
        return problems
    if spec.get("output") is None:  # the operator's rule, said even when the model fails too
        problems.append("spec.output: required (configMap, scrapeConfig or httpSD)")
    try:
        parse_spec(spec)
    except SpecError as exc:
        problems.extend(map(friendly_problem, exc.problems))
    return problems


def _metadata_problems(metadata: Any) -> list[str]:
    if not isinstance(metadata, dict):
        return ["metadata.name: required"]
    problems, name = [], metadata.get("name")
    if not isinstance(name, str) or not name:
        problems.append("metadata.name: required")
    else:
        if not re.match(OBJECT_NAME_PATTERN, name):
            problems.append(f"metadata.name: {name!r} is not a Kubernetes object name")
        if too_long := validate_discovery_name(name):
            problems.append(too_long)
    namespace = metadata.get("namespace")
    if namespace is not None and not (
        isinstance(namespace, str) and re.match(_NAMESPACE_PATTERN, namespace)
    ):
        problems.append(f"metadata.namespace: {str(namespace)[:70]!r} is not a namespace name")
    return problems


def _objects(document: dict[str, Any]) -> list[tuple[str, Any]]:
    """The ConsulDiscovery in ``document`` with the prefix naming each: the document itself, or
    the items of a ``List`` (``kubectl apply`` applies each; ``items[N].`` then)."""
    if document.get("kind") == KIND:
        return [("", document)]
    items = document.get("items")
    if str(document.get("kind")).endswith("List") and isinstance(items, list):
        return [
            (f"items[{i}].", item)
            for i, item in enumerate(items)
            if isinstance(item, dict) and item.get("kind") == KIND
        ]
    return []


def file_problems(path: Path, *, seen: dict[tuple[str | None, str], str]) -> tuple[list[str], int]:
    """``FILE[N]: problem`` lines for ``path``, and how many ConsulDiscovery it holds. ``seen``
    (shared by the files of one run) maps (namespace, name) to the first ``FILE[N]`` using it:
    a second object of that name would replace the first when both are applied."""
    lines, found = [], 0
    try:
        for index, document in iter_documents(path):
            if document is None:
                continue
            if not isinstance(document, dict):
                lines.append(f"{path}[{index}]: not a YAML mapping")
                continue
            for prefix, discovery in _objects(document):
                found += 1
                where = f"{path}[{index}]"
                problems = document_problems(discovery)
                at = f"{where} {prefix[:-1]}" if prefix else where
                problems.append(_duplicate(discovery, where=at, seen=seen))
                lines.extend(f"{where}: {prefix}{problem}" for problem in problems if problem)
    except UsageError as exc:  # the documents before the broken one were checked above
        lines.append(str(exc))
    return lines, found


def _duplicate(
    document: dict[str, Any], *, where: str, seen: dict[tuple[str | None, str], str]
) -> str:
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return ""  # document_problems said so
    namespace = metadata.get("namespace")
    key = (namespace if isinstance(namespace, str) else None, metadata["name"])
    first = seen.setdefault(key, where)
    if first == where:  # the first, or the same file named twice: one object
        return ""
    in_namespace = f" in namespace {key[0]}" if key[0] else ""
    return f"metadata.name: {key[1]!r}{in_namespace} is already the name of {first}"


def run(args: argparse.Namespace) -> int:
    problems: list[str] = []
    checked = 0
    seen: dict[tuple[str | None, str], str] = {}
    for path in args.files:
        lines, found = file_problems(path, seen=seen)
        problems.extend(lines)
        checked += found
        if found == 0 and not lines:
            problems.append(f"{path}: no ConsulDiscovery in the file")
    for line in problems:
        print(line, file=sys.stdout)
    logger.info("%d ConsulDiscovery checked, %d problems", checked, len(problems))
    return 1 if problems else 0
