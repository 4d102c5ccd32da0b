"""The no-loss promise on a real kube-apiserver + etcd: outputs never hold a partial set.

The operator runs as its own process (one per test, watching only the test's namespace, so a
test can kill or partition it); Consul is the simulator. The ConfigMaps are sampled on every
watch event (:class:`tests.e2e.output_watch.OutputWatch`): after each committed write the union
of their targets must still hold every target that exists before and after the change. Covers
issue 10's defects 1 (shard growth and shrink, with a write refused and with a kill -9 midway),
3 (outputs owned by someone else) and 4 (a partition that stops forwarding without closing).
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from consul_simulator.fleet import fleet_registrations, service_name
from tests.e2e.operator_harness import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    Simulator,
    condition,
    create_cr,
    eventually,
    get_cr,
    kubeconfig_via,
    sample_cr,
)
from tests.e2e.output_watch import OutputWatch, targets_of
from tests.e2e.tcp_proxy import TcpProxy
from tests.support.components import ControlPlane

pytestmark = pytest.mark.e2e

# 100 services x 2 instances of ~650 bytes fill 16 shards of 16 KiB; 200 fill 32, 24 fit in 4
# (K only shrinks when four times too many).
SERVICES, GROWN, SHRUNK, INSTANCES, NODES = 100, 200, 24, 2, 10
SHARDS, GROWN_SHARDS = 16, 32
SHARD_BYTES = 16 * 1024


@pytest.fixture
def operators(
    control_plane: ControlPlane, consul_sd_crd: None, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    """Start operators watching only this test's namespace; all are stopped after the test."""
    started: list[Operator] = []

    def start(*, kubeconfig: Path | None = None) -> Operator:
        running = Operator(
            control_plane, tmp_path, scope=("--namespace", namespace), kubeconfig=kubeconfig
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def watches() -> Iterator[list[OutputWatch]]:
    """Output watches to stop after the test (a failure in one fails the test)."""
    started: list[OutputWatch] = []
    yield started
    for watch in started:
        watch.stop()


# ------------------------------------------------------------------------------- helpers


def custom(api: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


def sharded_cr(name: str, *, server: str) -> dict[str, Any]:
    body = sample_cr(name, server=server)
    body["spec"]["output"]["configMap"].update(maxShardBytes=SHARD_BYTES, maxShards=64)
    return body


def synced(api: k8s.ApiClient, namespace: str, name: str, *, targets: int) -> dict[str, Any]:
    """The CR once it reports ``targets`` written, Ready=True Synced and Degraded=False."""
    cr = get_cr(api, namespace, name)
    status = cr.get("status") or {}
    assert status.get("observedGeneration") == cr["metadata"]["generation"], status
    assert status.get("targets") == targets, status
    ready = condition(cr, "Ready")
    assert (ready.get("status"), ready.get("reason")) == ("True", "Synced"), status
    assert condition(cr, "Degraded").get("status") == "False", status
    return cr


def degraded(api: k8s.ApiClient, namespace: str, name: str, *, reason: str) -> dict[str, Any]:
    cr = get_cr(api, namespace, name)
    found = condition(cr, "Degraded")
    assert (found.get("status"), found.get("reason")) == ("True", reason), cr.get("status")
    return cr


def service_of(target: str) -> str:
    return str(json.loads(target)["labels"]["__meta_consul_service"])


def register_services(sim: Simulator, *, first: int, last: int) -> None:
    """Register services ``first``..``last - 1`` of the simulator's own deterministic fleet."""
    bodies = fleet_registrations(services=last, instances=INSTANCES, nodes=NODES, seed=1)
    for body in itertools.islice(bodies, first * INSTANCES, None):
        sim.register(body)


def deregister_services(sim: Simulator, *, first: int, last: int) -> None:
    """Deregister every instance of services ``first``..``last - 1``, the last ones first."""
    bodies = list(fleet_registrations(services=last, instances=INSTANCES, nodes=NODES, seed=1))
    for body in reversed(bodies[first * INSTANCES :]):
        sim.call(
            "PUT",
            "/v1/catalog/deregister",
            {"Node": body["Node"], "ServiceID": body["Service"]["ID"]},
        )


def names_of(services: range) -> set[str]:
    return {service_name(i) for i in services}


def settled(watch: OutputWatch, *, truth: set[str], shards: Callable[[int], bool]) -> bool:
    """The outputs hold exactly ``truth``, each target once, in a shard count ``shards`` likes."""
    union = watch.union()
    assert {service_of(t) for t in union} == truth, len(union)
    held = watch.sizes()
    assert sum(held.values()) == len(union), held  # no target left in two shards
    assert shards(len(held)), sorted(held)
    return True


def start_grown_fleet(
    *,
    api: k8s.ApiClient,
    namespace: str,
    simulator: Callable[..., Simulator],
    operators: Callable[..., Operator],
    watches: list[OutputWatch],
    name: str,
) -> tuple[Simulator, Operator, OutputWatch]:
    """A CR synced on SERVICES services in SHARDS shards, its outputs under watch."""
    sim = simulator(services=SERVICES)
    running = operators()
    create_cr(api, namespace, sharded_cr(name, server=sim.address))
    eventually(
        lambda: synced(api, namespace, name, targets=SERVICES * INSTANCES),
        timeout=90,
        what="the first sync",
    )
    watch = OutputWatch(api, namespace=namespace, discovery=name)
    watches.append(watch)
    assert len(watch.names()) == SHARDS, "the fleet no longer fills SHARDS shards: resize it"
    return sim, running, watch


def assert_never_below(watch: OutputWatch) -> None:
    assert watch.gaps == 0, "the watch expired: some intermediate states were not seen"
    assert watch.shortfalls == [], watch.shortfalls[:5]


# ------------------------------------------------------------------------ 1. shard growth


def test_growing_then_shrinking_the_shard_count_never_drops_a_target(
    api: k8s.ApiClient,
    namespace: str,
    simulator: Callable[..., Simulator],
    operators: Callable[..., Operator],
    watches: list[OutputWatch],
) -> None:
    """100 -> 200 services (16 -> 32 shards), then -> 24 (4 or 8 shards), at 1 s polling.

    Bounds: 90 s for the first sync, 120 s for each change to settle.
    """
    sim, _, watch = start_grown_fleet(
        api=api,
        namespace=namespace,
        simulator=simulator,
        operators=operators,
        watches=watches,
        name="grow",
    )
    watch.set_floor(watch.union())
    register_services(sim, first=SERVICES, last=GROWN)
    eventually(
        lambda: settled(watch, truth=names_of(range(GROWN)), shards=lambda k: k == GROWN_SHARDS),
        timeout=120,
        what="32 shards holding 200 services",
    )
    eventually(lambda: synced(api, namespace, "grow", targets=GROWN * INSTANCES), timeout=30)
    assert_never_below(watch)
    assert sum(kind == "ADDED" for kind, _ in watch.events) == GROWN_SHARDS - SHARDS

    kept = {t for t in watch.union() if service_of(t) in names_of(range(SHRUNK))}
    watch.set_floor(kept)
    deregister_services(sim, first=SHRUNK, last=GROWN)
    eventually(
        lambda: settled(watch, truth=names_of(range(SHRUNK)), shards=lambda k: k in (4, 8)),
        timeout=120,
        what="the shards of 24 services",
    )
    eventually(lambda: synced(api, namespace, "grow", targets=SHRUNK * INSTANCES), timeout=30)
    assert_never_below(watch)
    assert watch.union() == kept


def limit_config_maps(api: k8s.ApiClient, namespace: str, *, more: int) -> None:
    """A ResourceQuota allowing ``more`` ConfigMaps in the namespace than it holds now."""
    core = k8s.CoreV1Api(api)
    count = len(core.list_namespaced_config_map(namespace).items)
    hard = {"count/configmaps": str(count + more)}
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "outputs"}, "spec": {"hard": hard}}
    )
    # No controller-manager runs here: write the usage it would have computed, which the
    # quota admission then keeps up to date on every create.
    core.patch_namespaced_resource_quota_status(
        "outputs", namespace, {"status": {"hard": hard, "used": {"count/configmaps": str(count)}}}
    )


