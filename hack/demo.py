"""`make demo`: the main job end to end on this machine, left running until `make demo-down`.

Builds (or reuses) kube-apiserver, etcd and Consul from their Go modules, showing progress,
before anything starts (so no start deadline includes a build), then starts them on
127.0.0.1, registers sample services in the Consul dev agent, installs the CRD, runs
`consul-sd operator` in the background, applies deploy/samples/demo.yaml, then prints the
discovered targets and the ConsulDiscovery status. State, logs and the kubeconfig live in .local/.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from tests.support import components  # noqa: E402

LOCAL = ROOT / ".local"
DEMO = LOCAL / "demo"
PID_FILE = DEMO / "operator.pid"
DEMO_COMPONENTS = ("etcd", "kube-apiserver", "consul")
SAMPLE_SERVICES: list[dict[str, Any]] = [
    {
        "Node": "web-1",
        "Address": "10.10.0.1",
        "NodeMeta": {"rack": "r1"},
        "Service": {
            "ID": "web-1",
            "Service": "web",
            "Port": 8080,
            "Tags": ["prod", "http"],
            "Meta": {"version": "1.4.2"},
        },
        "Check": {
            "CheckID": "web-1-http",
            "Name": "http",
            "Status": "passing",
            "ServiceID": "web-1",
        },
    },
    {
        "Node": "web-2",
        "Address": "10.10.0.2",
        "NodeMeta": {"rack": "r2"},
        "Service": {
            "ID": "web-2",
            "Service": "web",
            "Port": 8080,
            "Tags": ["prod", "http"],
            "Meta": {"version": "1.4.2"},
        },
        "Check": {
            "CheckID": "web-2-http",
            "Name": "http",
            "Status": "warning",
            "ServiceID": "web-2",
        },
    },
    {
        "Node": "db-1",
        "Address": "10.10.1.1",
        "Service": {
            "ID": "postgres-exporter",
            "Service": "postgres",
            "Port": 9187,
            "Address": "2001:db8::5",
            "Tags": ["db"],
        },
        "Check": {
            "CheckID": "pg",
            "Name": "pg",
            "Status": "critical",
            "ServiceID": "postgres-exporter",
        },
    },
    {
        "Node": "cache-1",
        "Address": "10.10.2.1",
        "Service": {"ID": "redis-exporter", "Service": "redis", "Port": 9121, "Tags": []},
    },
]


def run_operator(kubeconfig: Path) -> None:
    DEMO.mkdir(parents=True, exist_ok=True)
    if PID_FILE.exists():
        try:
            os.kill(int(PID_FILE.read_text()), 0)
            print("operator already running")
            return
        except (OSError, ValueError):
            pass
    log = (DEMO / "operator.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consul_sd.cli",
            "operator",
            "--standalone",
            "--all-namespaces",
            "--bind-address",
            "127.0.0.1",
            "--liveness-port",
            str(components.free_port()),
            "--metrics-port",
            str(components.free_port()),
        ],
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT / "operator")},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    PID_FILE.write_text(str(process.pid))


def up() -> int:
    # Every build first, with progress: start deadlines below then count start-up only.
    print(f"== components {', '.join(DEMO_COMPONENTS)} (built from Go modules the first time)")
    try:
        components.build(DEMO_COMPONENTS)
    except components.ComponentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("== control plane (kube-apiserver + etcd) and a Consul dev agent")
    subprocess.run(
        [sys.executable, "-m", "tests.support.components", "cluster-up"], check=True, cwd=ROOT
    )
    subprocess.run(
        [sys.executable, "-m", "tests.support.components", "consul-up"], check=True, cwd=ROOT
    )
    kubeconfig = LOCAL / "kubeconfig"
    consul_address = (LOCAL / "consul-address").read_text().strip()
    print(f"== registering {len(SAMPLE_SERVICES)} sample instances in Consul at {consul_address}")
    for body in SAMPLE_SERVICES:
        answer = components.http_request(
            "PUT", f"http://{consul_address}/v1/catalog/register", body=body
        )
        assert answer.status == 200, answer.text
    plane = components.ControlPlane.attach(LOCAL / "cluster")
    assert plane is not None, "the control plane is not running"
    crd = yaml.safe_load((ROOT / "deploy/crds/consul-sd.io_consuldiscoveries.yaml").read_text())
    components.apply_crds(plane, [crd], field_manager="demo")
    plane.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "demo"}})
    print("== consul-sd operator (log: .local/demo/operator.log)")
    run_operator(kubeconfig)
    sample = yaml.safe_load((ROOT / "deploy/samples/demo.yaml").read_text())
    sample["spec"]["consul"]["server"] = consul_address
    path = "/apis/consul-sd.io/v1alpha1/namespaces/demo/consuldiscoveries/demo"
    plane.apply(path, sample, field_manager="demo")
    print("== applied deploy/samples/demo.yaml; waiting for Ready")
    cr = wait(lambda: _ready(plane), "ConsulDiscovery demo/demo to be Ready", timeout=120)
    maps = plane.request(
        "GET", "/api/v1/namespaces/demo/configmaps?labelSelector=consul-sd.io%2Fdiscovery%3Ddemo"
    ).json()
    print("\n== discovered targets (ConfigMap data, file_sd JSON)")
    for item in maps["items"]:
        for key, data in item["data"].items():
            print(f"-- {item['metadata']['name']} / {key}")
            for group in json.loads(data):
                labels = group["labels"]
                print(
                    f"   {group['targets'][0]:<24} service={labels['__meta_consul_service']:<9} "
                    f"health={labels.get('__meta_consul_health', ''):<9} "
                    f"tags={labels['__meta_consul_tags']}"
                )
    print("\n== ConsulDiscovery demo/demo status")
    print(yaml.safe_dump(cr["status"], sort_keys=False))
    print("running:")
    print(f"  kubeconfig    {kubeconfig}   (with kubectl: kubectl -n demo get csd,configmaps)")
    print(f"  operator log  {DEMO / 'operator.log'}")
    print(
        f"  Consul        {consul_address}   (.venv/bin/consul-sd discover --server "
        f"{consul_address} --once)"
    )
    print("stop everything with: make demo-down")
    return 0


def _ready(plane: components.ControlPlane) -> dict[str, Any] | None:
    cr = plane.request(
        "GET", "/apis/consul-sd.io/v1alpha1/namespaces/demo/consuldiscoveries/demo"
    ).json()
    for condition in (cr.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready" and condition["status"] == "True":
            return dict(cr)
    return None


def wait(check: Any, what: str, *, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}; see .local/demo/operator.log")


def down() -> int:
    if PID_FILE.exists():
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(PID_FILE.read_text()), signal.SIGTERM)
        PID_FILE.unlink()
    for command in ("consul-down", "cluster-down"):
        subprocess.run(
            [sys.executable, "-m", "tests.support.components", command], cwd=ROOT, check=False
        )
    return 0


if __name__ == "__main__":
    # Line by line, so progress reads in order when the output goes to a file or a pipe.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.exit(up() if sys.argv[1:] == ["up"] else down() if sys.argv[1:] == ["down"] else 2)
