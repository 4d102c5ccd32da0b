"""The operator on a real kube-apiserver + etcd, with Consul played by the simulator."""

from __future__ import annotations

import base64
import functools
import gzip
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.e2e.operator_harness import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    Simulator,
    condition,
    create_cr,
    create_prometheus_cr,
    eventually,
    get_cr,
    sample_cr,
)
from tests.support.components import ControlPlane

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane,
    consul_sd_crd: None,
    monitoring_crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    running = Operator(control_plane, tmp_path_factory.mktemp("operator"))
    yield running
    running.stop()


def custom(api: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


def patch_spec(api: k8s.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
    )


def config_maps(api: k8s.ApiClient, namespace: str, cr: str) -> dict[str, k8s.V1ConfigMap]:
    items = (
        k8s.CoreV1Api(api)
        .list_namespaced_config_map(namespace, label_selector=f"consul-sd.io/discovery={cr}")
        .items
    )
    return {item.metadata.name: item for item in items}


def targets_in(maps: dict[str, k8s.V1ConfigMap]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for item in maps.values():
        for data in (item.data or {}).values():
            groups.extend(json.loads(data))
    return groups


def ready(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    cr = get_cr(api, namespace, name)
    assert condition(cr, "Ready").get("status") == "True", cr.get("status")
    assert cr["status"]["observedGeneration"] == cr["metadata"]["generation"]
    return cr


def test_an_applied_cr_gets_configmaps_with_its_targets_and_ready_status(
    api: k8s.ApiClient, operator: Operator, namespace: str, simulator: Callable[..., Simulator]
) -> None:
    sim = simulator(services=20, instances=2)
    create_cr(api, namespace, sample_cr("web", server=sim.address))
    cr = eventually(lambda: ready(api, namespace, "web"), what="Ready=True")
    maps = config_maps(api, namespace, "web")
    groups = targets_in(maps)
    assert len(groups) == 40
    assert {g["labels"]["__meta_consul_service"] for g in groups} == {
        f"svc-{i:05d}" for i in range(20)
    }
    status = cr["status"]
    assert status["mode"] == "Polling"
    assert status["services"] == 20
    assert status["targets"] == 40
    assert condition(cr, "Degraded")["status"] == "False"
    assert condition(cr, "Progressing")["status"] == "False"
    assert [o["name"] for o in status["outputs"]] == sorted(maps)
    for item in maps.values():
        (owner,) = item.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == (
            "ConsulDiscovery",
            "web",
            cr["metadata"]["uid"],
        )
        assert all(key.endswith(".json") for key in item.data)


def test_a_spec_edit_changes_the_outputs(
    api: k8s.ApiClient, operator: Operator, namespace: str, simulator: Callable[..., Simulator]
) -> None:
    sim = simulator(services=20, instances=1)
    create_cr(api, namespace, sample_cr("edit", server=sim.address))
    eventually(lambda: ready(api, namespace, "edit"), what="Ready=True")
    tagged = {
        name
        for g in targets_in(config_maps(api, namespace, "edit"))
        if ",prod," in g["labels"]["__meta_consul_tags"]
        for name in [g["labels"]["__meta_consul_service"]]
    }
    assert 0 < len(tagged) < 20
    patch_spec(api, namespace, "edit", {"selector": {"tags": ["prod"]}})

    def only_prod() -> bool:
        ready(api, namespace, "edit")
        services = {
            g["labels"]["__meta_consul_service"]
            for g in targets_in(config_maps(api, namespace, "edit"))
        }
        assert services == tagged
        return True

    eventually(only_prod, what="outputs for selector.tags=[prod]")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"maxConcurrent": 0}, "spec.maxConcurrent"),
        ({"mode": "Fast"}, "spec.mode"),
        ({"refreshInterval": "5x"}, "spec.refreshInterval"),
        ({"output": None}, "spec.output"),
    ],
)
def test_the_apiserver_rejects_a_bad_spec_naming_the_field(
    api: k8s.ApiClient, consul_sd_crd: None, namespace: str, change: dict[str, Any], field: str
) -> None:
    body = sample_cr("bad", server="127.0.0.1:1")
    body["spec"].update(change)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    with pytest.raises(k8s.ApiException) as caught:
        create_cr(api, namespace, body)
    assert caught.value.status == 422
    assert field in str(caught.value.body)


