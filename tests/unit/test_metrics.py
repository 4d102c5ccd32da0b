"""The operator's metrics forget a deleted CR completely (issue 10: 857 series were left behind
after deleting 50 CRs)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest

from consul_sd import metrics


def every_metric() -> list[Counter | Gauge | Histogram]:
    return [m for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)]


def publish_everything_for(namespace: str, name: str) -> None:
    """A series in every metric for this CR, with several values of the extra labels."""
    for metric in every_metric():
        extra = len(metric._labelnames) - 2  # namespace and name come first
        for variant in ("a", "b"):
            values = (namespace, name, *[variant] * extra)
            if isinstance(metric, Histogram):
                metric.labels(*values).observe(1.5)
            elif isinstance(metric, Gauge):
                metric.labels(*values).set(3)
            else:
                metric.labels(*values).inc()


def series_of(name: str) -> list[str]:
    text = generate_latest(REGISTRY).decode()
    return [line for line in text.splitlines() if f'name="{name}"' in line]


def test_every_metric_is_labelled_by_cr_and_known_to_forget() -> None:
    known = {id(metric) for metric, _ in metrics.PER_DISCOVERY}
    for metric in every_metric():
        assert id(metric) in known, metric
        assert metric._labelnames[:2] == ("namespace", "name"), metric


def test_forgetting_a_cr_removes_every_series_it_had_and_no_other() -> None:
    publish_everything_for("ns-1", "deleted-cr")
    publish_everything_for("ns-1", "kept-cr")
    publish_everything_for("ns-2", "deleted-cr")  # the same name in another namespace stays
    assert series_of("deleted-cr")

    metrics.forget("ns-1", "deleted-cr")

    assert all('namespace="ns-2"' in line for line in series_of("deleted-cr"))
    assert len(series_of("kept-cr")) == len(series_of("deleted-cr"))
    metrics.forget("ns-1", "kept-cr")
    metrics.forget("ns-2", "deleted-cr")
    assert series_of("kept-cr") == series_of("deleted-cr") == []


def degraded_series(namespace: str, name: str) -> dict[str, float]:
    return {
        sample.labels["reason"]: sample.value
        for family in metrics.DEGRADED.collect()
        for sample in family.samples
        if sample.labels["namespace"] == namespace and sample.labels["name"] == name
    }


def test_degraded_is_one_for_the_current_reason_and_zero_for_earlier_ones() -> None:
    metrics.set_degraded("ns", "degraded-cr", "ConsulUnreachable")
    metrics.set_degraded("ns", "degraded-cr", "ACLDenied")
    assert degraded_series("ns", "degraded-cr") == {"ConsulUnreachable": 0, "ACLDenied": 1}
    metrics.set_degraded("ns", "degraded-cr", None)
    assert degraded_series("ns", "degraded-cr") == {"ConsulUnreachable": 0, "ACLDenied": 0}
    metrics.forget("ns", "degraded-cr")


def test_a_cr_never_degraded_has_no_degraded_series() -> None:
    metrics.set_degraded("ns", "healthy", None)
    assert degraded_series("ns", "healthy") == {}


def test_failed_requests_are_counted_by_the_reason_the_status_would_show() -> None:
    assert metrics.error_reason("ConsulUnreachable") == "ConsulUnreachable"
    assert metrics.error_reason("403") == "ACLDenied"
    assert metrics.error_reason("429") == "ConsulRateLimited"
    assert metrics.error_reason("400") == "ConsulBadRequest"
    assert metrics.error_reason("503") == "ConsulServerError"
    assert metrics.error_reason("404") == "ConsulError"


def test_the_targets_age_is_computed_when_scraped_and_forgotten_with_the_cr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [500.0]
    monkeypatch.setattr(metrics, "wall_clock", lambda: now[0])
    metrics.mark_synced("ns", "aged")
    now[0] += 75
    labels = {"namespace": "ns", "name": "aged"}
    assert REGISTRY.get_sample_value("consul_sd_targets_age_seconds", labels) == 75
    assert REGISTRY.get_sample_value("consul_sd_last_success_timestamp_seconds", labels) == 500
    metrics.forget("ns", "aged")
    assert REGISTRY.get_sample_value("consul_sd_targets_age_seconds", labels) is None
