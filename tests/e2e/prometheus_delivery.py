"""Getting prometheus-operator's rendered config into a real Prometheus, and reading its figures.

Role: what the delivery e2e test (tests/e2e/test_http_sd_scale.py) needs besides the shared
harness: read the ``prometheus-<name>`` Secret prometheus-operator renders (its stored, gzipped
size and its YAML), play prometheus-config-reloader (``ConfigMirror``: copy the Secret's config
into a Prometheus process's config file and ``POST /-/reload`` whenever it changes, as the
sidecar does in a pod), and read Prometheus's own ``/metrics`` (reloads, scrape pool sizes);
plus the ConsulDiscovery, operator and Prometheus CR set-up the delivery test and
benchmarks/http_sd_delivery.py share.

Limits: no kubelet runs here, so the Secret reaches Prometheus through ``ConfigMirror``'s poll
(every ``interval``), not a mounted volume; only the ``prometheus.yaml.gz`` key is mirrored
(no rule files, no web config, no TLS assets). Everything is 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import base64
import gzip
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.operator_harness import Operator, get_cr, sample_cr
from tests.support.components import ControlPlane, Prometheus, free_port, http_request

CONFIG_KEY = "prometheus.yaml.gz"
MONITORING = ("monitoring.coreos.com", "v1alpha1")
RELOAD_TIMESTAMP = "prometheus_config_last_reload_success_timestamp_seconds"
RELOAD_OK = "prometheus_config_last_reload_successful"
POOL_RELOADS = "prometheus_target_scrape_pool_reloads_total"
_T = TypeVar("_T")


@dataclass(frozen=True)
class RenderedConfig:
    """The config prometheus-operator stored for one Prometheus, as stored and unpacked."""

    gzipped: bytes
    text: str
    resource_version: str

    @property
    def stored_bytes(self) -> int:
        """Size of the Secret's value as the apiserver holds it (gzip, before base64)."""
        return len(self.gzipped)


def rendered_config(plane: ControlPlane, *, namespace: str, prometheus: str) -> RenderedConfig:
    """The ``prometheus-<prometheus>`` Secret's config; KeyError while it is not written yet."""
    answer = plane.request(
        "GET", f"/api/v1/namespaces/{namespace}/secrets/prometheus-{prometheus}", timeout=60
    )
    if answer.status == 404:
        raise KeyError(f"secret prometheus-{prometheus} not written yet")
    if answer.status != 200:
        raise RuntimeError(f"reading the rendered Secret: {answer.status} {answer.text[:200]}")
    secret = answer.json()
    gzipped = base64.b64decode(secret["data"][CONFIG_KEY])
    return RenderedConfig(
        gzipped=gzipped,
        text=gzip.decompress(gzipped).decode(),
        resource_version=secret["metadata"]["resourceVersion"],
    )


Sample = tuple[str, Mapping[str, str], float]


def metric_samples(prometheus: Prometheus, *, timeout: float = 30) -> list[Sample]:
    """Every sample of Prometheus's own ``/metrics`` (text format)."""
    answer = http_request("GET", f"{prometheus.url}/metrics", timeout=timeout)
    if answer.status != 200:
        raise RuntimeError(f"Prometheus /metrics answered {answer.status}")
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    ]


def metric_value(samples: list[Sample], name: str) -> float:
    """Sum of every sample named ``name`` (0 when there is none)."""
    return sum(value for sample, _, value in samples if sample == name)


def pool_targets(samples: list[Sample], *, job_prefix: str) -> int:
    """Targets in the scrape pools whose job name starts with ``job_prefix``."""
    return int(
        sum(
            value
            for name, labels, value in samples
            if name == "prometheus_target_scrape_pool_targets"
            and labels.get("scrape_job", "").startswith(job_prefix)
        )
    )


