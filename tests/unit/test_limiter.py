from __future__ import annotations

import asyncio

import pytest

from consul_sd.consul.limiter import AdaptiveLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def hold(limit: AdaptiveLimit, release: asyncio.Event, held: list[int]) -> None:
    async with limit:
        held.append(limit.in_use)
        await release.wait()


async def test_no_more_than_the_limit_hold_a_slot_at_once() -> None:
    limit = AdaptiveLimit(3)
    release = asyncio.Event()
    held: list[int] = []
    tasks = [asyncio.create_task(hold(limit, release, held)) for _ in range(10)]
    await asyncio.sleep(0)
    assert limit.in_use == 3
    release.set()
    await asyncio.gather(*tasks)
    assert max(held) == 3
    assert limit.in_use == 0


def test_a_rejection_halves_the_limit_once_per_cooldown() -> None:
    clock = Clock()
    limit = AdaptiveLimit(100, clock=clock)
    limit.in_use = 80
    limit.record_rejection()
    assert limit.limit == 40
    limit.record_rejection()  # the same burst of refusals
    assert limit.limit == 40
    clock.now = 2
    limit.record_rejection()
    assert limit.limit == 20


def test_successes_probe_back_up_slowly_to_the_maximum() -> None:
    clock = Clock()
    limit = AdaptiveLimit(4, clock=clock)
    limit.in_use = 4
    limit.record_rejection()
    assert limit.limit == 2
    for _ in range(10):
        limit.record_success()
    assert limit.limit == 2  # not before the probe interval
    for step in range(1, 10):
        clock.now = 5.0 * step
        for _ in range(limit.limit):
            limit.record_success()
    assert limit.limit == 4


async def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    limit = AdaptiveLimit(1)
    release = asyncio.Event()
    first = asyncio.create_task(hold(limit, release, []))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(hold(limit, release, []))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await first
    assert limit.in_use == 0
    async with limit:
        assert limit.in_use == 1


@pytest.mark.looptime
async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_given_back() -> None:
    limit = AdaptiveLimit(1)
    queued: list[asyncio.Task[None]] = []

    async def leave_and_cancel_the_waiter() -> None:
        async with limit:
            queued.append(asyncio.create_task(hold(limit, asyncio.Event(), [])))
            await asyncio.sleep(0)  # the waiter queues behind this holder
        # Leaving handed the slot to the waiter; it is cancelled before it could run.
        queued[0].cancel()

    await leave_and_cancel_the_waiter()
    with pytest.raises(asyncio.CancelledError):
        await queued[0]
    async with asyncio.timeout(60):
        async with limit:  # at limit 1, a leaked slot would make this wait forever
            assert limit.in_use == 1
    assert limit.in_use == 0