def test_a_rule_the_schema_cannot_express_gives_ready_false_invalid_spec(
    api: k8s.ApiClient, operator: Operator, namespace: str
) -> None:
    body = sample_cr("conflict", server="127.0.0.1:1")
    body["spec"]["consul"]["tokenSecretRef"] = {"name": "t", "key": "token"}
    body["spec"]["consul"]["basicAuthSecretRef"] = {"name": "b"}
    create_cr(api, namespace, body)

    def invalid() -> dict[str, Any]:
        ready_condition = condition(get_cr(api, namespace, "conflict"), "Ready")
        assert ready_condition.get("reason") == "InvalidSpec", ready_condition
        return ready_condition

    found = eventually(invalid, what="Ready=False InvalidSpec")
    assert found["status"] == "False"
    assert "tokenSecretRef and basicAuthSecretRef are mutually exclusive" in found["message"]
    events = k8s.CoreV1Api(api).list_namespaced_event(namespace).items
    assert any(e.reason == "InvalidSpec" and e.type == "Warning" for e in events)


def test_a_missing_secret_is_reported_then_picked_up_when_created(
    api: k8s.ApiClient, operator: Operator, namespace: str, simulator: Callable[..., Simulator]
) -> None:
    sim = simulator(services=3, instances=1)
    body = sample_cr("secret", server=sim.address)
    body["spec"]["consul"]["tokenSecretRef"] = {"name": "consul-token", "key": "token"}
    create_cr(api, namespace, body)

    def missing() -> bool:
        found = condition(get_cr(api, namespace, "secret"), "Ready")
        assert found.get("reason") == "SecretNotFound", found
        return True

    eventually(missing, what="SecretNotFound")
    token = "tok-" + uuid.uuid4().hex
    k8s.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": "consul-token"}, "stringData": {"token": token}}
    )
    cr = eventually(lambda: ready(api, namespace, "secret"), timeout=120, what="Ready=True")
    assert token not in json.dumps(cr)
    assert token not in operator.log_text()
    events = k8s.CoreV1Api(api).list_namespaced_event(namespace).items
    assert all(token not in (e.message or "") for e in events)


def test_consul_outage_keeps_outputs_and_reports_degraded_until_recovery(
    api: k8s.ApiClient, operator: Operator, namespace: str, simulator: Callable[..., Simulator]
) -> None:
    sim = simulator(services=10, instances=2)
    create_cr(api, namespace, sample_cr("outage", server=sim.address))
    eventually(lambda: ready(api, namespace, "outage"), what="Ready=True")
    before = {name: m.data for name, m in config_maps(api, namespace, "outage").items()}
    sim.faults(error_rate=1.0)

    def degraded() -> bool:
        found = condition(get_cr(api, namespace, "outage"), "Degraded")
        assert found.get("status") == "True", found
        return True

    eventually(degraded, timeout=90, what="Degraded=True")
    assert {n: m.data for n, m in config_maps(api, namespace, "outage").items()} == before
    assert condition(get_cr(api, namespace, "outage"), "Ready")["status"] == "True"
    sim.faults(error_rate=0.0)

    def recovered() -> bool:
        found = condition(get_cr(api, namespace, "outage"), "Degraded")
        assert found.get("status") == "False", found
        return True

    eventually(recovered, timeout=90, what="Degraded=False")
    reasons = [e.reason for e in k8s.CoreV1Api(api).list_namespaced_event(namespace).items]
    assert "ConsulServerError" in reasons
    assert "Recovered" in reasons


