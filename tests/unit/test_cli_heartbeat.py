"""The heartbeat of a continuous ``consul-sd discover``, in virtual time (looptime).

Per publication by default, plus one line after five quiet minutes so that a quiet fleet and a
stuck process look different; per interval when one is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from consul_sd.cli.progress import QUIET_HEARTBEAT, Heartbeat, RequestTally
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.targets import Target

pytestmark = pytest.mark.looptime


@pytest.fixture(autouse=True)
def info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consul_sd")


SNAPSHOT = Snapshot(
    groups={"web": (Target.of("10.0.0.1:80", {}),)}, mode="Blocking", complete=True, matched=1
)


async def beats_during(
    heartbeat: Heartbeat, seconds: float, caplog: pytest.LogCaptureFixture, *, every: float = 0
) -> list[str]:
    """The heartbeat lines of ``seconds`` of virtual time, publishing every ``every`` seconds."""
    task = asyncio.create_task(heartbeat.run())
    elapsed = 0.0
    while elapsed < seconds:
        step = every or seconds
        await asyncio.sleep(step)
        elapsed += step
        if every:
            await heartbeat.publish(SNAPSHOT)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("heartbeat:")]


async def test_a_quiet_run_still_beats_every_five_minutes(caplog: pytest.LogCaptureFixture) -> None:
    heartbeat = Heartbeat(tally=RequestTally(), interval=0)
    await heartbeat.publish(SNAPSHOT)
    beats = await beats_during(heartbeat, QUIET_HEARTBEAT * 2 + 1, caplog)
    assert len(beats) == 3  # the publication, then two quiet stretches
    assert beats[-1].startswith("heartbeat: 1 targets in 1 services, 0 changed, 0 publications")


async def test_a_busy_run_beats_once_per_publication_and_never_for_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heartbeat = Heartbeat(tally=RequestTally(), interval=0)
    beats = await beats_during(heartbeat, QUIET_HEARTBEAT * 2, caplog, every=60)
    assert len(beats) == 10


async def test_an_interval_gives_one_line_per_interval_whatever_is_published(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heartbeat = Heartbeat(tally=RequestTally(), interval=120)
    beats = await beats_during(heartbeat, 610, caplog, every=50)
    assert len(beats) == 5  # at 2, 4, 6, 8 and 10 minutes
    assert "1 changed, 2 publications" in beats[0]  # the first publication added "web"
    assert "0 changed, 2 publications" in beats[1]  # at 150 and 200 s
