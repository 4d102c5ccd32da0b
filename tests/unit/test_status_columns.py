"""The status field behind ``kubectl get csd``'s Status column (issue 17)."""

from __future__ import annotations

from consul_sd.api.status import Problem
from consul_sd.controller.conditions import update_conditions
from consul_sd.controller.reporting import summary_reason

NOW = "2026-01-01T00:00:00Z"


def reason_after(*, problem: Problem | None, written: str | None) -> str | None:
    conditions = update_conditions([], generation=1, problem=problem, written=written, now=NOW)
    return summary_reason(conditions)


def test_a_problem_shows_its_reason_even_while_the_outputs_stay_ready() -> None:
    problem = Problem("ConsulUnreachable", "connection refused")
    assert reason_after(problem=problem, written="3 targets") == "ConsulUnreachable"
    assert reason_after(problem=problem, written=None) == "ConsulUnreachable"


def test_without_a_problem_it_says_how_far_along_the_cr_is() -> None:
    assert reason_after(problem=None, written=None) == "FirstSyncPending"
    assert reason_after(problem=None, written="3 targets") == "Synced"


def test_no_conditions_yet_no_reason() -> None:
    assert summary_reason([]) is None
