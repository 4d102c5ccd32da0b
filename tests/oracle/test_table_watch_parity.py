"""Blocking queries on the table-level reads wake on the simulator as they do on the real agent.

``wakeOnChange`` parks one long-poll on each table its change gate reads (/v1/catalog/services,
/v1/health/state/critical and /warning, /v1/catalog/nodes); worker tests run it against the
simulator, so the simulator must wake, and stay parked, where Consul 1.16 does. Each test runs
on a fresh dev agent and on a fresh simulator holding the same small fleet, makes one write
while a long-poll is parked at the table's current index, and holds both to the same outcome.

What the agent was seen to do (and the simulator now does): the services list wakes on an
instance registered in or deregistered from an existing service, with an unchanged body; a
state list wakes on a check entering or leaving that state, and on a passing-only change only
while no check is in that state (Consul watches that state's rows of its by-status index, or
the whole index when there are none); the nodes list wakes on a node's address or meta change
and that node's ModifyIndex passes the index waited on; a check registered without a Status is
critical. The index going backwards is the simulator's fault ``index_backwards`` only.

Every long-poll has a client timeout; only 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.oracle.harness import SimulatorThread, wait_until
from tests.support.components import ConsulAgent, HttpResponse, http_request

pytestmark = pytest.mark.e2e

WAIT = "10s"
# A wake-up answers within this many seconds of the write; a timeout takes the whole wait.
WOKEN_WITHIN = 5.0
# The wait of a long-poll expected to stay parked: shorter, to keep the tests quick.
QUIET_WAIT = "3s"
QUIET_SECONDS = 3.0
# Time given to a long-poll to reach the server and park before the write is made.
PARKING = 0.5


@dataclass(frozen=True)
class Consul:
    """One side: the real agent or the simulator, reached over HTTP on 127.0.0.1."""

    name: str
    address: str

    def get(self, path: str, *, timeout: float = 10.0) -> HttpResponse:
        answer = http_request("GET", f"http://{self.address}{path}", timeout=timeout)
        assert answer.status == 200, f"{self.name}: GET {path}: {answer.status} {answer.text}"
        return answer

    def put(self, path: str, body: Any) -> None:
        answer = http_request("PUT", f"http://{self.address}{path}", body=body)
        assert answer.status == 200, f"{self.name}: PUT {path}: {answer.status} {answer.text}"


def index_of(answer: HttpResponse) -> int:
    return int(answer.headers["x-consul-index"])


NODES = {"n1": ("10.0.0.1", "r1"), "n2": ("10.0.0.2", "r2")}


def node(name: str, *, address: str | None = None, rack: str | None = None) -> dict[str, Any]:
    """A node record as the fleet has it, with ``address`` or ``rack`` changed if given."""
    return {
        "Node": name,
        "Address": address or NODES[name][0],
        "NodeMeta": {"rack": rack or NODES[name][1]},
    }


def instance(
    service: str, service_id: str, *, on: str = "n1", status: str | None = "passing"
) -> dict[str, Any]:
    """A register body for one instance with one service check (no Status when ``None``)."""
    check: dict[str, Any] = {
        "CheckID": f"service:{service_id}",
        "Name": f"{service_id} check",
        "ServiceID": service_id,
    }
    if status is not None:
        check["Status"] = status
    return {
        **node(on),
        "Service": {"ID": service_id, "Service": service, "Port": 8080},
        "Check": check,
    }


def register(consul: Consul, body: dict[str, Any]) -> Callable[[], None]:
    return lambda: consul.put("/v1/catalog/register", body)


def deregister(consul: Consul, body: dict[str, Any]) -> Callable[[], None]:
    return lambda: consul.put("/v1/catalog/deregister", body)


def register_small_fleet(consul: Consul) -> None:
    """n1 (rack r1) and n2 (rack r2); web on both (passing), db on n1 with a critical check;
    nothing warning."""
    consul.put("/v1/catalog/register", instance("web", "web-1", on="n1"))
    consul.put("/v1/catalog/register", instance("web", "web-2", on="n2"))
    consul.put("/v1/catalog/register", instance("db", "db-1", on="n1", status="critical"))


def _quiet(consul: Consul) -> bool:
    """True when no table moves for two seconds.

    Just after start the agent writes its own node, service and checks to the catalog (more
    than once); a long-poll parked meanwhile would answer for those writes instead of ours.
    """
    paths = ("/v1/catalog/nodes", "/v1/catalog/services", "/v1/health/state/any")
    before = {path: index_of(consul.get(path)) for path in paths}
    time.sleep(2.0)
    return all(index_of(consul.get(path)) == index for path, index in before.items())


@pytest.fixture(params=["agent", "simulator"])
def consul(
    request: pytest.FixtureRequest, consul_agent_factory: Callable[..., ConsulAgent]
) -> Iterator[Consul]:
    """A fresh agent or simulator with the small fleet."""
    if request.param == "agent":
        agent = consul_agent_factory()
        side = Consul("agent", agent.address)
        wait_until(
            lambda: _quiet(side),
            what="the agent's own writes after start to end",
            timeout=30,
            interval=0,
        )
        register_small_fleet(side)
        yield side
        return
    thread = SimulatorThread()
    try:
        side = Consul("simulator", thread.address)
        register_small_fleet(side)
        yield side
    finally:
        thread.stop()


@dataclass(frozen=True)
class Answer:
    """A long-poll's answer: the index it waited on, the one it got, and when it came."""

    waited_on: int
    index: int
    seconds: float  # from the write to the answer
    body: Any

    @property
    def woke(self) -> bool:
        return self.seconds < WOKEN_WITHIN and self.index > self.waited_on