def raise_config_map_limit(api: k8s.ApiClient, namespace: str, *, to: int) -> None:
    core = k8s.CoreV1Api(api)
    hard = {"count/configmaps": str(to)}
    core.patch_namespaced_resource_quota("outputs", namespace, {"spec": {"hard": hard}})
    core.patch_namespaced_resource_quota_status("outputs", namespace, {"status": {"hard": hard}})


def test_a_quota_refusing_new_shards_keeps_every_target_and_reports_output_write_failed(
    api: k8s.ApiClient,
    namespace: str,
    simulator: Callable[..., Simulator],
    operators: Callable[..., Operator],
    watches: list[OutputWatch],
) -> None:
    """The fleet doubles while the quota admits 8 of the 16 new shards; then it is raised.

    Bounds: 90 s for the first sync, 90 s for the refusal to show, 120 s to complete.
    """
    sim, _, watch = start_grown_fleet(
        api=api,
        namespace=namespace,
        simulator=simulator,
        operators=operators,
        watches=watches,
        name="quota",
    )
    before = watch.union()
    complete = watch.names()
    watch.set_floor(before)
    limit_config_maps(api, namespace, more=8)
    register_services(sim, first=SERVICES, last=GROWN)

    cr = eventually(
        lambda: degraded(api, namespace, "quota", reason="OutputWriteFailed"),
        timeout=90,
        what="Degraded=True OutputWriteFailed",
    )
    time.sleep(5)  # several refused cycles
    cr = get_cr(api, namespace, "quota")
    assert_never_below(watch)
    assert len(watch.names()) == SHARDS + 8
    assert "exceeded quota" in condition(cr, "Degraded")["message"]
    ready = condition(cr, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Synced")
    # The 16 shards of the last complete write still hold it (a cycle may have completed on
    # the first few new services, before they needed a 17th shard), and status counts them.
    held = watch.sizes()
    assert cr["status"]["targets"] == sum(held[name] for name in complete), (cr["status"], held)

    raise_config_map_limit(api, namespace, to=100)
    eventually(
        lambda: settled(watch, truth=names_of(range(GROWN)), shards=lambda k: k == GROWN_SHARDS),
        timeout=120,
        what="32 shards once the quota allows them",
    )
    eventually(lambda: synced(api, namespace, "quota", targets=GROWN * INSTANCES), timeout=30)
    assert_never_below(watch)


def kill_on_next_event(watch: OutputWatch, running: Operator) -> threading.Event:
    """Arm the watch: the next committed write gets the operator a SIGKILL."""
    killed = threading.Event()

    def on_event(event: tuple[str, str]) -> None:
        if not killed.is_set():
            running.kill()
            killed.set()

    watch.on_event = on_event
    return killed


def midway(watch: OutputWatch, *, final_shards: int) -> bool:
    """Whether the outputs are between two complete writes (a kill landed mid-pass)."""
    held = watch.sizes()
    return len(held) != final_shards or sum(held.values()) != len(watch.union())


def change_frozen(running: Operator, change: Callable[[], None]) -> None:
    """Make ``change`` while the operator is stopped, so it sees all of it in one pass."""
    os.kill(running.process.pid, signal.SIGSTOP)
    try:
        change()
    finally:
        os.kill(running.process.pid, signal.SIGCONT)


def test_an_operator_killed_midway_through_a_resize_never_leaves_a_target_out(
    api: k8s.ApiClient,
    namespace: str,
    simulator: Callable[..., Simulator],
    operators: Callable[..., Operator],
    watches: list[OutputWatch],
) -> None:
    """kill -9 at the first write of the 16 -> 32 pass, restart; the same for 32 -> 4 shards.

    Bounds: 90 s for the first sync, 60 s for the kill to come, 120 s for the restarted operator
    to complete each resize.
    """
    sim, first, watch = start_grown_fleet(
        api=api,
        namespace=namespace,
        simulator=simulator,
        operators=operators,
        watches=watches,
        name="kill",
    )
    watch.set_floor(watch.union())
    killed = kill_on_next_event(watch, first)
    change_frozen(first, lambda: register_services(sim, first=SERVICES, last=GROWN))
    assert killed.wait(60), "no write came to kill the operator at"
    time.sleep(2)  # the watch catches up with what the dead operator wrote
    assert midway(watch, final_shards=GROWN_SHARDS), "the kill came after the pass ended"
    assert_never_below(watch)
    second = operators()
    eventually(
        lambda: settled(watch, truth=names_of(range(GROWN)), shards=lambda k: k == GROWN_SHARDS),
        timeout=120,
        what="the restarted operator to finish growing",
    )
    eventually(lambda: synced(api, namespace, "kill", targets=GROWN * INSTANCES), timeout=30)
    assert_never_below(watch)

    kept = {t for t in watch.union() if service_of(t) in names_of(range(SHRUNK))}
    watch.set_floor(kept)
    killed = kill_on_next_event(watch, second)
    change_frozen(second, lambda: deregister_services(sim, first=SHRUNK, last=GROWN))
    assert killed.wait(60), "no write came to kill the operator at"
    time.sleep(2)
    assert midway(watch, final_shards=4), "the kill came after the pass ended"
    assert_never_below(watch)
    operators()
    eventually(
        lambda: settled(watch, truth=names_of(range(SHRUNK)), shards=lambda k: k == 4),
        timeout=120,
        what="the restarted operator to finish shrinking",
    )
    eventually(lambda: synced(api, namespace, "kill", targets=SHRUNK * INSTANCES), timeout=30)
    assert_never_below(watch)


# ------------------------------------------------------------------------- 2. ownership


def config_map(api: k8s.ApiClient, namespace: str, name: str) -> k8s.V1ConfigMap:
    return k8s.CoreV1Api(api).read_namespaced_config_map(name, namespace)


def test_a_second_cr_with_the_same_output_name_gets_output_conflict_and_takes_nothing(
    api: k8s.ApiClient,
    namespace: str,
    simulator: Callable[..., Simulator],
    operators: Callable[..., Operator],
) -> None:
    """team-a writes shared-0; team-b asks for the same name. Bounds: 90 s per status."""
    sim_a, sim_b = simulator(services=3, instances=1), simulator(services=5, instances=1)
    operators()
    body = sample_cr("team-a", server=sim_a.address)
    body["spec"]["output"]["configMap"]["name"] = "shared"
    create_cr(api, namespace, body)
    cr_a = eventually(lambda: synced(api, namespace, "team-a", targets=3), timeout=90)
    before = config_map(api, namespace, "shared-0")

    body = sample_cr("team-b", server=sim_b.address)
    body["spec"]["output"]["configMap"]["name"] = "shared"
    create_cr(api, namespace, body)
    cr_b = eventually(
        lambda: degraded(api, namespace, "team-b", reason="OutputConflict"), timeout=90
    )
    assert condition(cr_b, "Ready")["status"] == "False"
    assert "shared-0" in condition(cr_b, "Degraded")["message"]
    time.sleep(5)  # team-b retries every second

    after = config_map(api, namespace, "shared-0")
    assert after.metadata.resource_version == before.metadata.resource_version
    assert [o.uid for o in after.metadata.owner_references] == [cr_a["metadata"]["uid"]]
    assert len(targets_of(after.data)) == 3
    synced(api, namespace, "team-a", targets=3)


def test_a_users_config_map_with_the_output_name_is_never_written_nor_deleted(
    api: k8s.ApiClient,
    namespace: str,
    simulator: Callable[..., Simulator],
    operators: Callable[..., Operator],
) -> None:
    """victim-0 is the user's (it even carries our discovery label); the CR then moves away.

    Bounds: 90 s for each status.
    """
    core = k8s.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "victim-0",
                "labels": {"app": "mine", "consul-sd.io/discovery": "grabby"},
                "annotations": {"owner": "a user"},
            },
            "data": {"settings.ini": "[keep]\nthis=1\n"},
        },
    )
    original = config_map(api, namespace, "victim-0")
    sim = simulator(services=3, instances=1)
    operators()
    body = sample_cr("grabby", server=sim.address)
    body["spec"]["output"]["configMap"]["name"] = "victim"
    create_cr(api, namespace, body)
    cr = eventually(lambda: degraded(api, namespace, "grabby", reason="OutputConflict"), timeout=90)
    assert "victim-0" in condition(cr, "Degraded")["message"]
    time.sleep(3)  # a few more attempts
    assert config_map(api, namespace, "victim-0") == original

    custom(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "grabby",
        {"spec": {"output": {"configMap": {"name": "elsewhere"}}}},
    )
    eventually(lambda: synced(api, namespace, "grabby", targets=3), timeout=90)
    assert len(targets_of(config_map(api, namespace, "elsewhere-0").data)) == 3
    assert config_map(api, namespace, "victim-0") == original


