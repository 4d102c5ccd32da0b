"""Discovery: the loops that turn Consul's catalog into full target snapshots, in every mode.

- :mod:`.query`: what to discover (from the spec) and the two reads in its terms.
- :mod:`.snapshots`: the :class:`~.snapshots.Snapshot` a loop publishes, what "complete" means,
  and the publish rule sinks apply.
- :mod:`.failures`: how the modes meet Consul's failures, beyond :mod:`consul_sd.loops`: the
  error backoff and its cap, the cold-start retry, the bounded fan-out that keeps each
  service's failure as its result.
- :mod:`.memory`: hands freed memory back to the OS after a large cycle.
- :mod:`.gate`: Polling's change gate, which skips or narrows a cycle.
- :mod:`.polling`, :mod:`.blocking`, :mod:`.auto`: the three modes, one module each.
- :mod:`.run`: the entry points, :func:`~.run.run_discovery` and :func:`~.run.discover_once`,
  and the datacenter lookup.

Nothing here imports kopf, the Kubernetes client or the spec's I/O; dependencies flow one way:
``run`` -> ``auto`` -> ``polling`` and ``blocking`` -> ``gate`` and ``failures`` -> ``snapshots``
-> ``query``. Every task a mode starts lives in a TaskGroup or is cancelled and awaited: none
outlives its worker.
"""
