"""docs/crd-reference.md stays what the model generates, and its hand-kept parts stay true."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tools.crd import spec_schema, status_schema
from tools.docs import (
    CROSS_FIELD_RULES,
    DOC_PATH,
    FALLBACK_DESCRIPTIONS,
    render_reference,
    write_reference,
)

from consul_sd.api.spec import SpecError, parse_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
VALID = {"consul": {"server": "consul:8500"}, "output": {"configMap": {"name": "x"}}}

# One spec breaking each cross-field rule, in CROSS_FIELD_RULES order.
VIOLATIONS: list[dict[str, Any]] = [
    {**VALID, "output": {}},
    {
        **VALID,
        "consul": {
            "server": "consul:8500",
            "tokenSecretRef": {"name": "t", "key": "k"},
            "basicAuthSecretRef": {"name": "b"},
        },
    },
    {
        **VALID,
        "consul": {"server": "consul:8500", "tls": {"certSecretRef": {"name": "c", "key": "k"}}},
    },
    {**VALID, "watchTimeout": "11m"},
    {**VALID, "watchTimeout": "500ms"},
    {**VALID, "refreshInterval": "0s"},
]


def test_the_committed_reference_is_what_the_model_generates() -> None:
    path = REPO_ROOT / DOC_PATH
    assert path.read_text() == render_reference(), "run: python -m tools.docs --write"


def test_write_reference_writes_the_page_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    assert write_reference(tmp_path).read_text() == render_reference()
    with pytest.raises(FileNotFoundError, match="repository root"):
        write_reference(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("rule", "spec"),
    list(zip(CROSS_FIELD_RULES, VIOLATIONS, strict=True)),
    ids=[r for _, r in CROSS_FIELD_RULES],
)
def test_each_documented_cross_field_rule_is_what_the_model_says(
    rule: tuple[str, str], spec: dict[str, Any]
) -> None:
    field, message = rule
    with pytest.raises(SpecError) as caught:
        parse_spec(spec, require_output=True)
    assert any(p.startswith(field) and message in p for p in caught.value.problems), caught.value


def _nodes(path: str, node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {path: node}
    for name, child in node.get("properties", {}).items():
        found.update(_nodes(f"{path}.{name}", child))
        items = child.get("items", {})
        if "properties" in items:
            for item_name, item in items["properties"].items():
                found.update(_nodes(f"{path}.{name}[].{item_name}", item))
    return found


def test_fallback_descriptions_name_real_fields_the_model_does_not_describe() -> None:
    nodes = {**_nodes("spec", spec_schema()), **_nodes("status", status_schema())}
    for path in FALLBACK_DESCRIPTIONS:
        assert path in nodes, f"{path}: no such field"
        assert not nodes[path].get("description"), f"{path}: the model describes it now"
    page = render_reference()
    for text in FALLBACK_DESCRIPTIONS.values():
        assert " ".join(text.split()) in page
