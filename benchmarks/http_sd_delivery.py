"""Issue 14's delivery benchmark: ConfigMap, static ScrapeConfig and HTTP SD side by side.

    python -m benchmarks.http_sd_delivery [--services 7000] [--instances 3] [--readers 4]
        [--window 120]

One run, one kube-apiserver + etcd, prometheus-operator (hack/bins), the Consul simulator
(``--services`` x ``--instances``, Polling, maxConcurrent 100), one form at a time in its own
namespace with its own simulator and operator (``--namespace`` scoped):

- bytes written to the apiserver (kube-apiserver's ``apiserver_request_body_size_bytes_sum``
  for configmaps and scrapeconfigs, every verb but reads) for the full sync and for one more
  instance registered in Consul;
- ScrapeConfig forms: the rendered ``prometheus-main`` Secret (gzipped as stored), a real
  Prometheus run from it (tests/e2e/prometheus_delivery.ConfigMirror plays the config reloader),
  its config and scrape pool reloads for the change, its RSS, and the seconds from the Consul
  change to the target in Prometheus;
- ConfigMap form: the seconds until the ConfigMap holds the change; no kubelet runs here, so the
  Prometheus side adds the kubelet's documented 60-90 s refresh of a mounted ConfigMap;
- HTTP SD serving cost: the operator's CPU seconds and peak RSS over ``--window`` seconds without
  readers, then over ``--window`` seconds while ``--readers`` more Prometheus servers fetch its
  endpoint every 15 s (the operator keeps polling Consul in both windows).

Results: ``benchmarks/results/<date>-http-sd-delivery.{json,md}``. Measured, never asserted.
Limits: everything on 127.0.0.1 (the ScrapeConfigs relabel targets to a closed local port and
scrape every 5 m); every wait is bounded; the machine's 2 cores run all processes, so times are
this machine's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from tests.e2e.operator_harness import (
    CRD_FILE,
    Operator,
    Simulator,
    api_client,
    create_cr,
    create_prometheus_cr,
)
from tests.e2e.prometheus_delivery import (
    POOL_RELOADS,
    RELOAD_TIMESTAMP,
    ConfigMirror,
    discovery_body,
    metric_samples,
    metric_value,
    pool_targets,
    ready_with,
    reload_state,
    rendered_config,
    start_operator,
    wait_for,
)
from tests.support.components import (
    ControlPlane,
    Prometheus,
    PrometheusOperator,
    apply_crds,
    free_port,
    install_crds,
)

from benchmarks import procfs

RESULTS = Path(__file__).resolve().parent / "results"
WRITTEN_RESOURCES = ("configmaps", "scrapeconfigs")
FORMS = ("ConfigMap", "Static", "HTTPSD")


def apiserver_bytes_written(plane: ControlPlane) -> float:
    """Request body bytes the apiserver received for our output kinds (every write verb)."""
    answer = plane.request("GET", "/metrics", timeout=60)
    total = 0.0
    for family_line in answer.text.splitlines():
        if not family_line.startswith("apiserver_request_body_size_bytes_sum{"):
            continue
        labels, _, value = family_line.rpartition(" ")
        if any(f'resource="{r}"' in labels for r in WRITTEN_RESOURCES) and "verb=" in labels:
            total += float(value)
    return total


def new_namespace(plane: ControlPlane) -> str:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    answer = plane.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    if answer.status != 201:
        raise RuntimeError(f"namespace {name}: {answer.status} {answer.text[:200]}")
    return name


def register_one_more(sim: Simulator) -> None:
    sim.register(
        {
            "Node": "node-new",
            "Address": "10.200.0.1",
            "Service": {"ID": "svc-00042-new", "Service": "svc-00042", "Port": 9999},
        }
    )


def config_map_holds_new(api: k8s.ApiClient, namespace: str) -> bool | None:
    """Whether a ConfigMap of the ``fleet`` CR already lists the new instance."""
    items = (
        k8s.CoreV1Api(api)
        .list_namespaced_config_map(namespace, label_selector="consul-sd.io/discovery=fleet")
        .items
    )
    found = any("svc-00042-new" in v for i in items for v in (i.data or {}).values())
    return True if found else None


def prometheus_side(
    *, plane: ControlPlane, namespace: str, workdir: Path, targets: int, stack: ExitStack
) -> tuple[Prometheus, ConfigMirror, dict[str, Any]]:
    """Prometheus CR -> rendered Secret -> a real Prometheus holding every target."""
    create_prometheus_cr(api_client(plane), namespace)
    rendered, render_s = wait_for(
        lambda: rendered_config(plane, namespace=namespace, prometheus="main"),
        timeout=600,
        what="the rendered Secret",
    )
    prometheus = Prometheus(rendered.text)
    prometheus.start(workdir / f"prometheus-{namespace}", timeout=300)
    stack.callback(prometheus.stop)
    job = f"scrapeConfig/{namespace}/"
    _, targets_s = wait_for(
        lambda: (
            True if pool_targets(metric_samples(prometheus), job_prefix=job) == targets else None
        ),
        timeout=600,
        what="every target in Prometheus",
    )
    mirror = ConfigMirror(plane, prometheus, namespace, "main", running_text=rendered.text)
    mirror.start()
    stack.callback(mirror.stop)
    figures = {
        "secret_bytes_gzipped": rendered.stored_bytes,
        "secret_bytes_yaml": len(rendered.text.encode()),
        "render_seconds": round(render_s, 1),
        "targets_in_prometheus_seconds": round(targets_s, 1),
    }
    return prometheus, mirror, figures


def change_in_prometheus(
    prometheus: Prometheus, *, namespace: str, sim: Simulator, targets: int
) -> dict[str, Any]:
    """Register one instance; seconds until Prometheus holds it, and what it reloaded."""
    before = reload_state(prometheus)
    started = time.monotonic()
    register_one_more(sim)
    job = f"scrapeConfig/{namespace}/"
    wait_for(
        lambda: (
            True
            if pool_targets(metric_samples(prometheus), job_prefix=job) == targets + 1
            else None
        ),
        timeout=600,
        what="the new instance in Prometheus",
    )
    seconds = time.monotonic() - started
    time.sleep(30)  # a late re-render would still reload: count it
    after = reload_state(prometheus)
    return {
        "change_to_prometheus_seconds": round(seconds, 1),
        "config_reloads_per_change": int(after[RELOAD_TIMESTAMP] != before[RELOAD_TIMESTAMP]),
        "scrape_pool_reloads_per_change": after[POOL_RELOADS] - before[POOL_RELOADS],
        "prometheus_rss_mib": round(
            metric_value(metric_samples(prometheus), "process_resident_memory_bytes") / 2**20
        ),
    }


def run_form(
    form: str, *, plane: ControlPlane, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One form from an empty namespace to one change delivered; its figures."""
    targets = args.services * args.instances
    namespace = new_namespace(plane)
    api = api_client(plane)
    figures: dict[str, Any] = {"form": form}
    with ExitStack() as stack:
        sim = Simulator(workdir, services=args.services, instances=args.instances, nodes=400)
        stack.callback(sim.stop)
        operator = start_operator(plane, workdir, form=form, namespace=namespace)
        stack.callback(operator.stop)
        written = apiserver_bytes_written(plane)
        body = discovery_body("fleet", form=form, server=sim.address, closed_port=free_port())
        create_cr(api, namespace, body)
        _, ready_s = wait_for(
            lambda: ready_with(api, namespace, "fleet", targets), timeout=600, what="Ready"
        )
        figures["ready_seconds"] = round(ready_s, 1)
        figures["apiserver_bytes_full_sync"] = apiserver_bytes_written(plane) - written
        if form == "ConfigMap":
            written = apiserver_bytes_written(plane)
            started = time.monotonic()
            register_one_more(sim)
            wait_for(lambda: config_map_holds_new(api, namespace), timeout=300, what="change")
            figures["change_to_configmap_seconds"] = round(time.monotonic() - started, 1)
            figures["kubelet_configmap_refresh_seconds"] = "60-90 (documented, not measured)"
        else:
            prometheus, mirror, seen = prometheus_side(
                plane=plane, namespace=namespace, workdir=workdir, targets=targets, stack=stack
            )
            figures.update(seen)
            written = apiserver_bytes_written(plane)
            figures.update(
                change_in_prometheus(prometheus, namespace=namespace, sim=sim, targets=targets)
            )
            figures["config_reloader_reloads"] = len(mirror.reloads)
        figures["apiserver_bytes_one_change"] = apiserver_bytes_written(plane) - written
        if form == "HTTPSD":
            figures.update(serving_cost(operator, namespace=namespace, workdir=workdir, args=args))
    return figures


