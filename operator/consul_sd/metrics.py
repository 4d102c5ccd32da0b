"""The operator's own Prometheus metrics (prometheus-client), served on ``--metrics-port``.

Label sets are bounded: per CR (namespace, name), per Consul endpoint kind and outcome, per
output kind; never per Consul service, which could be tens of thousands of series. Every metric
is labelled by CR first, and :func:`forget` drops all series of a deleted CR, so deleting CRs
never leaves series behind.

The per-publication metrics and the alerting ones (issue 17) are set through
:class:`SyncTracker`, so the operator's runner and the CLI's ``--listen`` keep one rule: the last
successful sync (:func:`mark_synced`, with the age of the targets being served) moves on a
complete publication that was written, and on every Consul answer while the latest one was also
free of failed services (Blocking publishes only on change; its long-polls answering unchanged
are what confirm a quiet fleet). :func:`set_degraded` keeps one 0/1 series per reason a CR has
been Degraded with; :func:`set_output_sizes` the outputs' bytes against their limit. Reasons are
the status vocabulary (CamelCase words), never free text, so they are bounded and hold no secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from consul_sd.discovery.snapshots import Snapshot

CYCLES = Counter(
    "consul_sd_publications_total",
    "Snapshots published by discovery workers (a polling cycle, or a blocking-mode change); "
    'mode="Auto" before Auto chose a mode.',
    ["namespace", "name", "mode"],
)
CYCLE_DURATION = Histogram(
    "consul_sd_cycle_duration_seconds",
    "How long the discovery behind a published snapshot took, in every mode (in Polling: the "
    "catalog listing plus every service fetch).",
    ["namespace", "name"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
CONSUL_REQUESTS = Counter(
    "consul_sd_consul_requests_total",
    "Requests sent to Consul, by endpoint kind and outcome (ok, an HTTP status, or a reason).",
    ["namespace", "name", "endpoint", "outcome"],
)
TARGETS = Gauge(
    "consul_sd_targets",
    "Targets in the latest published snapshot.",
    ["namespace", "name"],
)
SERVICES = Gauge(
    "consul_sd_services",
    "Matched Consul services in the latest published snapshot.",
    ["namespace", "name"],
)
FAILED_SERVICES = Gauge(
    "consul_sd_failed_services",
    "Services whose latest fetch failed (their previous targets are kept).",
    ["namespace", "name"],
)
OUTPUT_WRITES = Counter(
    "consul_sd_output_writes_total",
    "Output object writes, by kind and outcome (written, unchanged, deleted, error).",
    ["namespace", "name", "kind", "outcome"],
)

LAST_SUCCESS = Gauge(
    "consul_sd_last_success_timestamp_seconds",
    "When the targets were last confirmed complete and current (unix seconds): every successful "
    "complete publication, and every Consul answer while nothing has failed since one (so a quiet "
    "Blocking fleet moves it too).",
    ["namespace", "name"],
)
TARGETS_AGE = Gauge(
    "consul_sd_targets_age_seconds",
    "Seconds since the targets being served were last confirmed current (see "
    "consul_sd_last_success_timestamp_seconds), computed when scraped.",
    ["namespace", "name"],
)
SYNC_INTERVAL = Gauge(
    "consul_sd_sync_interval_seconds",
    "How often the targets are expected to be confirmed: refreshInterval in Polling, the larger "
    "of refreshInterval and watchTimeout otherwise. Alert on targets_age / sync_interval.",
    ["namespace", "name"],
)
DEGRADED = Gauge(
    "consul_sd_degraded",
    "1 while the CR is Degraded with this reason, 0 for each reason it was Degraded with before.",
    ["namespace", "name", "reason"],
)
CONSUL_ERRORS = Counter(
    "consul_sd_consul_request_errors_total",
    "Failed Consul requests, by status reason (ConsulUnreachable, ACLDenied, ...).",
    ["namespace", "name", "reason"],
)
OUTPUT_BYTES = Gauge(
    "consul_sd_output_bytes",
    "Bytes the outputs of this kind hold (every shard together).",
    ["namespace", "name", "kind"],
)
OUTPUT_LIMIT = Gauge(
    "consul_sd_output_limit_bytes",
    "Bytes the outputs of this kind can hold before writes fail with OutputTooLarge "
    "(ConfigMap: maxShards x maxShardBytes; ScrapeConfig: 256 objects of 1 MiB).",
    ["namespace", "name", "kind"],
)

# Every metric above, with its label names: all start with (namespace, name), and forget()
# clears each. A test fails when a metric of this module is missing here.
PER_DISCOVERY: tuple[tuple[Counter | Gauge | Histogram, tuple[str, ...]], ...] = (
    (CYCLES, ("namespace", "name", "mode")),
    (CYCLE_DURATION, ("namespace", "name")),
    (CONSUL_REQUESTS, ("namespace", "name", "endpoint", "outcome")),
    (TARGETS, ("namespace", "name")),
    (SERVICES, ("namespace", "name")),
    (FAILED_SERVICES, ("namespace", "name")),
    (OUTPUT_WRITES, ("namespace", "name", "kind", "outcome")),
    (LAST_SUCCESS, ("namespace", "name")),
    (TARGETS_AGE, ("namespace", "name")),
    (SYNC_INTERVAL, ("namespace", "name")),
    (DEGRADED, ("namespace", "name", "reason")),
    (CONSUL_ERRORS, ("namespace", "name", "reason")),
    (OUTPUT_BYTES, ("namespace", "name", "kind")),
    (OUTPUT_LIMIT, ("namespace", "name", "kind")),
)

# When each CR's targets were last confirmed (unix seconds), read by its age gauge at scrape.
_synced_at: dict[tuple[str, str], float] = {}


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted CR, whatever its other labels (endpoint, outcome, kind).

    prometheus-client (before 0.23) removes a series only by its full label values, so they
    are read back from the metric's own samples (a histogram's buckets add ``le``, dropped here).
    """
    for metric, label_names in PER_DISCOVERY:
        owned = {
            tuple(sample.labels[label] for label in label_names)
            for family in metric.collect()
            for sample in family.samples
            if sample.labels.get("namespace") == namespace and sample.labels.get("name") == name
        }
        for values in owned:
            metric.remove(*values)
    _synced_at.pop((namespace, name), None)