def long_poll(
    consul: Consul,
    path: str,
    write: Callable[[], None],
    *,
    wait: str = WAIT,
    at: int | None = None,
) -> Answer:
    """Park a long-poll on ``path`` at its current index (or ``at``), then ``write``."""
    waited_on = index_of(consul.get(path)) if at is None else at
    separator = "&" if "?" in path else "?"
    answers: list[tuple[HttpResponse, float]] = []

    def park() -> None:
        answer = consul.get(f"{path}{separator}index={waited_on}&wait={wait}", timeout=30)
        answers.append((answer, time.monotonic()))

    thread = threading.Thread(target=park, daemon=True)
    thread.start()
    time.sleep(PARKING)
    written = time.monotonic()
    write()
    thread.join(timeout=40)
    assert answers, f"{consul.name}: the long-poll on {path} never answered"
    answer, answered = answers[0]
    return Answer(waited_on, index_of(answer), answered - written, answer.json())


def check_ids(rows: list[dict[str, Any]]) -> set[str]:
    return {row["CheckID"] for row in rows}


def test_the_services_list_wakes_when_an_existing_service_gains_or_loses_an_instance(
    consul: Consul,
) -> None:
    listed = consul.get("/v1/catalog/services").json()
    joined = long_poll(
        consul, "/v1/catalog/services", register(consul, instance("web", "web-3", on="n2"))
    )
    assert joined.woke, joined
    assert joined.body == listed  # the list alone cannot say what changed
    left = long_poll(
        consul, "/v1/catalog/services", deregister(consul, {"Node": "n2", "ServiceID": "web-3"})
    )
    assert left.woke, left
    assert left.body == listed


@pytest.mark.parametrize("state", ["critical", "warning"])
def test_a_state_list_wakes_when_a_check_enters_the_state_and_when_it_passes_again(
    consul: Consul, state: str
) -> None:
    path = f"/v1/health/state/{state}"
    entered = long_poll(consul, path, register(consul, instance("web", "web-1", status=state)))
    assert entered.woke, entered
    assert "service:web-1" in check_ids(entered.body)
    passed = long_poll(consul, path, register(consul, instance("web", "web-1")))
    assert passed.woke, passed
    assert "service:web-1" not in check_ids(passed.body)


@pytest.mark.parametrize("state", ["critical", "warning"])
def test_a_passing_only_change_wakes_a_state_list_only_while_no_check_is_in_that_state(
    consul: Consul, state: str
) -> None:
    path = f"/v1/health/state/{state}"
    consul.put("/v1/catalog/register", instance("db", "db-1", status=state))
    busy = long_poll(
        consul, path, register(consul, instance("web", "web-5", on="n2")), wait=QUIET_WAIT
    )
    assert busy.index == busy.waited_on, busy
    assert busy.seconds > QUIET_SECONDS - PARKING - 0.5, busy
    consul.put("/v1/catalog/register", instance("db", "db-1"))
    empty = long_poll(consul, path, register(consul, instance("web", "web-6", on="n2")))
    assert empty.woke, empty
    assert empty.body == []


