"""The operator's own Prometheus metrics (prometheus-client), served on ``--metrics-port``.

Label sets are bounded: per CR (namespace, name), per Consul endpoint kind and outcome, per
output kind; never per Consul service, which could be tens of thousands of series. Every metric
is labelled by CR first, and :func:`forget` drops all series of a deleted CR, so deleting CRs
never leaves series behind.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
)


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