def test_twenty_thousand_targets_shard_under_the_limits_and_one_change_rewrites_one_shard(
    api: k8s.ApiClient, operator: Operator, namespace: str, simulator: Callable[..., Simulator]
) -> None:
    sim = simulator(services=5000, instances=4, nodes=400)
    body = sample_cr("big", server=sim.address, refreshInterval="5s", maxConcurrent=200)
    body["spec"]["output"]["scrapeConfig"] = {"name": "big", "labels": {"team": "obs"}}
    create_cr(api, namespace, body)
    eventually(lambda: ready(api, namespace, "big"), timeout=300, what="Ready=True")
    maps = config_maps(api, namespace, "big")
    assert len(targets_in(maps)) == 20000
    assert len(maps) > 1
    for item in maps.values():
        size = sum(len(v.encode()) for v in item.data.values())
        assert size < 0.9 * MIB, (item.metadata.name, size)
    scrape_configs = custom(api).list_namespaced_custom_object(
        "monitoring.coreos.com",
        "v1alpha1",
        namespace,
        "scrapeconfigs",
        label_selector="consul-sd.io/discovery=big",
    )["items"]
    assert sum(len(sc["spec"]["staticConfigs"]) for sc in scrape_configs) == 20000
    assert all(sc["metadata"]["labels"]["team"] == "obs" for sc in scrape_configs)
    versions = {m.metadata.name: m.metadata.resource_version for m in maps.values()}
    sc_versions = {
        sc["metadata"]["name"]: sc["metadata"]["resourceVersion"] for sc in scrape_configs
    }

    # On a new node: re-registering an existing node rewrites its record, and so every
    # service instance on it.
    sim.register(
        {
            "Node": "node-new",
            "Address": "10.200.0.1",
            "Service": {"ID": "svc-00042-new", "Service": "svc-00042", "Port": 9999},
        }
    )

    def one_more() -> bool:
        assert len(targets_in(config_maps(api, namespace, "big"))) == 20001
        return True

    eventually(one_more, timeout=120, what="the new instance")
    after = {
        m.metadata.name: m.metadata.resource_version
        for m in config_maps(api, namespace, "big").values()
    }
    assert sum(after[name] != versions[name] for name in versions) == 1

    def scrape_configs_changed() -> list[str]:
        listed = custom(api).list_namespaced_custom_object(
            "monitoring.coreos.com",
            "v1alpha1",
            namespace,
            "scrapeconfigs",
            label_selector="consul-sd.io/discovery=big",
        )["items"]
        return [
            sc["metadata"]["name"]
            for sc in listed
            if sc["metadata"]["resourceVersion"] != sc_versions.get(sc["metadata"]["name"])
        ]

    # The ScrapeConfigs are written after the ConfigMaps, in the same pass.
    eventually(scrape_configs_changed, timeout=60, what="the ScrapeConfig with the new instance")
    assert len(scrape_configs_changed()) == 1


def test_prometheus_operator_renders_our_targets_into_its_config_secret(
    api: k8s.ApiClient,
    operator: Operator,
    prometheus_operator: Any,
    namespace: str,
    simulator: Callable[..., Simulator],
) -> None:
    sim = simulator(services=5, instances=2)
    body = sample_cr("po", server=sim.address)
    body["spec"]["output"] = {
        "scrapeConfig": {"name": "po", "labels": {"prometheus": "main"}, "scrapeInterval": "15s"}
    }
    create_cr(api, namespace, body)
    eventually(lambda: ready(api, namespace, "po"), what="Ready=True")
    create_prometheus_cr(api, namespace)

    def rendered() -> str:
        secret = k8s.CoreV1Api(api).read_namespaced_secret("prometheus-main", namespace)
        text = gzip.decompress(base64.b64decode(secret.data["prometheus.yaml.gz"])).decode()
        assert "scrapeConfig/" in text
        return text

    text = eventually(rendered, timeout=120, what="prometheus-main's rendered config")
    config = yaml.safe_load(text)
    jobs = [
        j
        for j in config["scrape_configs"]
        if j["job_name"].startswith(f"scrapeConfig/{namespace}/po")
    ]
    assert jobs
    static = [
        t for job in jobs for group in job.get("static_configs", []) for t in group["targets"]
    ]
    assert len(static) == 10
    labels = [group["labels"] for job in jobs for group in job["static_configs"]]
    assert all(item["__meta_consul_dc"] == "dc1" for item in labels)
    assert all(job["scrape_interval"] == "15s" for job in jobs)