# ------------------------------------------------------------------------- 3. partition

PARTITION_SECONDS = 45.0
# After healing, the worst case is a call sent on a connection frozen in the partition: it
# ends at the 30 s read timeout, then the next call (status, or the retried write) goes out on a
# new connection. Two such calls in a row and a polling cycle stay well under this.
RECOVERY_BOUND = 90.0


def rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


@pytest.mark.timeout(360)
def test_after_a_partition_that_never_closes_connections_a_change_arrives_within_the_bound(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
    simulator: Callable[..., Simulator],
    operators: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    """A 45 s black hole between the operator and the apiserver (kopf's watch included) while
    Consul changes; after healing the change is written within RECOVERY_BOUND (90 s) and status
    is Synced with a lastSyncTime after the heal. Bounds: 90 s first sync, 45 s partition, 90 s.
    """
    proxy = TcpProxy(control_plane.port)
    try:
        kubeconfig = kubeconfig_via(control_plane, tmp_path / "proxied", port=proxy.port)
        sim = simulator(services=5, instances=1)
        running = operators(kubeconfig=kubeconfig)
        create_cr(api, namespace, sample_cr("cut", server=sim.address))
        eventually(lambda: synced(api, namespace, "cut", targets=5), timeout=90)

        proxy.black_hole()
        sim.register(
            {"Node": "late-node", "Address": "10.9.9.9", "Service": {"Service": "late", "Port": 1}}
        )
        time.sleep(PARTITION_SECONDS)
        proxy.heal()
        healed = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        started = time.monotonic()

        def arrived() -> bool:
            groups = targets_of(config_map(api, namespace, "cut-0").data)
            assert "late" in {service_of(g) for g in groups}, len(groups)
            return True

        eventually(arrived, timeout=RECOVERY_BOUND, what="the change after healing")
        took = time.monotonic() - started
        cr = eventually(
            lambda: synced(api, namespace, "cut", targets=6),
            timeout=RECOVERY_BOUND - took,
            what="status after healing",
        )
        assert rfc3339(cr["status"]["lastSyncTime"]) >= healed
        assert running.alive()
    finally:
        proxy.stop()