def test_the_nodes_list_wakes_on_an_address_and_a_meta_change_naming_the_node_by_modify_index(
    consul: Consul,
) -> None:
    changes = {
        "address": node("n1", address="10.0.9.1"),
        "meta": node("n1", address="10.0.9.1", rack="r9"),
    }
    for what, body in changes.items():
        answer = long_poll(consul, "/v1/catalog/nodes", register(consul, body))
        assert answer.woke, (what, answer)
        moved = {row["Node"] for row in answer.body if row["ModifyIndex"] > answer.waited_on}
        assert moved == {"n1"}, what


def test_a_check_registered_without_a_status_starts_critical_and_wakes_the_critical_list(
    consul: Consul,
) -> None:
    joined = long_poll(
        consul,
        "/v1/health/state/critical",
        register(consul, instance("web", "web-4", on="n2", status=None)),
    )
    assert joined.woke, joined
    assert "service:web-4" in check_ids(joined.body)
    entries = consul.get("/v1/health/service/web").json()
    statuses = {
        entry["Service"]["ID"]: [check["Status"] for check in entry["Checks"]] for entry in entries
    }
    assert statuses["web-4"] == ["critical"]


def test_a_node_meta_services_list_answers_both_tables_index_and_wakes_only_for_its_nodes(
    consul: Consul,
) -> None:
    path = "/v1/catalog/services?node-meta=rack:r1"
    consul.put("/v1/catalog/register", node("n2", address="10.0.9.2"))
    tables = [index_of(consul.get(p)) for p in ("/v1/catalog/services", "/v1/catalog/nodes")]
    assert tables[1] > tables[0]
    assert index_of(consul.get(path)) == max(tables)
    elsewhere = long_poll(
        consul, path, register(consul, instance("web", "web-3", on="n2")), wait=QUIET_WAIT
    )
    assert elsewhere.index == elsewhere.waited_on, elsewhere
    joined = long_poll(consul, path, register(consul, instance("web", "web-4", on="n1")))
    assert joined.woke, joined
    moved = long_poll(consul, path, register(consul, node("n1", address="10.0.9.1")))
    assert moved.woke, moved
    # No node carries rack=r7: the agent then watches every node that has meta.
    unmatched = long_poll(
        consul,
        "/v1/catalog/services?node-meta=rack:r7",
        register(consul, node("n2", address="10.0.9.22")),
    )
    assert unmatched.woke, unmatched
    assert unmatched.body == {}


# The index going backwards: only the simulator can be made to do it on demand.

# Per table, two writes in a row that each move its index by one.
TABLE_CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "/v1/catalog/services": (
        instance("web", "web-7", on="n2"),
        instance("web", "web-8", on="n2"),
    ),
    "/v1/health/state/critical": (
        instance("web", "web-1", status="critical"),
        instance("web", "web-1"),
    ),
    "/v1/health/state/warning": (
        instance("web", "web-2", on="n2", status="warning"),
        instance("web", "web-2", on="n2"),
    ),
    "/v1/catalog/nodes": (node("n2", address="10.0.9.2"), node("n2", address="10.0.9.3")),
}


@pytest.fixture
def simulator() -> Iterator[tuple[SimulatorThread, Consul]]:
    thread = SimulatorThread()
    try:
        side = Consul("simulator", thread.address)
        register_small_fleet(side)
        yield thread, side
    finally:
        thread.stop()


@pytest.mark.parametrize("path", list(TABLE_CHANGES))
def test_after_the_index_goes_back_an_old_index_waits_and_a_reset_one_sees_each_change(
    simulator: tuple[SimulatorThread, Consul], path: str
) -> None:
    thread, consul = simulator
    before = index_of(consul.get(path))
    answer = thread.request("PUT", "/_sim/faults", body={"index_backwards": True})
    assert answer.status == 200, answer.text
    lowered = index_of(consul.get(path))
    assert 1 <= lowered < before
    # A client that keeps its old index waits out its wait.
    kept = long_poll(consul, path, lambda: None, wait=QUIET_WAIT, at=before)
    assert kept.index < before, kept
    assert kept.seconds > QUIET_SECONDS - PARKING - 0.5, kept
    # One that resets (a plain read, then the index it gives) sees each next change at once.
    for body in TABLE_CHANGES[path]:
        reset = long_poll(consul, path, register(consul, body))
        assert reset.waited_on < before
        assert reset.woke, reset