def reader_config(operator: Operator, namespace: str) -> dict[str, Any]:
    """A Prometheus that fetches the operator's endpoint every 15 s (and scrapes nothing)."""
    return {
        "global": {"scrape_interval": "5m"},
        "scrape_configs": [
            {
                "job_name": "consul-sd",
                "http_sd_configs": [
                    {
                        "url": f"http://127.0.0.1:{operator.metrics_port}"
                        f"/targets/{namespace}/fleet",
                        "refresh_interval": "15s",
                    }
                ],
                "relabel_configs": [
                    {"target_label": "__address__", "replacement": f"127.0.0.1:{free_port()}"},
                    {"source_labels": ["__meta_consul_service_id"], "target_label": "service_id"},
                ],
            }
        ],
    }


def cpu_and_peak_rss(pid: int, *, seconds: float) -> tuple[float, int]:
    """CPU seconds ``pid`` used over the next ``seconds``, and its peak RSS (sampled each 1 s)."""
    cpu = procfs.cpu_seconds(pid)
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, procfs.rss_bytes(pid))
        time.sleep(1)
    return procfs.cpu_seconds(pid) - cpu, peak


def serving_cost(
    operator: Operator, *, namespace: str, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The operator's CPU and RSS while ``--readers`` Prometheus servers fetch every 15 s.

    A window without readers first: the operator also polls Consul (refreshInterval 5s) the
    whole time, so the serving cost is the difference between the two windows.
    """
    pid = operator.process.pid
    idle_cpu, idle_peak = cpu_and_peak_rss(pid, seconds=args.window)
    readers: list[Prometheus] = []
    with ExitStack() as stack:
        for i in range(args.readers):
            reader = Prometheus(reader_config(operator, namespace))
            reader.start(workdir / f"reader-{namespace}-{i}", timeout=300)
            stack.callback(reader.stop)
            readers.append(reader)
        busy_cpu, busy_peak = cpu_and_peak_rss(pid, seconds=args.window)
        holding = [pool_targets(metric_samples(r), job_prefix="consul-sd") for r in readers]
    per_minute = 60 / args.window
    return {
        "serving_readers": args.readers,
        "targets_held_by_each_reader": sorted(set(holding)),
        "serving_window_seconds": args.window,
        "operator_cpu_s_per_min_without_readers": round(idle_cpu * per_minute, 2),
        "operator_cpu_s_per_min_with_readers": round(busy_cpu * per_minute, 2),
        "operator_peak_rss_mib_without_readers": round(idle_peak / 2**20),
        "operator_peak_rss_mib_with_readers": round(busy_peak / 2**20),
    }


@contextmanager
def cluster(workdir: Path) -> Iterator[ControlPlane]:
    """kube-apiserver + etcd with both CRD sets, and prometheus-operator, stopped after."""
    plane = ControlPlane()
    plane.start(workdir / "control-plane")
    operator = PrometheusOperator(plane)
    try:
        install_crds(plane)
        apply_crds(plane, [yaml.safe_load(CRD_FILE.read_text())], field_manager="bench")
        operator.start(workdir / "prometheus-operator")
        yield plane
    finally:
        operator.stop()
        plane.stop()


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "form"))
    lines = ["| figure | " + " | ".join(str(r["form"]) for r in rows) + " |"]
    lines.append("|---|" + "---|" * len(rows))
    lines += [f"| {k} | " + " | ".join(str(r.get(k, "-")) for r in rows) + " |" for k in keys]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_sd_delivery")
    parser.add_argument("--services", type=int, default=7000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--readers", type=int, default=4, help="Prometheus servers for HTTP SD")
    parser.add_argument("--window", type=float, default=120.0, help="serving window, seconds")
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated subset")
    args = parser.parse_args(argv)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="http-sd-delivery-") as tmp,
        cluster(Path(tmp)) as plane,
    ):
        for form in args.forms.split(","):
            print(f"== {form}", flush=True)
            rows.append(run_form(form, plane=plane, workdir=Path(tmp), args=args))
            print(json.dumps(rows[-1]), flush=True)
    stem = RESULTS / f"{datetime.date.today().isoformat()}-http-sd-delivery"
    RESULTS.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"args": vars(args), "forms": rows}, indent=1))
    stem.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
