"""The entry points: run a discovery until cancelled, or once; and the datacenter lookup.

:func:`run_discovery` fills in the datacenter (retrying until Consul answers, each failure
published with the mode it runs in, ``None`` under Auto as it has not chosen yet) and runs the
worker for ``query.mode``. :func:`discover_once` runs the same worker until its first publication
and stops it: the result is complete or :class:`~.snapshots.DiscoveryIncomplete` is raised, and
no task of the worker is left running either way.

``seed`` carries targets across a worker restart, so a service failing before it answers once
keeps what the outputs hold. Kubernetes and the outputs are the caller's: this package only
publishes snapshots.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import replace

from consul_sd.consul.client import ConsulClient
from consul_sd.consul.errors import ConsulACLDenied
from consul_sd.discovery.auto import run_auto
from consul_sd.discovery.blocking import watch_services
from consul_sd.discovery.failures import until_answered
from consul_sd.discovery.polling import poll_services
from consul_sd.discovery.query import DiscoveryQuery, EffectiveMode
from consul_sd.discovery.snapshots import DiscoveryIncomplete, Publish, Snapshot
from consul_sd.loops import cancel_and_wait, first_done
from consul_sd.targets import TargetGroup

logger = logging.getLogger(__name__)


async def run_discovery(
    *,
    query: DiscoveryQuery,
    client: ConsulClient,
    publish: Publish,
    seed: Mapping[str, TargetGroup] | None = None,
) -> None:
    """Run the worker for ``query.mode`` until cancelled.

    ``seed``: the targets the outputs hold already (a restarted worker's last publication, or
    what an operator restart read back). A service that fails before it answers once keeps its
    seeded targets instead of holding back the snapshot or being dropped.
    """
    query = await _with_datacenter(query=query, client=client, publish=publish)
    if query.mode == "Polling":
        await poll_services(query=query, client=client, publish=publish, seed=seed)
    elif query.mode == "Blocking":
        await watch_services(query=query, client=client, publish=publish, seed=seed)
    else:
        await run_auto(query=query, client=client, publish=publish, seed=seed)


async def discover_once(*, query: DiscoveryQuery, client: ConsulClient) -> Snapshot:
    """One complete discovery in ``query.mode``; :class:`DiscoveryIncomplete` if it is not."""
    first: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()

    async def take_first(snapshot: Snapshot) -> None:
        if not first.done():
            first.set_result(snapshot)

    # One publication is all it waits for: the table watches would only add requests.
    once = replace(query, wake_on_change=False)
    task = asyncio.create_task(run_discovery(query=once, client=client, publish=take_first))
    try:
        if first not in await first_done(task, first):
            task.result()  # the worker died: raise its error
        snapshot = first.result()
    finally:
        await cancel_and_wait([task])
    if not snapshot.complete:
        raise DiscoveryIncomplete(snapshot)
    return snapshot


async def _with_datacenter(
    *, query: DiscoveryQuery, client: ConsulClient, publish: Publish
) -> DiscoveryQuery:
    """Fill in the agent's datacenter, as Prometheus does, retrying until Consul answers."""
    if query.datacenter:
        return query
    # Auto has not chosen a mode yet: its failures here say so (None), never "Blocking".
    mode: EffectiveMode | None = None if query.mode == "Auto" else query.mode
    datacenter = await until_answered(
        read=functools.partial(_datacenter, client=client),
        publish=publish,
        mode=mode,
        client=client,
        refresh_interval=query.refresh_interval,
    )
    return replace(query, datacenter=datacenter)


async def _datacenter(*, client: ConsulClient) -> str:
    """The agent's datacenter, or the nodes' when the token may not read the agent.

    A token without ``agent:read`` (README's minimal policy) is denied /v1/agent/self, where
    Prometheus gives up; here the datacenter then comes from the nodes Consul lists, which carry
    the same value (said once at INFO). A token that sees no node either gets the denial, with
    what would help.
    """
    try:
        return await client.agent_datacenter()
    except ConsulACLDenied as denied:
        datacenter = await client.catalog_datacenter()
        if not datacenter:
            raise type(denied)(
                f"{denied}; and /v1/catalog/nodes shows no node to take the datacenter "
                'from: grant the token node_prefix "" read, or set consul.datacenter',
                status=denied.status,
            ) from None
        logger.info(
            "the token may not read /v1/agent/self (agent:read): datacenter %r taken "
            "from /v1/catalog/nodes, the value Prometheus would use",
            datacenter,
        )
        return datacenter
