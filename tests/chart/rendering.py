"""The Helm chart rendered by the real Helm engine (helm-python-sdk: Helm v4's Go SDK, no binary).

Role: one place that loads ``deploy/helm/consul-sd-operator`` and turns ``helm template`` output
into parsed objects, for the offline chart tests (tests/chart) and the apiserver ones (tests/e2e).
Limits: rendering is offline (``lookup`` returns nothing); NOTES.txt is returned as text, never
parsed as YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

# helm-python-sdk ships Linux x86_64 only (see pyproject.toml): elsewhere every test module that
# renders the chart is skipped, with this reason.
HELM_MISSING = "helm-python-sdk is not installed (its wheels are Linux x86_64 only)"
pytest.importorskip("helm_python", reason=HELM_MISSING)
import helm_python as helm  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "deploy" / "helm" / "consul-sd-operator"
RELEASE = "consul-sd-operator"
RELEASE_NAMESPACE = "consul-sd"


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = RELEASE_NAMESPACE,
) -> dict[str, str]:
    """``helm template``: template path -> rendered text (empty files included)."""
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(
            dict(values) if values is not None else None,
            name=release,
            namespace=namespace,
            is_install=True,
        )


def manifests(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = RELEASE_NAMESPACE,
) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders, parsed, in template order."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render(values, release=release, namespace=namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
