"""A generation that asks for HTTP SD: what the operator's target store is told, and when.

run_generation runs against the fake apiserver and the Consul simulator in virtual time; the
target store is the operator's own, asked through its request handler (404 unknown, 503 before
the first complete snapshot, 401/403 without the right token, else 200), so each test reads as
what a Prometheus fetching ``/targets/<namespace>/<name>`` would see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from consul_sd.controller.runner import HTTPSDServing, run_generation
from consul_sd.loops import cancel_and_wait
from consul_sd.outputs.http_sd import TargetStore, answer
from consul_simulator import ConsulSimulator
from tests.unit.fake_kube import REF, FakeKube

pytestmark = pytest.mark.looptime
KEY = (REF.namespace, REF.name)
BASE_URL = "http://consul-sd-operator-metrics.monitoring.svc:9090"


class Store(TargetStore):
    """The operator's target store, asked as ``GET /targets/ns/cr`` would ask it."""

    def answer(self, key: tuple[str, str] = KEY, *, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        request = make_mocked_request("GET", f"/targets/{key[0]}/{key[1]}", headers=headers)
        return answer(request, self, key).status

    def targets(self, key: tuple[str, str] = KEY) -> int:
        (entry,) = [e for e in self.describe() if (e["namespace"], e["name"]) == key]
        return int(str(entry["targets"]))

    def known(self) -> set[tuple[str, str]]:
        """The keys served, or awaiting their first complete snapshot."""
        return {(str(e["namespace"]), str(e["name"])) for e in self.describe()}


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(services=5, instances=2, nodes=2)
        yield simulator


def http_sd_spec(sim: ConsulSimulator, *, token: bool = True, **output: Any) -> dict[str, Any]:
    http_sd: dict[str, Any] = {"refreshInterval": "15s"}
    if token:
        http_sd["authorization"] = {"secretRef": {"name": "sd", "key": "token"}}
    return {
        "consul": {"server": sim.address, "datacenter": "dc1"},
        "mode": "Polling",
        "refreshInterval": "5s",
        "output": output or {"httpSD": http_sd},
    }


async def until(predicate: Any, *, timeout: float = 600) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(1)


def start(
    kube: FakeKube, spec: dict[str, Any], serving: HTTPSDServing | None, generation: int = 1
) -> asyncio.Task[None]:
    return asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=generation, spec_data=spec, serving=serving)
    )


