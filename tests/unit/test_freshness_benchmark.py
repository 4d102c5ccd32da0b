"""The freshness benchmark's bookkeeping (benchmarks/freshness.py), without Consul or a clock.

The plan must keep changes apart (no two touch one service, so none masks another) and be the
same for every system; the tracker must time a change from its write, count a target that
vanished while it still exists as a loss (and a deregistered one not), and leave out what a
later write made unseeable.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.freshness import (
    KINDS,
    RECOVERY,
    Fleet,
    Observation,
    Plan,
    Tracker,
    Write,
    build_plan,
    kind_stats,
)


def _plan(changes: int = 40, seed: int = 15) -> Plan:
    return build_plan(Fleet(300), changes=changes, rate=1.0, seed=seed, recover_after=30.0)


def _service(service_id: str) -> str:
    """svc-00012-1 and svc-00012-churn-4 -> svc-00012."""
    name, churn, _ = service_id.partition("-churn-")
    return name if churn else service_id.rpartition("-")[0]


def test_no_two_changes_watch_one_service_except_a_flip_and_its_recovery() -> None:
    plan = _plan()
    owners: dict[str, set[int]] = {}
    for change in plan.changes:
        for service_id in change.expect.ids:
            index = change.index - (change.kind == RECOVERY)
            owners.setdefault(_service(service_id), set()).add(index)
    assert all(len(indexes) == 1 for indexes in owners.values())
    assert {change.kind for change in plan.changes} == {*KINDS, RECOVERY}


def test_one_seed_gives_one_plan_and_another_seed_another() -> None:
    assert _plan().writes == _plan().writes
    assert _plan().writes != _plan(seed=16).writes


def _observation(at: float, view: dict[str, dict[str, str]]) -> Observation:
    return Observation(at, frozenset(view), view)


def _tracker(plan: Plan, live: set[str]) -> Tracker:
    return Tracker(_NoOutput(), plan, live=live, interval=1.0)


class _NoOutput:
    def observe(self) -> Observation | None:
        raise AssertionError("the tests feed observations themselves")


def test_a_change_is_timed_from_its_accepted_write_to_the_first_observation_showing_it() -> None:
    plan = _plan(changes=5)  # round-robin: index 4 is "instance registered"
    change = next(c for c in plan.changes if c.kind == "instance registered")
    write = next(w for w in plan.writes if w.change == change.index)
    tracker = _tracker(plan, set())
    tracker.before_write(write)
    tracker.after_write(write, 100.0)
    tracker.record(_observation(100.5, {}))
    tracker.record(_observation(101.25, {change.expect.ids[0]: {}}))
    row = tracker.latencies()[change.index]
    assert row == {"kind": "instance registered", "latency_s": 1.25, "status": "seen"}


def test_a_target_gone_while_it_exists_is_a_loss_and_a_deregistered_one_is_not() -> None:
    plan = Plan()
    tracker = _tracker(plan, {"a", "b"})
    tracker.record(_observation(1.0, {"a": {}, "b": {}}))
    tracker.before_write(Write(0.0, "/v1/catalog/deregister", {}, live_remove=("b",)))
    tracker.record(_observation(2.0, {}))
    assert (tracker.losses, tracker.lost_ids) == (1, ["a"])


def test_a_flip_unseen_when_its_recovery_is_written_is_not_seen_and_the_recovery_left_out() -> None:
    plan = _plan(changes=1)
    flip, back = plan.writes
    tracker = _tracker(plan, set())
    tracker.before_write(flip)
    tracker.after_write(flip, 10.0)
    tracker.before_write(back)
    tracker.after_write(back, 40.0)
    service_id = plan.changes[0].expect.ids[0]
    tracker.record(_observation(41.0, {service_id: {"__meta_consul_health": "passing"}}))
    assert [row["status"] for row in tracker.latencies()] == ["masked", "void"]
    assert tracker.pending() == 0


def test_an_unseen_change_counts_as_infinitely_late_and_a_void_one_not_at_all() -> None:
    changes: list[dict[str, Any]] = [
        {"kind": "k", "latency_s": 1.0, "status": "seen"},
        {"kind": "k", "latency_s": None, "status": "not seen"},
        {"kind": "k", "latency_s": None, "status": "void"},
    ]
    assert kind_stats(changes, "k") == {
        "n": 2,
        "seen": 1,
        "p50": 1.0,
        "p95": math.inf,
        "max": math.inf,
    }


def test_a_recovery_is_timed_from_its_own_write_not_from_an_older_passing_state() -> None:
    plan = _plan(changes=1)
    flip, back = plan.writes
    service_id = plan.changes[0].expect.ids[0]
    tracker = _tracker(plan, set())
    tracker.record(_observation(5.0, {service_id: {"__meta_consul_health": "passing"}}))
    tracker.before_write(flip)
    tracker.after_write(flip, 10.0)
    tracker.record(_observation(10.5, {service_id: {"__meta_consul_health": "critical"}}))
    tracker.before_write(back)
    tracker.after_write(back, 40.0)
    tracker.record(_observation(41.0, {service_id: {"__meta_consul_health": "passing"}}))
    assert [row["latency_s"] for row in tracker.latencies()] == [0.5, 1.0]
