"""Auto: Blocking for a few services, Polling for many, chosen by the matched count.

Auto counts the matched services once, then runs Blocking below ``query.auto_polling_at`` and
Polling at or above, and switches back only below ``query.auto_blocking_below`` (hysteresis, so a
count hovering at the threshold does not flap). With ``wakeOnChange`` Polling sees changes within
seconds at any size, so Blocking is kept only while every watch holds its own slot (up to
``maxConcurrent``); without it, up to :data:`~.query.AUTO_POLLING_AT` (see
:func:`~.query.auto_thresholds`). A switch cancels the running
mode (every task of it gone before the next one starts) and hands the current targets to the new
mode as its seed. A snapshot showing an error never triggers a switch.

Auto publishes what its current mode publishes, ``mode`` and ``duration`` included; before its
first choice (the first count failing) its failures carry ``mode=None``, never a mode it has not
chosen.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping

from consul_sd.consul.client import ConsulClient
from consul_sd.discovery.blocking import watch_services
from consul_sd.discovery.failures import until_answered
from consul_sd.discovery.polling import poll_services
from consul_sd.discovery.query import DiscoveryQuery, EffectiveMode, list_matched_services
from consul_sd.discovery.snapshots import Publish, Snapshot
from consul_sd.loops import cancel_and_wait, first_done
from consul_sd.targets import TargetGroup

logger = logging.getLogger(__name__)


async def run_auto(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    publish: Publish,
    seed: Mapping[str, TargetGroup] | None = None,
) -> None:
    """Auto: Blocking below ``query.auto_polling_at`` matched services, Polling at or above."""
    names, _ = await until_answered(
        read=functools.partial(list_matched_services, query=query, client=client),
        publish=publish,
        mode=None,
        client=client,
        refresh_interval=query.refresh_interval,
    )
    mode = choose_mode(matched=len(names), current=None, query=query)
    groups: Mapping[str, TargetGroup] = dict(seed or {})
    while True:
        run = _ModeRun(mode=mode, query=query, publish=publish, seed=groups)
        wanted = await run.until_switch(client)
        groups = run.groups
        logger.info("auto mode: switching from %s to %s at %d services", mode, wanted, len(groups))
        mode = wanted


class _ModeRun:
    """One mode running under Auto, until its matched count asks for the other one."""

    def __init__(
        self,
        *,
        mode: EffectiveMode,
        query: DiscoveryQuery,
        publish: Publish,
        seed: Mapping[str, TargetGroup],
    ) -> None:
        self.mode = mode
        self.query = query
        self.publish = publish
        self.groups = seed  # the latest targets: the next mode's seed
        self.switch_to: asyncio.Future[EffectiveMode] = asyncio.get_running_loop().create_future()

    async def observe(self, snapshot: Snapshot) -> None:
        """Pass the mode's snapshot on, and ask for a switch when its count says so."""
        self.groups = snapshot.groups
        await self.publish(snapshot)
        wanted = choose_mode(matched=snapshot.matched, current=self.mode, query=self.query)
        if wanted != self.mode and snapshot.error is None and not self.switch_to.done():
            self.switch_to.set_result(wanted)

    async def until_switch(self, client: ConsulClient) -> EffectiveMode:
        """Run the mode until a switch is asked for; the mode to switch to, its worker gone."""
        worker = poll_services if self.mode == "Polling" else watch_services
        task = asyncio.create_task(
            worker(query=self.query, client=client, publish=self.observe, seed=self.groups)
        )
        try:
            if self.switch_to not in await first_done(task, self.switch_to):
                task.result()
                raise RuntimeError("discovery worker returned")
        finally:
            await cancel_and_wait([task])
        return self.switch_to.result()


def choose_mode(
    *, matched: int, current: EffectiveMode | None, query: DiscoveryQuery
) -> EffectiveMode:
    """Auto's decision with hysteresis, so a count hovering at the threshold does not flap."""
    if current == "Polling":
        return "Blocking" if matched < query.auto_blocking_below else "Polling"
    return "Polling" if matched >= query.auto_polling_at else "Blocking"
