"""What the operator e2e tests share: a simulator process, the operator process, the API client.

The operator runs as users run it (``consul-sd operator`` in its own process, KUBECONFIG set);
Consul is the simulator in its own process, driven over its HTTP API like a real agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.support.components import ControlPlane, free_port

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
CLI = [sys.executable, "-m", "consul_sd.cli"]
GROUP, VERSION, PLURAL = "consul-sd.io", "v1alpha1", "consuldiscoveries"
CRD_FILE = REPO / "deploy" / "crds" / "consul-sd.io_consuldiscoveries.yaml"
_T = TypeVar("_T")


def eventually(check: Callable[[], _T], *, timeout: float = 60, what: str = "condition") -> _T:
    """Poll ``check`` until it returns a truthy value (or stops raising AssertionError)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (AssertionError, k8s.ApiException) as exc:
            last = exc
        else:
            if result:
                return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")


class Simulator:
    """The ``consul-simulator`` command (the simulator's own distribution) in its own process."""

    def __init__(
        self,
        workdir: Path,
        *,
        services: int,
        instances: int,
        nodes: int = 10,
        acl_token: str | None = None,
    ) -> None:
        """``acl_token``: Consul ACLs on, default deny, this one token allowed."""
        self.acl_token = acl_token
        self.port = free_port()
        self.log = (workdir / f"simulator-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            [
                # Installed beside the interpreter by `make venv` (simulator/, editable).
                str(Path(sys.executable).with_name("consul-simulator")),
                "--port",
                str(self.port),
                "--services",
                str(services),
                "--instances",
                str(instances),
                "--nodes",
                str(nodes),
                *(("--acl-token", acl_token) if acl_token else ()),
                "--no-jitter",
            ],
            env=ENV,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        eventually(lambda: self.get("/v1/status/leader"), timeout=120, what="the simulator")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        try:
            return self.call("GET", path)
        except OSError:
            return None

    def register(self, body: dict[str, Any]) -> None:
        self.call("PUT", "/v1/catalog/register", body)

    def faults(self, **changes: Any) -> None:
        self.call("PUT", "/_sim/faults", changes)

    def consul(self, method: str, path: str, body: Any = None) -> Any:
        """A Consul API call carrying the ACL token (reads see everything, writes are allowed)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        if self.acl_token:
            request.add_header("X-Consul-Token", self.acl_token)
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


class Operator:
    """``consul-sd operator`` in its own process against the control plane."""

    def __init__(
        self,
        control_plane: ControlPlane,
        workdir: Path,
        *extra: str,
        token: str | None = None,
        scope: Sequence[str] = ("--all-namespaces",),
        kubeconfig: Path | None = None,
    ) -> None:
        """Run as the admin, or as whoever ``token`` authenticates (e.g. the ServiceAccount).

        ``kubeconfig``: use this one instead of the control plane's (e.g. one that reaches the
        apiserver through a proxy); ``token`` still takes precedence.
        """
        kubeconfig = kubeconfig or control_plane.kubeconfig
        if token is not None:
            kubeconfig = control_plane.write_kubeconfig(
                workdir / f"operator-{free_port()}.kubeconfig", token=token
            )
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.log_path = workdir / f"operator-{self.metrics_port}.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                *CLI,
                "--log-level",
                "debug",
                "operator",
                "--standalone",
                *scope,
                "--bind-address",
                "127.0.0.1",
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
                *extra,
            ],
            env={**ENV, "KUBECONFIG": str(kubeconfig)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        eventually(self.alive, timeout=60, what="the operator's liveness endpoint")

    def alive(self) -> bool:
        assert self.process.poll() is None, self.log_text()[-3000:]
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=5
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            return str(response.read().decode())

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node failure would: no cleanup, no last log line."""
        self.process.kill()
        self.process.wait(30)
        self.log.close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def kubeconfig_via(control_plane: ControlPlane, path: Path, *, port: int) -> Path:
    """The control plane's admin kubeconfig, with the server at 127.0.0.1:``port`` (a proxy)."""
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def api_client(control_plane: ControlPlane) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(control_plane.kubeconfig))


def sample_cr(name: str, *, server: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "consul": {"server": server},
        "mode": "Polling",
        "refreshInterval": "1s",
        "output": {"configMap": {"name": name}},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ConsulDiscovery",
        "metadata": {"name": name},
        "spec": body,
    }


def condition(cr: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in (cr.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return {}


def get_cr(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """A ConsulDiscovery as the apiserver holds it."""
    found: dict[str, Any] = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return found


def create_cr(api: k8s.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )


def create_prometheus_cr(api: k8s.ApiClient, namespace: str) -> None:
    """A Prometheus CR ``main`` selecting the ScrapeConfigs labelled ``prometheus: main``."""
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        "monitoring.coreos.com",
        "v1",
        namespace,
        "prometheuses",
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Prometheus",
            "metadata": {"name": "main"},
            "spec": {"scrapeConfigSelector": {"matchLabels": {"prometheus": "main"}}},
        },
    )