def test_two_crs_in_two_namespaces_run_independently_and_deleting_one_stops_it(
    api: k8s.ApiClient, operator: Operator, simulator: Callable[..., Simulator]
) -> None:
    core = k8s.CoreV1Api(api)
    spaces = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    sims = [simulator(services=3, instances=1), simulator(services=5, instances=1)]
    for space, sim in zip(spaces, sims, strict=True):
        core.create_namespace({"metadata": {"name": space}})
        create_cr(api, space, sample_cr("twin", server=sim.address))
    for space in spaces:
        eventually(functools.partial(ready, api, space, "twin"), what=f"Ready in {space}")
    assert [len(targets_in(config_maps(api, s, "twin"))) for s in spaces] == [3, 5]

    custom(api).delete_namespaced_custom_object(GROUP, VERSION, spaces[0], PLURAL, "twin")

    def gone() -> bool:
        try:
            get_cr(api, spaces[0], "twin")
        except k8s.ApiException as exc:
            return bool(exc.status == 404)
        return False

    eventually(gone, what="the deleted CR to go (the daemon stopped, the finalizer removed)")
    # No controller-manager runs here: delete what the garbage collector would, by owner.
    leftovers = config_maps(api, spaces[0], "twin")
    assert leftovers
    for item in leftovers.values():
        assert item.metadata.owner_references[0].kind == "ConsulDiscovery"
        core.delete_namespaced_config_map(item.metadata.name, spaces[0])
    sims[0].register(
        {"Node": "n", "Address": "10.0.0.9", "Service": {"Service": "late", "Port": 1}}
    )
    sims[1].register(
        {"Node": "n", "Address": "10.0.0.9", "Service": {"Service": "late", "Port": 1}}
    )
    eventually(lambda: len(targets_in(config_maps(api, spaces[1], "twin"))) == 6, what="twin 2")
    assert config_maps(api, spaces[0], "twin") == {}  # the stopped worker wrote nothing back
    ready(api, spaces[1], "twin")


# Last in the module: it stops the shared operator (two operators would both serve every CR).
def test_an_operator_restart_resumes_without_rewriting_outputs(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    consul_sd_crd: None,
    monitoring_crds: list[str],
    operator: Operator,
    namespace: str,
    simulator: Callable[..., Simulator],
    tmp_path: Path,
) -> None:
    sim = simulator(services=8, instances=2)
    body = sample_cr("restart", server=sim.address)
    body["spec"]["output"]["scrapeConfig"] = {"name": "restart"}
    create_cr(api, namespace, body)
    eventually(lambda: ready(api, namespace, "restart"), what="Ready=True")
    maps = config_maps(api, namespace, "restart")
    versions = {name: m.metadata.resource_version for name, m in maps.items()}
    operator.stop()
    second = Operator(control_plane, tmp_path)
    try:

        def resumed() -> bool:
            assert (
                'consul_sd_output_writes_total{kind="ConfigMap",name="restart"' in second.metrics()
            )
            return True

        eventually(resumed, timeout=60, what="the restarted operator to publish")
        metrics = second.metrics()
        assert 'outcome="written"' not in "\n".join(
            line
            for line in metrics.splitlines()
            if 'name="restart"' in line and "output_writes" in line
        )
        after = {
            n: m.metadata.resource_version
            for n, m in config_maps(api, namespace, "restart").items()
        }
        assert after == versions
    finally:
        second.stop()
