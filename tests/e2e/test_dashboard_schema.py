"""The chart's Grafana dashboard against Grafana's own schema types (issue 17).

dashboard-lint (hack/bins/dashboard-lint, built like the other components) decodes a dashboard
strictly into grafana-foundation-sdk's types, generated from the schemas Grafana ships, then runs
the SDK's constraints: an unknown field, a wrong JSON type, a missing required field, an
out-of-range grid position or a panel type the SDK does not know fails, with one line per problem.
Both the file in the chart and the ConfigMap the chart renders from it are checked; mutated copies
prove the checker is strict, one mutation per kind of check.

Limits: the SDK's schema is not a running Grafana (no migration, no enum values, no check that a
data source, variable or unit exists, no PromQL parsing). Whether the panels' queries return data
on a real operator's metrics is tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.rendering import CHART_DIR, manifests, one
from tests.support.components import binary

pytestmark = pytest.mark.e2e

DASHBOARD_FILE = CHART_DIR / "files" / "dashboard.json"


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("dashboard-lint")), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def panel_count() -> int:
    return len(json.loads(DASHBOARD_FILE.read_text())["panels"])


def test_the_charts_dashboard_file_matches_grafanas_schema() -> None:
    result = lint(DASHBOARD_FILE)
    assert (result.returncode, result.stdout) == (0, f"ok: {panel_count()} panels\n"), result


def test_the_dashboard_the_chart_renders_matches_grafanas_schema(tmp_path: Path) -> None:
    configmap = one(manifests({"dashboard": {"enabled": True}}), "ConfigMap")
    (text,) = configmap["data"].values()
    rendered = tmp_path / "rendered.json"
    rendered.write_text(text)
    result = lint(rendered)
    assert (result.returncode, result.stdout) == (0, f"ok: {panel_count()} panels\n"), result


def unknown_top_level_field(board: dict[str, Any]) -> None:
    board["refreshInterval"] = "1m"


def grid_width_as_a_string(board: dict[str, Any]) -> None:
    board["panels"][2]["gridPos"]["w"] = "12"


def grid_wider_than_the_dashboard(board: dict[str, Any]) -> None:
    board["panels"][1]["gridPos"]["w"] = 30


def unknown_field_config_default(board: dict[str, Any]) -> None:
    board["panels"][1]["fieldConfig"]["defaults"]["units"] = "s"


def unknown_legend_option(board: dict[str, Any]) -> None:
    board["panels"][3]["options"]["legend"]["show"] = True


def unknown_prometheus_query_field(board: dict[str, Any]) -> None:
    board["panels"][0]["targets"][0]["query"] = "up"


def misspelt_panel_type(board: dict[str, Any]) -> None:
    board["panels"][4]["type"] = "timeserie"


MUTATIONS: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (unknown_top_level_field, "Dashboard: unexpected field 'refreshInterval'"),
    (grid_width_as_a_string, "panels[2].gridPos.w: json: cannot unmarshal string"),
    (grid_wider_than_the_dashboard, "panels[1].Panel.gridPos.w: must be <= 24"),
    (
        unknown_field_config_default,
        "panels[1].fieldConfig.defaults.FieldConfig: unexpected field 'units'",
    ),
    (unknown_legend_option, "panels[3].options.legend.VizLegendOptions: unexpected field 'show'"),
    (unknown_prometheus_query_field, "panels[0].targets[0].Dataquery: unexpected field 'query'"),
    (misspelt_panel_type, 'panels[4].type: "timeserie" is unknown to the SDK'),
]


@pytest.mark.parametrize(
    ("mutate", "problem"), [pytest.param(*case, id=case[0].__name__) for case in MUTATIONS]
)
def test_a_dashboard_off_the_schema_fails_with_one_line_naming_the_problem(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], problem: str
) -> None:
    board = json.loads(DASHBOARD_FILE.read_text())
    mutate(board)
    mutated = tmp_path / "mutated.json"
    mutated.write_text(json.dumps(board))
    result = lint(mutated)
    assert result.returncode == 1, result
    (line,) = result.stdout.splitlines()
    assert line.startswith(problem), result.stdout
