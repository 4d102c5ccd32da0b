"""A faithful, self-contained Consul HTTP API simulator for tests and benchmarks.

``ConsulSimulator`` listens on 127.0.0.1 and answers the endpoints Prometheus-style Consul service
discovery uses with Consul 1.16 CE semantics (indexes, blocking queries, headers, parameters, error
bodies); ``Faults`` injects failures and ``Counters`` reports what it saw. It is its own
distribution (``consul-sd-simulator``, in ``simulator/``), a test and benchmark dependency that the
product never ships, and it imports nothing of ``consul_sd`` (both import-linter contracts), so the
engine is tested against Consul's behaviour, not its own. ``consul-simulator`` (or
``python -m consul_simulator``) runs it as a stand-alone server.

Behaviour chosen where Consul is ambiguous or version-dependent:

- ``Service.Port`` is omitted from /v1/health/service entries when it is 0 (``structs.NodeService``
  declares it ``json:",omitempty"``), so registering without a port exercises the "Port missing"
  path; ``ServicePort`` in /v1/catalog/service rows is always present.
- Registration ``Namespace``/``Partition`` are echoed on the service (Enterprise-shaped output,
  for label tests) while ``?ns=``/``?partition=`` and the ``X-Consul-Namespace``/``-Partition``
  headers answer 400 as Consul CE does.
- ACLs: with ``acl_token`` set, ACLs run in default-deny mode and that token can do everything.
  No token (anonymous): read endpoints answer 200 with their rows filtered away (``[]``/``{}``)
  and ``X-Consul-Results-Filtered-By-Acls: true`` when something was removed; /v1/agent/self and
  the writes answer 403 "Permission denied: ..."; /v1/status/leader needs no token. Any other
  token answers 403 "ACL not found" everywhere except /v1/status/leader. Tokens are read from
  ``X-Consul-Token``, ``Authorization: Bearer`` or ``?token=``.
- A missing service reports the last extinction index, or, before any service went extinct,
  the catalog's max table index (what Consul falls back to); never below 1.
- Every write advances the raft index, even when it changes no row; table and per-service
  indexes move only on real changes (re-registering an identical instance moves nothing).
- /v1/catalog/services lists tags sorted (Consul's order is Go map order, i.e. random).
- A blocking /v1/health/state/STATE query (STATE not ``any``) wakes only for checks that enter,
  leave or change within STATE while some check is in it; while none is, any check write wakes
  it (Consul watches a subtree of its by-status index, or the index's root when the subtree is
  empty). It answers the checks table index either way.
- /v1/catalog/services?node-meta=K:V answers the higher of the services and nodes table indexes
  and wakes for writes of nodes carrying K=V and for instances on nodes matching every pair; with
  no node carrying K=V, for a write of any node that has meta (Consul's ServicesByNodeMeta).
- A blocking query that times out answers the index of its last evaluation, as Consul does: a
  write none of its watches covers can have moved the table's index meanwhile.
- ``index_backwards`` lowers every reported index by half the raft index at the moment it is
  first seen on (never below 1; a snapshot restore to an older state); blocking compares against
  the lowered value, so a client that keeps its old index parks until ``wait`` elapses, as it
  would against a restored cluster, and one that reset its index sees the next change.
- Connections refused by ``max_conns_per_client`` get the raw go-connlimit 429 before their
  request is read and are then half-closed; they count in ``connections_refused_429`` and in
  ``responses_by_status[429]`` but never as open connections or requests.
- The ``/_sim/*`` endpoints bypass faults, ACLs and counters (except connection counts).
- An unknown ``/v1/health/state/STATE`` answers ``[]`` (Consul does not validate the state).
"""

from __future__ import annotations

from .catalog import SimulatedConsulError
from .model import Counters, Faults
from .server import VERSION, ConsulSimulator

__all__ = ["VERSION", "ConsulSimulator", "Counters", "Faults", "SimulatedConsulError"]
