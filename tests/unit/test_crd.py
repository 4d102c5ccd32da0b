from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from tools.crd import CRD_FILE, build_crd, render_crd

CRD_PATH = Path(__file__).parents[2] / "deploy" / "crds" / CRD_FILE


def walk(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(walk(value))
    return found


def test_the_committed_crd_is_what_the_model_generates() -> None:
    assert CRD_PATH.read_text() == render_crd(), "run: python -m tools.crd > " + str(CRD_PATH)


def test_the_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in walk(schema):
        assert "$ref" not in node
        assert "anyOf" not in node
        assert "title" not in node
        assert not ("properties" in node and "additionalProperties" in node)
        if "properties" in node:
            assert node.get("type") == "object"


def test_schema_rules_reach_the_crd() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    properties = spec["properties"]
    assert properties["maxConcurrent"]["minimum"] == 1
    assert properties["mode"]["enum"] == ["Auto", "Polling", "Blocking"]
    assert properties["refreshInterval"]["pattern"].startswith("^(([0-9]+)y)?")
    assert "output" in spec["required"]
    assert properties["consul"]["required"] == ["server"]


def test_printer_columns_show_status_and_last_sync_and_wide_adds_failed_and_outputs() -> None:
    version = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]
    printed = version["additionalPrinterColumns"]
    columns = [c["name"] for c in printed if not c.get("priority")]
    wide = [c["name"] for c in printed if c.get("priority") == 1]
    assert columns == ["Mode", "Services", "Targets", "Ready", "Status", "Last Sync", "Age"]
    assert wide == ["Failed", "Outputs"]
    assert version["subresources"] == {"status": {}}
