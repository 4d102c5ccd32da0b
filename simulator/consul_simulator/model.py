"""Knobs and gauges of the Consul simulator: the ``Faults`` it injects, the ``Counters`` it keeps.

Both are plain mutable objects shared with the HTTP layer, read on every request, so a change made
by a test (or through ``PUT /_sim/faults``) takes effect on the next request. They are not
thread-safe: the simulator, its tests and its benchmarks run on one event loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Counters", "Faults"]


@dataclass
class Faults:
    """Failure modes, all off by default; rates are drawn from the simulator's seeded random."""

    latency: float = 0.0
    """Seconds slept before answering every Consul request (not the ``/_sim`` ones)."""
    error_rate: float = 0.0
    """Fraction (0..1) of Consul requests answered with ``error_status``, body "simulated error"."""
    error_status: int = 500
    max_conns_per_client: int | None = None
    """Consul's ``limits.http_max_conns_per_client``: a connection past it gets a raw 429."""
    reset_rate: float = 0.0
    """Fraction of Consul requests whose connection is aborted (RST) without any response."""
    slow_body: float = 0.0
    """Seconds over which each response body is dribbled out in chunks."""
    index_backwards: bool = False
    """Report every index lowered by half the raft index (fixed while on), as after a restore."""
    fail_services: set[str] = field(default_factory=set)
    """Services whose health/catalog-service endpoints answer ``error_status``."""
    malformed_services: set[str] = field(default_factory=set)
    """Services whose health/catalog-service endpoints answer 200 with a truncated JSON body."""
    reset_services: set[str] = field(default_factory=set)
    """Services whose health/catalog-service requests have their connection aborted (RST)."""
    no_leader: bool = False
    """Non-stale reads and writes answer 500 "No cluster leader"; ``?stale`` reads still work."""

    def update(self, changes: Mapping[str, Any]) -> None:
        """Merge a JSON-shaped mapping (field name -> value) into these faults, validating it."""
        known = {f.name: f for f in dataclasses.fields(self)}
        staged: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}")
            staged[name] = _coerce_fault(name, value)
        # Validate everything first so that a bad field leaves the faults untouched.
        for name, value in staged.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (sets become sorted lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = sorted(value) if isinstance(value, set) else value
        return out


def _coerce_fault(name: str, value: Any) -> Any:
    if name in ("fail_services", "malformed_services", "reset_services"):
        if not isinstance(value, list | set | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of service names")
        return set(value)
    if name in ("index_backwards", "no_leader"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if name == "max_conns_per_client":
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"{name} must be an integer or null")
        return value
    if name == "error_status":
        if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
            raise ValueError(f"{name} must be an HTTP status code")
        return value
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    if name in ("error_rate", "reset_rate") and value > 1:
        raise ValueError(f"{name} must be between 0 and 1")
    return float(value)


@dataclass
class Counters:
    """What the simulator saw; ``open_connections`` and ``in_flight`` are gauges, the rest totals.

    ``requests`` is keyed by endpoint kind: ``catalog_services``, ``health_service``,
    ``catalog_service``, ``health_state``, ``catalog_nodes``, ``agent_self``, ``status_leader``,
    ``register``, ``deregister``, and ``other`` for unknown paths. Only Consul endpoints count;
    the ``/_sim`` control endpoints are left out so that observing the counters does not change
    them (their connection still counts as open). ``in_flight`` includes parked blocking queries.
    """

    open_connections: int = 0
    peak_connections: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0
    responses_by_status: dict[int, int] = field(default_factory=dict)
    connections_refused_429: int = 0
    resets: int = 0

    def reset(self) -> None:
        """Zero the totals; gauges keep their current value and peaks restart from it."""
        self.requests = {}
        self.responses_by_status = {}
        self.connections_refused_429 = 0
        self.resets = 0
        self.peak_connections = self.open_connections
        self.peak_in_flight = self.in_flight

    def as_dict(self) -> dict[str, Any]:
        """A plain dict copy (``responses_by_status`` keeps int keys; JSON makes them strings)."""
        return {
            "open_connections": self.open_connections,
            "peak_connections": self.peak_connections,
            "requests": dict(self.requests),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "responses_by_status": dict(self.responses_by_status),
            "connections_refused_429": self.connections_refused_429,
            "resets": self.resets,
        }

    def connection_opened(self) -> None:
        self.open_connections += 1
        self.peak_connections = max(self.peak_connections, self.open_connections)

    def connection_closed(self) -> None:
        self.open_connections -= 1

    def request_started(self, kind: str) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def request_finished(self) -> None:
        self.in_flight -= 1

    def responded(self, status: int) -> None:
        self.responses_by_status[status] = self.responses_by_status.get(status, 0) + 1
