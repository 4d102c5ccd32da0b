"""What the HTTP SD tests against a real Prometheus share: the operator on a fixed port, the
Prometheus jobs that read its endpoint, samplers of Prometheus's active targets and of the
endpoint's answers.

The operator is restarted on the port Prometheus was configured with (``--metrics-port`` given
again after the harness's own: argparse keeps the last), so Prometheus keeps fetching the same
URL across the restart, as it does through a Kubernetes Service. Every address is 127.0.0.1;
every wait is bounded.

Limits: a sampler sees only what its probe returns at each interval, so a drop shorter than
the gap between two samples can go unseen; Prometheus itself applies discovery updates at
most every 5 s, so any drop it makes lasts at least that long.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tests.e2e.operator_harness import Operator
from tests.support.components import ComponentError, ControlPlane, Prometheus

# Any scrape goes to the discard port on loopback, whatever address Consul holds.
SCRAPE_ADDRESS = "127.0.0.1:9"
_T = TypeVar("_T")


def start_operator(
    control_plane: ControlPlane, workdir: Path, *, port: int, namespace: str
) -> Operator:
    """The operator watching ``namespace``, serving /targets on ``port`` (the same every start)."""
    operator = Operator(
        control_plane, workdir, "--metrics-port", str(port), scope=("--namespace", namespace)
    )
    operator.metrics_port = port  # the flag given last is the one the operator uses
    return operator


def http_sd_job(
    name: str, url: str, *, refresh: str = "1s", token: str | None = None
) -> dict[str, Any]:
    """A job reading HTTP SD from ``url``; node and service ID kept apart as target labels.

    Without the copied labels Prometheus would merge targets whose relabeled addresses (all
    ``SCRAPE_ADDRESS``) and other labels are equal, and the active count would undercount.
    """
    sd: dict[str, Any] = {"url": url, "refresh_interval": refresh}
    if token is not None:
        sd["authorization"] = {"type": "Bearer", "credentials": token}
    return {
        "job_name": name,
        "http_sd_configs": [sd],
        "relabel_configs": [
            {"source_labels": ["__meta_consul_node"], "target_label": "consul_node"},
            {"source_labels": ["__meta_consul_service_id"], "target_label": "consul_service_id"},
            {"target_label": "__address__", "replacement": SCRAPE_ADDRESS},
        ],
    }


def fetch_status(url: str, *, token: str | None = None) -> tuple[int | None, bytes]:
    """GET ``url``: (status, body); status None when nothing answers (refused, reset, timeout)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())
    except OSError:
        return None, b""


@dataclass(frozen=True)
class Sample(Generic[_T]):
    at: float  # seconds since the sampler started
    value: _T


class Sampler(Generic[_T]):
    """``probe()`` every ``interval`` seconds in a thread, from now until :meth:`stop`.

    Bounded: the thread stops by itself after ``limit`` seconds if ``stop`` is never called.
    """

    def __init__(self, probe: Callable[[], _T], *, interval: float, limit: float = 300.0) -> None:
        self._probe = probe
        self._interval = interval
        self._limit = limit
        self._start = time.monotonic()
        self._stopping = threading.Event()
        self.samples: list[Sample[_T]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set() and time.monotonic() - self._start < self._limit:
            self.samples.append(Sample(time.monotonic() - self._start, self._probe()))
            self._stopping.wait(self._interval)

    def stop(self) -> list[Sample[_T]]:
        self._stopping.set()
        self._thread.join(15)
        return list(self.samples)


def active_targets(prometheus: Prometheus, job: str) -> int | None:
    """How many active targets ``job`` has in Prometheus (None: Prometheus did not answer)."""
    try:
        targets = prometheus.targets("active")
    except (ComponentError, OSError, ValueError):
        return None
    return sum(1 for target in targets if target["scrapePool"] == job)


Answer = tuple[int | None, int | None]
"""An endpoint's answer: (status or None when nothing answered, targets when 200 else None)."""


def endpoint_answer(url: str) -> Answer:
    status, body = fetch_status(url)
    if status != 200:
        return status, None
    groups = json.loads(body)
    return status, sum(len(group["targets"]) for group in groups)


def timeline(samples: Sequence[Sample[Any]]) -> str:
    """Samples as ``at:value``, runs of one value collapsed, for failure messages and logs."""
    parts: list[str] = []
    previous: object = object()
    for sample in samples:
        if sample.value != previous:
            parts.append(f"{sample.at:.1f}s:{sample.value}")
            previous = sample.value
    return " ".join(parts)