def _series(metric: Gauge | Counter, namespace: str, name: str, label: str) -> set[str]:
    """The values of ``label`` this CR has series for in ``metric``."""
    return {
        sample.labels[label]
        for family in metric.collect()
        for sample in family.samples
        if sample.labels.get("namespace") == namespace and sample.labels.get("name") == name
    }


# The wall clock of the last-success timestamps; tests in virtual time replace it.
wall_clock: Callable[[], float] = time.time


def mark_synced(namespace: str, name: str) -> None:
    """The CR's targets are confirmed complete and current now; its age restarts from 0."""
    key = (namespace, name)
    _synced_at[key] = now = wall_clock()
    LAST_SUCCESS.labels(namespace, name).set(now)

    def age() -> float:
        return max(0.0, wall_clock() - _synced_at.get(key, now))

    TARGETS_AGE.labels(namespace, name).set_function(age)


def set_degraded(namespace: str, name: str, reason: str | None) -> None:
    """1 for ``reason`` (None: healthy), 0 for every other reason this CR had a series for."""
    for earlier in _series(DEGRADED, namespace, name, "reason"):
        if earlier != reason:
            DEGRADED.labels(namespace, name, earlier).set(0)
    if reason is not None:
        DEGRADED.labels(namespace, name, reason).set(1)


# Consul HTTP statuses as the status reasons consul_sd.consul.client gives them (the observer
# sees the status; 500 "No path to datacenter" and a filter Consul cannot compile are counted
# as ConsulServerError here, their status reason says more).
_STATUS_REASONS = {"400": "ConsulBadRequest", "403": "ACLDenied", "429": "ConsulRateLimited"}


def error_reason(outcome: str) -> str:
    """The reason label of a failed request's outcome (an HTTP status, or already a reason)."""
    if not outcome.isdigit():
        return outcome
    if outcome in _STATUS_REASONS:
        return _STATUS_REASONS[outcome]
    return "ConsulServerError" if outcome.startswith("5") else "ConsulError"


def count_consul_error(namespace: str, name: str, outcome: str) -> None:
    CONSUL_ERRORS.labels(namespace, name, error_reason(outcome)).inc()


def set_output_sizes(namespace: str, name: str, sizes: dict[str, tuple[int, int]]) -> None:
    """``kind -> (bytes held, limit)``; a kind the CR no longer writes loses its series."""
    for metric in (OUTPUT_BYTES, OUTPUT_LIMIT):
        for kind in _series(metric, namespace, name, "kind") - set(sizes):
            metric.remove(namespace, name, kind)
    for kind, (size, limit) in sizes.items():
        OUTPUT_BYTES.labels(namespace, name, kind).set(size)
        OUTPUT_LIMIT.labels(namespace, name, kind).set(limit)


class SyncTracker:
    """One discovery's per-publication metrics and its last-success rule.

    :meth:`observe` is the Consul client's request observer; :meth:`published` takes every
    snapshot the worker publishes, with whether it was written (to the outputs, or served).
    """

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        # The latest publication was complete, written, and had no failed service: until the
        # next one, every Consul answer confirms the targets are still current.
        self.in_sync = False
        self.written_once = False
        # When the targets were last confirmed (wall_clock), None before the first time.
        self.synced_at: float | None = None

    def observe(self, *, endpoint: str, outcome: str, seconds: float) -> None:
        CONSUL_REQUESTS.labels(self.namespace, self.name, endpoint, outcome).inc()
        if outcome != "ok":
            count_consul_error(self.namespace, self.name, outcome)
        elif self.in_sync:
            self._synced()

    def _synced(self) -> None:
        mark_synced(self.namespace, self.name)
        self.synced_at = _synced_at[(self.namespace, self.name)]

    def published(self, snapshot: Snapshot, *, written: bool) -> None:
        """A publication; not one carrying the catalog's error, even if "complete".

        Blocking calls a snapshot complete when the catalog fails after every service answered,
        yet nothing then confirms the list of services.
        """
        ns, cr = self.namespace, self.name
        # Auto publishes before it chose a mode only when Consul failed from the start.
        CYCLES.labels(ns, cr, snapshot.mode or "Auto").inc()
        if snapshot.duration:  # every mode, as lastSyncDuration
            CYCLE_DURATION.labels(ns, cr).observe(snapshot.duration)
        if written:
            self.written_once = True
            TARGETS.labels(ns, cr).set(snapshot.targets)
        SERVICES.labels(ns, cr).set(snapshot.matched)
        FAILED_SERVICES.labels(ns, cr).set(len(snapshot.failed))
        success = written and snapshot.complete and snapshot.error is None
        if success:
            self._synced()
        self.in_sync = success and not snapshot.failed
