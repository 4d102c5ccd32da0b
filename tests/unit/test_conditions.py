"""The condition rule, as a table: what happened in, Ready/Degraded/Progressing out, no I/O."""

from __future__ import annotations

import pytest

from consul_sd.api.status import Condition, Problem
from consul_sd.controller.conditions import MAX_MESSAGE, update_conditions

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
OUTAGE = Problem("ConsulUnreachable", "connection refused")
HOLDING = "30 targets from 10 services written to 1 ConfigMap objects"


def brief(conditions: list[Condition]) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in conditions}


@pytest.mark.parametrize(
    ("problem", "written", "expected"),
    [
        pytest.param(
            None,
            None,
            {
                "Ready": ("False", "FirstSyncPending", "waiting for the first complete discovery"),
                "Degraded": ("False", "Healthy", ""),
                "Progressing": (
                    "True",
                    "FirstSyncPending",
                    "waiting for the first complete discovery",
                ),
            },
            id="nothing written yet, nothing wrong",
        ),
        pytest.param(
            OUTAGE,
            None,
            {
                "Ready": ("False", "ConsulUnreachable", "connection refused"),
                "Degraded": ("True", "ConsulUnreachable", "connection refused"),
                "Progressing": ("True", "FirstSyncPending", "connection refused"),
            },
            id="nothing written yet, a problem",
        ),
        pytest.param(
            None,
            HOLDING,
            {
                "Ready": ("True", "Synced", HOLDING),
                "Degraded": ("False", "Healthy", ""),
                "Progressing": ("False", "Synced", ""),
            },
            id="written, nothing wrong",
        ),
        pytest.param(
            OUTAGE,
            HOLDING,
            {
                "Ready": ("True", "Synced", HOLDING),
                "Degraded": ("True", "ConsulUnreachable", "connection refused"),
                "Progressing": ("False", "Synced", ""),
            },
            id="written, then a problem: the outputs still hold it",
        ),
    ],
)
def test_the_conditions_say_what_happened(
    problem: Problem | None, written: str | None, expected: dict[str, tuple[str, str, str]]
) -> None:
    conditions = update_conditions([], generation=4, problem=problem, written=written, now=T0)
    assert [c.type for c in conditions] == ["Ready", "Degraded", "Progressing"]
    assert brief(conditions) == expected
    assert {(c.observed_generation, c.last_transition_time) for c in conditions} == {(4, T0)}


def test_a_transition_time_moves_only_when_its_status_changes() -> None:
    synced = update_conditions([], generation=1, problem=None, written=HOLDING, now=T0)
    degraded = update_conditions(synced, generation=1, problem=OUTAGE, written=HOLDING, now=T1)
    times = {c.type: c.last_transition_time for c in degraded}
    assert times == {"Ready": T0, "Degraded": T1, "Progressing": T0}


def test_a_new_reason_with_the_same_status_keeps_the_transition_time() -> None:
    failing = update_conditions([], generation=1, problem=OUTAGE, written=None, now=T0)
    other = Problem("ACLDenied", "token lacks service:read")
    later = update_conditions(failing, generation=1, problem=other, written=None, now=T1)
    ready = next(c for c in later if c.type == "Ready")
    assert (ready.reason, ready.last_transition_time) == ("ACLDenied", T0)


def test_a_long_message_is_cut() -> None:
    long = Problem("InvalidSpec", "x" * (3 * MAX_MESSAGE))
    conditions = update_conditions([], generation=1, problem=long, written=None, now=T0)
    assert {len(c.message) for c in conditions} == {MAX_MESSAGE}