@dataclass
class ConfigMirror:
    """prometheus-config-reloader's job: the rendered Secret's config into a running Prometheus.

    Polls the Secret every ``interval`` seconds from a daemon thread; when the unpacked config
    differs from what Prometheus runs, writes it and reloads. ``reloads`` records the monotonic
    time of every reload it made; ``errors`` what failed (a failed poll is retried).
    """

    plane: ControlPlane
    prometheus: Prometheus
    namespace: str
    name: str
    running_text: str
    interval: float = 1.0
    reloads: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="config-mirror", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                text = rendered_config(
                    self.plane, namespace=self.namespace, prometheus=self.name
                ).text
                if text != self.running_text:
                    self.prometheus.write_config(text)
                    self.prometheus.reload()
                    self.running_text = text
                    self.reloads.append(time.monotonic())
            except Exception as error:  # recorded and retried, as the sidecar does
                self.errors.append(f"{type(error).__name__}: {str(error)[:300]}")


def wait_for(
    check: Callable[[], _T | None], *, timeout: float, what: str, interval: float = 1.0
) -> tuple[_T, float]:
    """Poll ``check`` until it returns a value (not None); return it and the seconds it took.

    Exceptions of ``check`` count as "not yet" (the last one is in the timeout's message).
    """
    started = time.monotonic()
    last = "none"
    while True:
        try:
            found = check()
        except Exception as error:  # any failure of a poll is "not yet"
            last = f"{type(error).__name__}: {str(error)[:300]}"
            found = None
        if found is not None:
            return found, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last})")
        time.sleep(interval)


def discovery_body(name: str, *, form: str, server: str, closed_port: int) -> dict[str, Any]:
    """Polling, maxConcurrent 100, into one output: ``form`` Static, HTTPSD or ConfigMap.

    The ScrapeConfig forms relabel every target to a closed 127.0.0.1 port (the discovered
    address stays in ``instance``) and scrape every 5 m: nothing is scraped off the machine.
    """
    scrape_config: dict[str, Any] = {
        "name": name,
        "labels": {"prometheus": "main"},
        "scrapeInterval": "5m",
        "relabelings": [
            {"sourceLabels": ["__meta_consul_service"], "targetLabel": "service"},
            # Service IDs are unique in the simulator's fleet; addresses (node:port) are not.
            {"sourceLabels": ["__meta_consul_service_id"], "targetLabel": "service_id"},
            {"sourceLabels": ["__address__"], "targetLabel": "instance"},
            {"targetLabel": "__address__", "replacement": f"127.0.0.1:{closed_port}"},
        ],
    }
    output: dict[str, Any] = {"scrapeConfig": scrape_config}
    if form == "ConfigMap":
        output = {"configMap": {"name": name}}
    # Static is the default: left out, as the CRs written before issue 14 leave it out.
    if form == "HTTPSD":
        scrape_config["targetsFrom"] = "HTTPSD"
        output["httpSD"] = {"refreshInterval": "5s"}
    return sample_cr(
        name,
        server=server,
        mode="Polling",
        maxConcurrent=100,
        refreshInterval="5s",
        output=output,
    )


def start_operator(plane: ControlPlane, workdir: Path, *, form: str, namespace: str) -> Operator:
    """The operator watching ``namespace``; for HTTPSD its metrics port is its --http-sd-url."""
    if form != "HTTPSD":
        return Operator(plane, workdir, scope=("--namespace", namespace))
    port = free_port()
    extra = ("--metrics-port", str(port), "--http-sd-url", f"http://127.0.0.1:{port}")
    # The last --metrics-port wins (argparse), so the operator serves on ``port``.
    running = Operator(plane, workdir, *extra, scope=("--namespace", namespace))
    running.metrics_port = port
    return running


def scrape_configs(api: k8s.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
        *MONITORING, namespace, "scrapeconfigs", label_selector=f"consul-sd.io/discovery={name}"
    )["items"]
    return items


def reload_state(prometheus: Prometheus) -> dict[str, float]:
    samples = metric_samples(prometheus)
    return {
        name: metric_value(samples, name) for name in (RELOAD_TIMESTAMP, RELOAD_OK, POOL_RELOADS)
    }


def ready_with(
    api: k8s.ApiClient, namespace: str, name: str, targets: int
) -> dict[str, Any] | None:
    cr = get_cr(api, namespace, name)
    status = cr.get("status") or {}
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
    )
    return cr if ready and status.get("targets") == targets else None
