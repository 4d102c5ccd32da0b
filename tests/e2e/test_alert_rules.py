"""The chart's alerts under promtool: each fires when it should, and only then (issue 17).

promtool, built from Prometheus's own module pin (hack/bins), checks the rules the chart renders
with its default values, then evaluates each alert in virtual time against synthetic series
(``promtool test rules``): its threshold and ``for``, the labels it is routed by, its summary,
and that one ConsulDiscovery scraped twice (two operator pods during a rollout, or a job that
scrapes the metrics Service and the pod) still gives one alert, not an evaluation error.

Limits: promtool compares annotations exactly, so the alerts keep only their summary here; the
description and the runbook link are checked by tests/chart. The live counterpart (the
degraded alert firing on a real operator's metrics) is tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.rendering import manifests, one
from tests.support.components import binary

pytestmark = pytest.mark.e2e

JOB = "consul-sd-operator-metrics"  # the metrics Service's name, for the default release
CR = 'namespace="team",name="web"'
OTHER = 'namespace="team",name="ok"'
SCRAPES = ('job="consul-sd-operator-metrics",instance="pod-a"', 'job="x",instance="pod-b"')


def rules_file(tmp_path: Path) -> Path:
    """The chart's rules with its default values, each alert's annotations cut to the summary."""
    spec = one(manifests({"prometheusRule": {"enabled": True}}), "PrometheusRule")["spec"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("promtool")), *args], capture_output=True, text=True, timeout=120, check=False
    )


def twice(series: str, values: str) -> list[dict[str, str]]:
    """One series as two scrapes of it give it: the same CR labels, another job and instance."""
    return [{"series": series.replace("}", f",{scrape}}}"), "values": values} for scrape in SCRAPES]


def alert(labels: dict[str, str], summary: str) -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": {"summary": summary}}


def assert_alerts(
    tmp_path: Path,
    *,
    series: list[dict[str, str]],
    name: str,
    quiet_at: str,
    firing_at: str,
    expected: list[dict[str, Any]],
) -> None:
    """``name`` is not firing at ``quiet_at`` and fires exactly ``expected`` at ``firing_at``."""
    tests = {
        "rule_files": [str(rules_file(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": quiet_at, "alertname": name, "exp_alerts": []},
                    {"eval_time": firing_at, "alertname": name, "exp_alerts": expected},
                ],
            }
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_charts_rules(tmp_path: Path) -> None:
    spec = one(manifests({"prometheusRule": {"enabled": True}}), "PrometheusRule")["spec"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout, result.stdout


def test_a_cr_degraded_for_ten_minutes_fires_once_with_its_reason(tmp_path: Path) -> None:
    assert_alerts(
        tmp_path,
        series=[
            *twice(f'consul_sd_degraded{{{CR},reason="ConsulUnreachable"}}', "1x15"),
            *twice(f'consul_sd_degraded{{{CR},reason="ACLDenied"}}', "0x15"),
            *twice(f'consul_sd_degraded{{{OTHER},reason="ConsulUnreachable"}}', "0x15"),
        ],
        name="ConsulSDDegraded",
        quiet_at="9m",
        firing_at="11m",
        expected=[
            alert(
                {
                    "severity": "warning",
                    "namespace": "team",
                    "name": "web",
                    "reason": "ConsulUnreachable",
                },
                "ConsulDiscovery team/web is degraded (ConsulUnreachable).",
            )
        ],
    )


def test_targets_older_than_five_intervals_for_five_minutes_are_stale(tmp_path: Path) -> None:
    # web's targets age a minute a minute (nothing confirms them): 150 s (5 x 30 s) is passed
    # at 3m, so the alert fires from 8m. ok's stay 10 s old.
    assert_alerts(
        tmp_path,
        series=[
            *twice(f"consul_sd_targets_age_seconds{{{CR}}}", "0+60x15"),
            *twice(f"consul_sd_sync_interval_seconds{{{CR}}}", "30x15"),
            *twice(f"consul_sd_targets_age_seconds{{{OTHER}}}", "10x15"),
            *twice(f"consul_sd_sync_interval_seconds{{{OTHER}}}", "30x15"),
        ],
        name="ConsulSDTargetsStale",
        quiet_at="7m",
        firing_at="9m",
        expected=[
            alert(
                {"severity": "warning", "namespace": "team", "name": "web"},
                "The targets of ConsulDiscovery team/web are stale.",
            )
        ],
    )


def test_outputs_above_eighty_percent_of_their_limit_for_fifteen_minutes(tmp_path: Path) -> None:
    assert_alerts(
        tmp_path,
        series=[
            *twice(f'consul_sd_output_bytes{{{CR},kind="ConfigMap"}}', "850x20"),
            *twice(f'consul_sd_output_limit_bytes{{{CR},kind="ConfigMap"}}', "1000x20"),
            *twice(f'consul_sd_output_bytes{{{CR},kind="ScrapeConfig"}}', "500x20"),
            *twice(f'consul_sd_output_limit_bytes{{{CR},kind="ScrapeConfig"}}', "1000x20"),
        ],
        name="ConsulSDOutputNearLimit",
        quiet_at="14m",
        firing_at="16m",
        expected=[
            alert(
                {"severity": "warning", "namespace": "team", "name": "web", "kind": "ConfigMap"},
                "The ConfigMap outputs of ConsulDiscovery team/web are near their size limit.",
            )
        ],
    )


def test_services_failing_for_fifteen_minutes(tmp_path: Path) -> None:
    assert_alerts(
        tmp_path,
        series=[
            *twice(f"consul_sd_failed_services{{{CR}}}", "3x20"),
            *twice(f"consul_sd_failed_services{{{OTHER}}}", "0x20"),
        ],
        name="ConsulSDServicesFailing",
        quiet_at="14m",
        firing_at="16m",
        expected=[
            alert(
                {"severity": "warning", "namespace": "team", "name": "web"},
                "ConsulDiscovery team/web has services failing.",
            )
        ],
    )


@pytest.mark.parametrize(
    "series",
    [
        [{"series": f'up{{job="{JOB}",instance="pod-a"}}', "values": "0x10"}],
        [{"series": 'up{job="another",instance="pod-a"}', "values": "1x10"}],  # never scraped
    ],
    ids=["scrapes-fail", "never-scraped"],
)
def test_the_operator_down_for_five_minutes_fires(
    tmp_path: Path, series: list[dict[str, str]]
) -> None:
    assert_alerts(
        tmp_path,
        series=series,
        name="ConsulSDOperatorDown",
        quiet_at="4m",
        firing_at="6m",
        expected=[
            # absent() of a comparison keeps no label of the selector: the alert says no job.
            alert({"severity": "critical"}, "The consul-sd operator is down.")
        ],
    )


def test_the_operator_up_is_not_down(tmp_path: Path) -> None:
    up = [{"series": f'up{{job="{JOB}",instance="pod-a"}}', "values": "1x10"}]
    assert_alerts(
        tmp_path, series=up, name="ConsulSDOperatorDown", quiet_at="4m", firing_at="6m", expected=[]
    )
