"""The operator's own Prometheus metrics (prometheus-client), served on ``--metrics-port``.

Label sets are bounded: per CR (namespace, name), per Consul endpoint kind and outcome, per
output kind; never per Consul service, which could be tens of thousands of series.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

CYCLES = Counter(
    "consul_sd_publications_total",
    "Snapshots published by discovery workers (a polling cycle, or a blocking-mode change).",
    ["namespace", "name", "mode"],
)
CYCLE_DURATION = Histogram(
    "consul_sd_cycle_duration_seconds",
    "Duration of a polling cycle: catalog listing plus every service fetch.",
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


def forget(namespace: str, name: str) -> None:
    """Drop a deleted CR's gauges so they do not report forever."""
    for gauge in (TARGETS, SERVICES, FAILED_SERVICES):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
