"""The real Consul the field-report benchmark runs against: a dev agent loaded with a fleet.

- ``fleet_snapshot``: start a throw-away agent, register N services x K instances with parallel
  ``PUT /v1/catalog/register`` (the simulator's deterministic fleet, plus the probe node), and
  keep ``GET /v1/snapshot``. Loading 21000 instances takes ~10 s; restoring the snapshot into a
  fresh agent ~3 s, so every scenario gets its own agent with the same catalog. The scenario
  starts once the restored agent has run its first full anti-entropy sync (~60 s), which
  re-registers its own node and service: started before it, every poller would refetch the
  fleet once for a change only the restore causes.
- ``FreshConsul``: one agent for one scenario, with telemetry in Prometheus format (for request
  counts) and ``limits.http_max_conns_per_client`` as asked.
- The change probe: at one instant, register one new instance of service A (``ADD_ID``) and
  deregister the probe node, which holds the two instances of service B (``DEL_IDS``) in one
  write. A target count therefore tells both apart: +1 when the registration is seen, -2 when
  the deregistration is.

Only 127.0.0.1. Every agent is stopped by its owner (context manager).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.components import ComponentError, ConsulAgent, http_request

from consul_simulator.fleet import fleet_registrations, service_name

# Consul refuses a limit above the open-file limit minus 20; this machine's hard limit is 20000.
DEFAULT_LIMIT = 19000
CONSUL_DEFAULT_LIMIT = 200
INSTANCES = 3
PROBE_DEL_NODE = "bench-probe-del"
PROBE_ADD_NODE = "bench-probe-add"
ADD_ID = "bench-add-0"
DEL_IDS = ("bench-del-0", "bench-del-1")
_TELEMETRY = 'telemetry { prometheus_retention_time = "1h" disable_hostname = true }'
# Every agent gets the same node ID as the one the snapshot was taken on, so a restored catalog
# holds the agent's own node as it is (a new ID under the same name is refused, and the agent
# would retry its sync, logging errors, for the whole run).
_NODE_ID = 'node_id = "0e4f1a7c-5b0d-4c8e-9a51-6a3d1c2b7f00"'
# The GET paths (Consul's metric labels) that discovery uses; the harness's own calls are others.
_DISCOVERY_PATHS = ("v1_health_", "v1_catalog_", "v1_agent_self")


def probe_services(services: int) -> tuple[str, str]:
    """(service A that gains an instance, service B that loses the probe node's two)."""
    return service_name(services // 3), service_name((2 * services) // 3)


def _probe_body(*, node: str, address: str, service: str, service_id: str, port: int) -> Any:
    return {
        "Node": node,
        "Address": address,
        "Service": {"ID": service_id, "Service": service, "Port": port, "Tags": ["probe"]},
        "Check": {
            "CheckID": f"service:{service_id}",
            "Name": "probe",
            "Status": "passing",
            "ServiceID": service_id,
        },
    }


def del_probe_bodies(services: int) -> list[Any]:
    _, service_b = probe_services(services)
    return [
        _probe_body(
            node=PROBE_DEL_NODE,
            address="10.255.0.1",
            service=service_b,
            service_id=service_id,
            port=9100 + k,
        )
        for k, service_id in enumerate(DEL_IDS)
    ]


def add_probe_body(services: int) -> Any:
    service_a, _ = probe_services(services)
    return _probe_body(
        node=PROBE_ADD_NODE, address="10.255.0.2", service=service_a, service_id=ADD_ID, port=9200
    )


def flap_body(services: int, *, service: int, status: str) -> Any:
    """A re-registration of the check of instance 0 of fleet service ``service`` only, with
    ``status``: the node as the fleet registered it, so only the checks table moves."""
    wanted = f"{service_name(service)}-0"
    body = next(
        body
        for body in fleet_registrations(
            services=service + 1, instances=INSTANCES, nodes=_fleet_nodes(services), seed=1
        )
        if body["Service"]["ID"] == wanted
    )
    node = {key: body[key] for key in ("ID", "Node", "Address", "TaggedAddresses", "NodeMeta")}
    return node | {"Check": {**body["Check"], "Status": status}, "SkipNodeUpdate": True}


def _fleet_nodes(services: int) -> int:
    return max(1, services // 20)


def _agent(*, workdir: Path, limit: int) -> ConsulAgent:
    agent = ConsulAgent(http_max_conns_per_client=limit, extra_hcl=[_TELEMETRY, _NODE_ID])
    agent.start(workdir, timeout=120.0)
    return agent


def register_all(address: str, bodies: list[Any], *, threads: int = 8) -> None:
    """PUT every body to /v1/catalog/register, ``threads`` keep-alive connections in parallel."""
    host, _, port = address.rpartition(":")
    local = threading.local()

    def put(body: Any) -> None:
        connection: http.client.HTTPConnection | None = getattr(local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            local.connection = connection
        connection.request(
            "PUT",
            "/v1/catalog/register",
            body=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        text = response.read()
        if response.status != 200:
            raise ComponentError(f"register answered {response.status}: {text[:200]!r}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, bodies))


def fleet_snapshot(*, services: int, workdir: Path) -> tuple[bytes, float]:
    """A Consul snapshot of the fleet (+ the probe node) and the seconds the load took."""
    bodies: list[Any] = list(
        fleet_registrations(
            services=services, instances=INSTANCES, nodes=_fleet_nodes(services), seed=1
        )
    )
    bodies += del_probe_bodies(services)
    agent = _agent(workdir=workdir, limit=DEFAULT_LIMIT)
    try:
        started = time.monotonic()
        register_all(agent.address, bodies)
        took = time.monotonic() - started
        answer = http_request("GET", f"{agent.url}/v1/snapshot", timeout=300)
        if answer.status != 200:
            raise ComponentError(f"snapshot answered {answer.status}: {answer.text[:300]}")
        return answer.body, took
    finally:
        agent.stop()


@dataclass(frozen=True)
class ConsulCounters:
    """Consul's own figures at one moment (telemetry in Prometheus format)."""

    discovery_requests: float  # completed GETs on discovery paths, cumulative
    by_path: Mapping[str, float]


def parse_metrics(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample line of a Prometheus text exposition."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, rest = head.partition("{")
        labels: dict[str, str] = {}
        if brace:
            for part in rest.rstrip("}").split('",'):
                key, _, raw = part.partition("=")
                if key:
                    labels[key.strip().strip(",")] = raw.strip('"')
        try:
            yield name, labels, float(value)
        except ValueError:
            continue


class FreshConsul:
    """One Consul dev agent for one scenario, restored from a fleet snapshot."""

    def __init__(self, *, workdir: Path, limit: int, snapshot: bytes, services: int) -> None:
        self.workdir = workdir
        self.limit = limit
        self.snapshot = snapshot
        self.services = services
        self.agent: ConsulAgent | None = None
        self.expected_targets = 0

    def __enter__(self) -> FreshConsul:
        self.agent = _agent(workdir=self.workdir, limit=self.limit)
        try:
            answer = http_request(
                "PUT", f"{self.agent.url}/v1/snapshot", body=self.snapshot, timeout=300
            )
            if answer.status != 200:
                raise ComponentError(f"restore answered {answer.status}: {answer.text[:300]}")
            self.expected_targets = self._wait_loaded()
        except BaseException:
            self.agent.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.agent is not None:
            self.agent.stop()

    @property
    def address(self) -> str:
        assert self.agent is not None
        return self.agent.address

    @property
    def port(self) -> int:
        assert self.agent is not None
        return self.agent.http_port

    @property
    def pid(self) -> int:
        assert self.agent is not None
        return self.agent._processes[0].pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "consul.log"

    def _get(self, path: str) -> Any:
        answer = http_request("GET", f"http://{self.address}{path}", timeout=60)
        if answer.status != 200:
            raise ComponentError(f"GET {path} answered {answer.status}: {answer.text[:300]}")
        return answer.json()

    def _wait_loaded(self) -> int:
        """Targets the catalog holds once restored: the fleet, the probe node, Consul itself."""
        deadline = time.monotonic() + 120
        while True:
            names = self._get("/v1/catalog/services")
            own = self._get("/v1/health/service/consul")
            if len(names) >= self.services + 1 and len(own) == 1:
                self._wait_resynced()
                return self.services * INSTANCES + len(DEL_IDS) + len(own)
            if time.monotonic() > deadline:
                raise ComponentError(f"restored catalog has {len(names)} services, own {own}")
            time.sleep(0.5)

    def _services_index(self) -> str:
        answer = http_request("GET", f"http://{self.address}/v1/catalog/services", timeout=60)
        return {k.lower(): v for k, v in answer.headers.items()}.get("x-consul-index", "")

    def _wait_resynced(self, *, patience: float = 120.0) -> None:
        """Wait for the agent's first full anti-entropy sync after the restore (measured: ~58 s
        in, it re-registers its own node and service, moving the services and nodes indexes).

        Started before it, every poller meets that one artificial catalog change in its window
        and refetches the whole fleet for it; a real agent does this once, at its start.
        """
        restored = self._services_index()
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if self._services_index() != restored:
                time.sleep(2.0)  # the node's checks may follow in a second write
                return
            time.sleep(1.0)

    def counters(self, *, patience: float = 10.0) -> ConsulCounters | None:
        """Consul's request counts now; None if the agent kept refusing us for ``patience``
        seconds (at the default connection limit a discoverer can hold every slot of this IP,
        and the benchmark's own requests come from the same 127.0.0.1)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                answer = http_request(
                    "GET", f"http://{self.address}/v1/agent/metrics?format=prometheus", timeout=30
                )
                if answer.status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
        requests = 0.0
        by_path: dict[str, float] = {}
        for name, labels, value in parse_metrics(answer.text):
            if name == "consul_api_http_count" and labels.get("method") == "GET":
                path = labels.get("path", "")
                if path.startswith(_DISCOVERY_PATHS):
                    requests += value
                    by_path[path] = value
        return ConsulCounters(discovery_requests=requests, by_path=by_path)

    def change(self, *, patience: float = 30.0) -> float | None:
        """Register the add probe and deregister the probe node at once; returns the moment the
        later write was accepted, or None if Consul refused them for ``patience`` seconds."""
        add = add_probe_body(self.services)
        accepted: list[float] = []

        def write(path: str, body: Any) -> None:
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline:
                try:
                    answer = http_request("PUT", f"http://{self.address}{path}", body=body)
                    if answer.status == 200:
                        accepted.append(time.monotonic())
                        return
                except OSError:
                    pass
                time.sleep(0.2)

        workers = [
            threading.Thread(target=write, args=("/v1/catalog/register", add)),
            threading.Thread(
                target=write, args=("/v1/catalog/deregister", {"Node": PROBE_DEL_NODE})
            ),
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(patience + 30)
        return max(accepted) if len(accepted) == 2 else None

    def flap(self, flip: int) -> bool:
        """Flip one fleet check: flip k sets the check of service k // 2 (cycling through the
        fleet) critical when k is even and passing again when odd. True when Consul took it."""
        service = (flip // 2) % self.services
        body = flap_body(
            self.services, service=service, status="passing" if flip % 2 else "critical"
        )
        with contextlib.suppress(OSError):
            return (
                http_request("PUT", f"http://{self.address}/v1/catalog/register", body=body).status
                == 200
            )
        return False

    def log_lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace").splitlines()
        return []
