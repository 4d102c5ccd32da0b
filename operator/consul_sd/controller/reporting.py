"""The status and events of one ConsulDiscovery generation: what users read with kubectl.

:class:`StatusReporter` turns what happened (a snapshot, a problem, what the outputs hold) into
the status subresource and Events:

- The status is a :class:`consul_sd.api.status.ConsulDiscoveryStatus`, the model the CRD schema is
  generated from, so a misspelt field fails the type check or the model's validation instead of
  being dropped by the apiserver. It is sent as a JSON merge patch of the fields that are set:
  none holds null, and ``outputs`` is sent only once the outputs hold something of this
  generation (an empty list would erase what an earlier one wrote).
- The conditions follow :func:`consul_sd.controller.conditions.update_conditions`.
- It is patched when it changes; a change of the per-cycle counters alone (:data:`_VOLATILE`)
  is sent at most every :data:`STATUS_MIN_INTERVAL`. A failed patch is logged, never raised:
  the next report carries the same news.
- On a quiet Blocking fleet no snapshot is published; :meth:`StatusReporter.confirm_sync` then
  moves ``lastSyncTime`` alone, when the runner says Consul confirmed the targets.
- The ``consul_sd_degraded`` metric follows the Degraded condition, by reason.
- Events mark transitions into a problem (one Warning per new reason) and out of it (Normal
  ``Recovered``), not every cycle.

No kopf, no Kubernetes client: the apiserver is reached through :class:`StatusAPI`.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from consul_sd import metrics
from consul_sd.api.durations import format_duration
from consul_sd.api.status import Condition, ConsulDiscoveryStatus, OutputRef, Problem
from consul_sd.controller.conditions import update_conditions
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.kube import DiscoveryRef, KubeError

logger = logging.getLogger(__name__)

STATUS_MIN_INTERVAL = 10.0
# Fields that change every cycle; alone they only refresh status every STATUS_MIN_INTERVAL.
_VOLATILE = frozenset({"last_sync_time", "last_sync_duration", "consul_requests"})


class StatusAPI(Protocol):
    """What reporting needs of :class:`consul_sd.kube.Kube` (the seam unit tests fake)."""

    async def patch_status(self, *, ref: DiscoveryRef, status: Mapping[str, Any]) -> None: ...
    async def post_event(
        self, *, ref: DiscoveryRef, kind: str, reason: str, message: str
    ) -> None: ...


@dataclass(frozen=True)
class Written:
    """What the outputs hold since the last successful write: the status's figures."""

    targets: int
    services: int
    outputs: Sequence[OutputRef]
    # The targets are also served at /targets/<namespace>/<name> (spec.output.httpSD).
    served: bool = False

    def describe(self) -> str:
        found = f"{self.targets} targets from {self.services} services"
        kinds = "/".join(sorted({o.kind for o in self.outputs})) or "outputs"
        written = f"written to {len(self.outputs)} {kinds} objects"
        if not self.served:
            return f"{found} {written}"
        if not self.outputs:
            return f"{found} served over HTTP SD"
        return f"{found} {written} and served over HTTP SD"


def build_status(
    *,
    generation: int,
    conditions: Sequence[Condition],
    snapshot: Snapshot | None,
    written: Written | None,
    synced_at: str | None,
) -> ConsulDiscoveryStatus:
    """The status of a generation; ``synced_at``: when ``snapshot`` was written, if it was."""
    status = ConsulDiscoveryStatus(
        observed_generation=generation,
        conditions=list(conditions),
        reason=summary_reason(conditions),
    )
    if snapshot is not None:
        # None while Auto has not chosen a mode: sent as null, so a merge patch removes the mode
        # an earlier worker reported.
        status.mode = snapshot.mode
        status.services = snapshot.matched
        status.failed_services = len(snapshot.failed)
        status.consul_requests = sum(snapshot.requests.values())
        if snapshot.duration:
            status.last_sync_duration = format_duration(snapshot.duration)
        if synced_at is not None:
            status.last_sync_time = synced_at
    if written is not None:
        status.targets = written.targets
        status.outputs = list(written.outputs)
    return status


def summary_reason(conditions: Sequence[Condition]) -> str | None:
    """The Status column: what is wrong (the Degraded reason), else how far along (Ready's)."""
    by_type = {condition.type: condition for condition in conditions}
    degraded, ready = by_type.get("Degraded"), by_type.get("Ready")
    if degraded is not None and degraded.status == "True":
        return degraded.reason
    return ready.reason if ready is not None else None


def status_patch(
    status: ConsulDiscoveryStatus, *, exclude: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The merge patch of ``status``: the fields set, by their CRD names.

    A field set to None is sent as null, which a merge patch removes; a field never set is left
    out, so the apiserver keeps what it holds.
    """
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude=set(exclude))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusReporter:
    """Conditions, status and events of one CR generation."""

    def __init__(
        self,
        *,
        kube: StatusAPI,
        ref: DiscoveryRef,
        generation: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.ref = ref
        self.generation = generation
        self._clock = clock
        self._conditions: list[Condition] = []
        self._last_significant: dict[str, Any] | None = None
        self._last_status_at = -1e18
        self._degraded: Problem | None = None

    async def report(
        self,
        *,
        snapshot: Snapshot | None,
        problem: Problem | None,
        written: Written | None,
        synced: bool = False,
    ) -> None:
        """Status for the current state; ``synced``: ``snapshot`` was just written."""
        now = _now()
        self._conditions = update_conditions(
            self._conditions,
            generation=self.generation,
            problem=problem,
            written=written.describe() if written is not None else None,
            now=now,
        )
        await self._announce(problem)
        metrics.set_degraded(
            self.ref.namespace, self.ref.name, problem.reason if problem is not None else None
        )
        status = build_status(
            generation=self.generation,
            conditions=self._conditions,
            snapshot=snapshot,
            written=written,
            synced_at=now if synced else None,
        )
        await self._patch_status(status)

    async def confirm_sync(self) -> None:
        """Only ``lastSyncTime``: Consul confirmed the targets without a publication."""
        await self._send(status_patch(ConsulDiscoveryStatus(last_sync_time=_now())))

    async def _announce(self, problem: Problem | None) -> None:
        previous, self._degraded = self._degraded, problem
        if problem is not None and (previous is None or previous.reason != problem.reason):
            await self.kube.post_event(
                ref=self.ref, kind="Warning", reason=problem.reason, message=problem.message
            )
        elif problem is None and previous is not None:
            await self.kube.post_event(
                ref=self.ref,
                kind="Normal",
                reason="Recovered",
                message=f"recovered from {previous.reason}",
            )

    async def _patch_status(self, status: ConsulDiscoveryStatus) -> None:
        now = self._clock()
        significant = status_patch(status, exclude=_VOLATILE)
        if (
            significant == self._last_significant
            and now - self._last_status_at < STATUS_MIN_INTERVAL
        ):
            return
        if await self._send(status_patch(status)):
            self._last_significant = significant
            self._last_status_at = now

    async def _send(self, patch: Mapping[str, Any]) -> bool:
        """Whether the status patch landed; a failure is logged and left to the next report."""
        try:
            await self.kube.patch_status(ref=self.ref, status=patch)
        except KubeError as exc:
            if exc.status != 404:  # 404: the CR is being deleted
                logger.warning(
                    "%s/%s: status not written: %s", self.ref.namespace, self.ref.name, exc
                )
            return False
        return True