async def test_503_before_the_first_complete_snapshot_then_served_with_the_secrets_token(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = FakeKube(secrets={("sd", "token"): " sd-token\n"})
    sim.faults.fail_services = set(sim.catalog.service_names())  # no complete snapshot yet
    task = start(kube, http_sd_spec(sim), HTTPSDServing(store=store, base_url=BASE_URL))
    try:
        await until(lambda: KEY in store.known())
        await asyncio.sleep(30)  # several failing cycles
        assert store.answer(token="sd-token") == 503
        sim.faults.fail_services = set()
        await until(lambda: store.answer(token="sd-token") == 200)
        assert store.targets() == 10
        assert store.answer() == 401
        assert store.answer(token="wrong") == 403
        assert ("ns", "sd", "token") in kube.secret_reads
        ready = next(c for c in kube.statuses[-1]["conditions"] if c["type"] == "Ready")
        assert ready["message"] == "10 targets from 5 services served over HTTP SD"
        assert "sd-token" not in repr(kube.statuses)
    finally:
        await cancel_and_wait([task])


class SlowSecrets(FakeKube):
    """An apiserver that has not answered the Secret read yet."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answer_secrets = asyncio.Event()

    async def read_secret_value(self, *, namespace: str, name: str, key: str) -> str:
        await self.answer_secrets.wait()
        return await super().read_secret_value(namespace=namespace, name=name, key=key)


async def test_a_cr_answers_503_not_404_while_its_credentials_are_being_read(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = SlowSecrets(secrets={("sd", "token"): "sd-token"})
    task = start(kube, http_sd_spec(sim), HTTPSDServing(store=store, base_url=BASE_URL))
    try:
        await asyncio.sleep(10)  # the worker waits on the Secret read
        assert store.answer() == 503
        kube.answer_secrets.set()
        await until(lambda: store.answer(token="sd-token") == 200)
        assert store.answer() == 401
    finally:
        await cancel_and_wait([task])


async def test_an_unchanged_token_changes_nothing_and_a_rotated_one_is_picked_up(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = FakeKube(secrets={("sd", "token"): "first"})
    task = start(kube, http_sd_spec(sim), HTTPSDServing(store=store, base_url=BASE_URL))
    try:
        await until(lambda: store.answer(token="first") == 200)
        await asyncio.sleep(3 * 60)  # three rechecks of an unchanged token: nothing happens
        assert kube.events == []
        kube.secrets[("sd", "token")] = "second"
        await until(lambda: store.answer(token="second") == 200)
        assert store.answer(token="first") == 403
    finally:
        await cancel_and_wait([task])


async def test_an_unusable_token_is_secret_invalid_and_nothing_is_served(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = FakeKube(secrets={("sd", "token"): "two words"})
    task = start(kube, http_sd_spec(sim), HTTPSDServing(store=store, base_url=BASE_URL))
    try:
        await until(lambda: ("Warning", "SecretInvalid") in kube.events)
        assert store.answer() == 503  # known, never served
        assert store.answer(token="two words") == 503
        assert "two words" not in repr(kube.statuses)
    finally:
        await cancel_and_wait([task])


async def test_a_generation_that_stops_asking_is_forgotten(sim: ConsulSimulator) -> None:
    store = Store()
    kube = FakeKube(secrets={("sd", "token"): "t"})
    serving = HTTPSDServing(store=store, base_url=BASE_URL)
    first = start(kube, http_sd_spec(sim), serving)
    await until(lambda: store.answer(token="t") == 200)
    await cancel_and_wait([first])
    assert store.answer(token="t") == 200  # a spec change alone keeps the last answer
    second = start(kube, http_sd_spec(sim, configMap={"name": "cr"}), serving, generation=2)
    try:
        await until(lambda: len(kube.objects) == 1)
        assert store.answer(token="t") == 404
    finally:
        await cancel_and_wait([second])


async def test_the_http_sd_scrape_config_without_an_http_sd_url_is_unavailable_outputs_kept(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = FakeKube()
    kube.add_object("ScrapeConfig", "sc-0", owner_uid=REF.uid, payload={"staticConfigs": []})
    spec = http_sd_spec(sim, token=False, scrapeConfig={"name": "sc", "targetsFrom": "HTTPSD"})
    task = start(kube, spec, HTTPSDServing(store=store, base_url=None))
    try:
        await until(lambda: bool(kube.statuses))
        await asyncio.sleep(30)
    finally:
        await cancel_and_wait([task])
    (status,) = kube.statuses
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "HTTPSDUnavailable")
    assert "--http-sd-url" in ready["message"]
    assert "\n" not in ready["message"]
    assert kube.events == [("Warning", "HTTPSDUnavailable")]
    assert set(kube.objects) == {("ScrapeConfig", "sc-0")}
    assert store.answer() == 404


async def test_the_http_sd_scrape_config_points_at_the_operator_and_the_target_is_served(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = FakeKube()
    spec = http_sd_spec(sim, token=False, scrapeConfig={"name": "sc", "targetsFrom": "HTTPSD"})
    task = start(kube, spec, HTTPSDServing(store=store, base_url=BASE_URL))
    try:
        await until(lambda: ("ScrapeConfig", "sc") in kube.objects)
        assert store.answer() == 200
    finally:
        await cancel_and_wait([task])
    (config,) = kube.objects[("ScrapeConfig", "sc")]["spec"]["httpSDConfigs"]
    assert config == {"url": f"{BASE_URL}/targets/ns/cr", "refreshInterval": "30s"}


async def test_switching_from_static_targets_serves_them_before_a_static_shard_is_deleted(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = FakeKube()
    serving = HTTPSDServing(store=store, base_url=BASE_URL)
    static = http_sd_spec(sim, token=False, scrapeConfig={"name": "sc"})
    first = start(kube, static, serving)
    await until(lambda: ("ScrapeConfig", "sc-0") in kube.objects)
    await cancel_and_wait([first])
    answers_at_deletes: list[int] = []

    def record(verb: str, kind: str, name: str) -> None:
        if verb == "delete":
            answers_at_deletes.append(store.answer())

    kube.refuse = record
    spec = http_sd_spec(sim, token=False, scrapeConfig={"name": "sc", "targetsFrom": "HTTPSD"})
    second = start(kube, spec, serving, generation=2)
    try:
        await until(lambda: set(kube.objects) == {("ScrapeConfig", "sc")})
    finally:
        await cancel_and_wait([second])
    assert answers_at_deletes == [200]


async def test_a_token_added_whose_secret_is_missing_never_serves_the_targets_without_it(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = FakeKube()  # no Secret "sd"
    serving = HTTPSDServing(store=store, base_url=BASE_URL)
    first = start(kube, http_sd_spec(sim, token=False), serving)
    await until(lambda: store.answer() == 200)
    await cancel_and_wait([first])
    # The user now protects the endpoint, but the Secret is not there (yet).
    second = start(kube, http_sd_spec(sim, token=True), serving, generation=2)
    try:
        await until(lambda: ("Warning", "SecretNotFound") in kube.events)
        await asyncio.sleep(120)
        assert store.answer() == 503  # never the targets without the token the spec requires
    finally:
        await cancel_and_wait([second])


async def test_a_deleted_token_secret_stops_the_old_token_from_reading_targets(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = FakeKube(secrets={("sd", "token"): "leaked"})
    task = start(kube, http_sd_spec(sim), HTTPSDServing(store=store, base_url=BASE_URL))
    try:
        await until(lambda: store.answer(token="leaked") == 200)
        del kube.secrets[("sd", "token")]  # revoke
        await until(lambda: ("Warning", "SecretNotFound") in kube.events)
        await asyncio.sleep(300)
        assert store.answer(token="leaked") == 503  # a revoked token reads nothing
    finally:
        await cancel_and_wait([task])


async def test_switching_back_to_static_keeps_serving_until_the_static_shards_are_written(
    sim: ConsulSimulator,
) -> None:
    store = Store()
    kube = FakeKube()
    serving = HTTPSDServing(store=store, base_url=BASE_URL)
    http = http_sd_spec(sim, token=False, scrapeConfig={"name": "sc", "targetsFrom": "HTTPSD"})
    first = start(kube, http, serving)
    await until(lambda: ("ScrapeConfig", "sc") in kube.objects and store.answer() == 200)
    await cancel_and_wait([first])
    sim.faults.fail_services = set(sim.catalog.service_names())  # Consul trouble meanwhile
    static = http_sd_spec(sim, token=False, scrapeConfig={"name": "sc"})
    second = start(kube, static, serving, generation=2)
    try:
        await asyncio.sleep(60)
        assert ("ScrapeConfig", "sc") in kube.objects  # the HTTP SD object still in place...
        assert store.answer() == 200  # ...and its URL still answers: never a 404 meanwhile
    finally:
        await cancel_and_wait([second])


def test_the_served_entry_repr_does_not_show_the_token() -> None:
    store = TargetStore()
    store.expect(KEY, token="s3cr3t-token")
    assert "s3cr3t-token" not in repr(store.lookup(KEY))
