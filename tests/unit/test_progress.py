"""Liveness: a discovery loop that stops progressing is named, and the probe fails."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from consul_sd.controller import handlers
from consul_sd.controller.progress import MIN_ALLOWANCE, PUBLISH_ALLOWANCE, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_that_keeps_stepping_is_never_stalled() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.track("ns/a", allowance=60)
    for _ in range(10):
        clock.now += MIN_ALLOWANCE - 1
        progress.step("ns/a")
        assert progress.stalled() == []


def test_a_loop_without_a_step_for_its_allowance_is_stalled() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.track("ns/a", allowance=2 * MIN_ALLOWANCE)
    progress.track("ns/b", allowance=0)
    clock.now += MIN_ALLOWANCE + 1
    assert progress.stalled() == [f"ns/b: no progress for {MIN_ALLOWANCE + 1:.0f}s"]
    clock.now += MIN_ALLOWANCE
    assert [line.split(":")[0] for line in progress.stalled()] == ["ns/a", "ns/b"]


def test_a_publication_that_hangs_is_stalled_even_while_consul_requests_step() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.track("ns/a", allowance=MIN_ALLOWANCE)
    with progress.publishing("ns/a"):
        for _ in range(4):
            clock.now += PUBLISH_ALLOWANCE / 3
            progress.step("ns/a")  # the Blocking watches still answer
        assert progress.stalled() == [
            f"ns/a: one publication running for {4 * PUBLISH_ALLOWANCE / 3:.0f}s"
        ]
    assert progress.stalled() == []


def test_a_forgotten_loop_is_not_reported() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.track("ns/a", allowance=0)
    progress.forget("ns/a")
    clock.now += 10 * MIN_ALLOWANCE
    assert progress.stalled() == []


async def test_the_liveness_probe_fails_while_a_loop_is_stalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    progress = Progress(clock)
    monkeypatch.setattr(handlers, "PROGRESS", progress)
    progress.track("ns/a", allowance=0)
    probe: Any = handlers.count_discoveries  # kopf types the decorated handler as ActivityFn
    assert await probe() == 0
    clock.now += MIN_ALLOWANCE + 1
    with pytest.raises(kopf.PermanentError, match="discovery stalled: ns/a: no progress"):
        await probe()
