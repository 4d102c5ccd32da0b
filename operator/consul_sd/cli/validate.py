"""``consul-sd validate FILE...``: ConsulDiscovery YAML checked offline, one line per problem.

Every ConsulDiscovery document of every file is checked as the cluster and the operator would:
``apiVersion``, ``metadata.name`` (an object name, short enough to be a label value), and the
spec through the same model the CRD schema is generated from, with the operator's own rules
(an output is required). Documents of other kinds are skipped (examples keep Secrets beside
their CRs). Each problem is printed as ``FILE[DOCUMENT]: problem`` (documents count from 0, as
``yq`` does); the exit code is 1 on any problem, 0 otherwise. No cluster and no Consul are
contacted.
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
from consul_sd.cli.specfile import friendly_problem, read_documents

logger = logging.getLogger("consul_sd")
API_VERSION = f"{GROUP}/{VERSION}"


def document_problems(document: Any) -> list[str]:
    """The problems of one ConsulDiscovery document (a mapping with its kind already checked)."""
    problems = []
    if document.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: {document.get('apiVersion')!r}, expected {API_VERSION}")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        problems.append("metadata.name: required")
    else:
        if not re.match(OBJECT_NAME_PATTERN, name):
            problems.append(f"metadata.name: {name!r} is not a Kubernetes object name")
        if too_long := validate_discovery_name(name):
            problems.append(too_long)
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


def file_problems(path: Path) -> tuple[list[str], int]:
    """``FILE[N]: problem`` lines for ``path``, and how many ConsulDiscovery it holds."""
    try:
        documents = read_documents(path, keep_empty=True)
    except UsageError as exc:
        return [str(exc)], 0
    lines, found = [], 0
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            lines.append(f"{path}[{index}]: not a YAML mapping")
            continue
        if document.get("kind") != KIND:
            continue
        found += 1
        lines.extend(f"{path}[{index}]: {problem}" for problem in document_problems(document))
    return lines, found


def run(args: argparse.Namespace) -> int:
    problems: list[str] = []
    checked = 0
    for path in args.files:
        lines, found = file_problems(path)
        problems.extend(lines)
        checked += found
        if found == 0 and not lines:
            problems.append(f"{path}: no ConsulDiscovery in the file")
    for line in problems:
        print(line, file=sys.stdout)
    logger.info("%d ConsulDiscovery checked, %d problems", checked, len(problems))
    return 1 if problems else 0
