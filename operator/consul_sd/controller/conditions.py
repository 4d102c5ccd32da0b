"""The condition rule: Ready, Degraded and Progressing from what happened, and nothing else.

As prometheus-operator keeps ``UpdateConditions``: :func:`update_conditions` takes the previous
conditions and what happened now (the problem, if any; what the outputs hold once a complete
snapshot of this generation was written, or nothing before that; the time) and returns the new
conditions. :func:`consul_problem` says which problem a snapshot shows. Pure: no I/O, no clock of
its own, no kopf; :mod:`consul_sd.api.status`'s models in and out. Posting the conditions (and the
events that mark their transitions) is :mod:`consul_sd.controller.reporting`'s job.

- Ready: True (``Synced``, the message says what the outputs hold) once a complete snapshot of
  this generation was written, and it stays True while later writes or Consul fail, since the
  outputs keep their targets; before that False, with the problem's reason or
  ``FirstSyncPending``.
- Progressing: True (``FirstSyncPending``) until that first write, False (``Synced``) after.
- Degraded: True with the problem's reason while there is one, else False (``Healthy``).
- ``lastTransitionTime`` moves only when a condition's status changes; messages are cut at
  :data:`MAX_MESSAGE` characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from consul_sd.api.status import (
    REASON_FIRST_SYNC,
    REASON_HEALTHY,
    REASON_SERVICES_FAILING,
    REASON_SYNCED,
    Condition,
    ConditionType,
    Problem,
)
from consul_sd.discovery.snapshots import Snapshot, is_permanent

# Long enough for every message the operator writes (a spec error lists each problem).
MAX_MESSAGE = 2000
CONDITION_TYPES: tuple[ConditionType, ...] = ("Ready", "Degraded", "Progressing")
FIRST_SYNC_MESSAGE = "waiting for the first complete discovery"

# A condition's status, reason and message.
_Wanted = tuple[Literal["True", "False"], str, str]


def update_conditions(
    previous: Sequence[Condition],
    *,
    generation: int,
    problem: Problem | None,
    written: str | None,
    now: str,
) -> list[Condition]:
    """The conditions after what happened, in :data:`CONDITION_TYPES` order.

    ``written``: what the outputs hold (the Ready message) once a complete snapshot of this
    generation was written; None before that. ``now``: an RFC 3339 time, the transition time of
    every condition whose status changes.
    """
    waiting = problem.message if problem else FIRST_SYNC_MESSAGE
    wanted: dict[ConditionType, _Wanted] = {
        "Ready": ("True", REASON_SYNCED, written)
        if written is not None
        else ("False", problem.reason if problem else REASON_FIRST_SYNC, waiting),
        "Degraded": ("True", problem.reason, problem.message)
        if problem is not None
        else ("False", REASON_HEALTHY, ""),
        "Progressing": ("False", REASON_SYNCED, "")
        if written is not None
        else ("True", REASON_FIRST_SYNC, waiting),
    }
    before = {condition.type: condition for condition in previous}
    conditions = []
    for kind in CONDITION_TYPES:
        status, reason, message = wanted[kind]
        earlier = before.get(kind)
        conditions.append(
            Condition(
                type=kind,
                status=status,
                reason=reason,
                message=message[:MAX_MESSAGE],
                last_transition_time=(
                    earlier.last_transition_time
                    if earlier is not None and earlier.status == status
                    else now
                ),
                observed_generation=generation,
            )
        )
    return conditions


def consul_problem(snapshot: Snapshot) -> Problem | None:
    """The problem a snapshot shows: the catalog's error, else its failed services."""
    if snapshot.error is not None:
        return Problem(snapshot.error.reason, str(snapshot.error))
    if not snapshot.failed:
        return None
    names = sorted(snapshot.failed)
    first = snapshot.failed[names[0]]
    reasons = {error.reason for error in snapshot.failed.values()}
    if len(names) == snapshot.matched and len(reasons) == 1 and is_permanent(first):
        # Every service refused for one reason (a healthFilter Consul cannot compile): the
        # query is wrong, not the services.
        return Problem(first.reason, f"every service failed: {first}")
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return Problem(
        REASON_SERVICES_FAILING,
        f"{len(names)} services failed and keep their previous targets ({shown}); "
        f"first error: {first}",
    )
