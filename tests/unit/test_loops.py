"""The loop idioms every long-running part shares: backoff, pacing, cancel-and-wait, first done."""

from __future__ import annotations

import asyncio
import random

import pytest

from consul_sd.loops import Backoff, backoff_delay, cancel_and_wait, first_done, pace


def test_a_backoff_doubles_within_half_and_whole_of_its_ceiling_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 15.0), (40, 15.0)]:
        delay = backoff_delay(attempt, base=1.0, cap=15.0, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


def test_a_success_starts_the_backoff_over() -> None:
    backoff = Backoff(base=1.0, cap=15.0)
    for _ in range(10):
        backoff.next_delay()
    assert backoff.next_delay() <= 15.0
    backoff.reset()
    assert backoff.next_delay() <= 1.0


@pytest.mark.looptime
async def test_pace_sleeps_only_what_is_left_of_the_interval() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(3)
    await pace(started=started, interval=10)
    assert loop.time() == pytest.approx(started + 10)
    await pace(started=started, interval=5)  # already past: no sleep
    assert loop.time() == pytest.approx(started + 10)


@pytest.mark.looptime
async def test_cancel_and_wait_returns_with_every_task_stopped_and_nothing_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    forever = asyncio.create_task(asyncio.sleep(3600))
    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait([forever, failed])
    assert forever.cancelled()


@pytest.mark.looptime
async def test_first_done_returns_as_soon_as_one_finishes() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    quick = asyncio.create_task(asyncio.sleep(1))
    slow = asyncio.create_task(asyncio.sleep(100))
    assert await first_done(quick, slow) == {quick}
    assert loop.time() == pytest.approx(started + 1)
    await cancel_and_wait([slow])
