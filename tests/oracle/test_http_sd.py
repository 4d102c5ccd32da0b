"""What ``consul-sd discover --listen`` serves carries exactly the labels of Prometheus's own
consul_sd, on a real agent, read by a real Prometheus through ``http_sd_configs``.

One Prometheus v3 runs the consul_sd job against the fleet agent (the reference) next to one
``http_sd_configs`` job per mode (Polling, Blocking, Auto), each pointed at its own
``consul-sd discover --listen`` process. ``__meta_url`` (the job's URL) is dropped before
comparing. Prometheus's HTTP SD client does not ask for gzip (prometheus/common's HTTP client
sets ``DisableCompression``), so it reads the plain JSON; the gzip answer other clients get is
checked here to hold the same bytes.
"""

from __future__ import annotations

import gzip
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.oracle.conftest import FLEET_TARGETS
from tests.oracle.harness import (
    MODES,
    Discoverer,
    consul_job,
    count_is,
    http_job,
    prometheus_config,
    wait_for_agreement,
)
from tests.support.components import ConsulAgent, Prometheus, free_port

pytestmark = pytest.mark.e2e


def test_every_mode_served_over_http_sd_matches_prometheus_consul_sd(
    fleet_agent: ConsulAgent,
    prometheus_factory: Callable[..., Prometheus],
    discoverers: Callable[..., Discoverer],
    tmp_path: Path,
) -> None:
    server = fleet_agent.address
    jobs = [consul_job("consul", server)]
    processes, urls = [], []
    for mode in MODES:
        listen = f"127.0.0.1:{free_port()}"
        processes.append(discoverers(server, tmp_path / f"{mode}.json", mode, "--listen", listen))
        urls.append(f"http://{listen}/targets")
        jobs.append(http_job(f"http-{mode}", urls[-1]))
    prometheus = prometheus_factory(prometheus_config(jobs))

    wait_for_agreement(
        prometheus,
        reference="consul",
        jobs=[f"http-{mode}" for mode in MODES],
        expect=count_is(FLEET_TARGETS),
        what="every http_sd job to equal consul_sd",
    )
    for process, url in zip(processes, urls, strict=True):
        process.assert_running()
        assert gzip.decompress(fetch(url, accept="gzip")) == fetch(url, accept="identity")


def fetch(url: str, *, accept: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept-Encoding": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        encoding = response.headers.get("Content-Encoding")
        assert encoding == (None if accept == "identity" else accept)
        body: bytes = response.read()
        return body
