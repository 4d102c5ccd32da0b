"""One generation at run time: the sink's status rules, credentials, and run_generation's loop.

The sink and credentials run against the fake apiserver of ``fake_kube``; run_generation runs
against it and the Consul simulator in virtual time, so a Secret rotation a minute later or a
backoff after a failure costs no real time.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import trustme
from prometheus_client import REGISTRY

from consul_sd.api.durations import format_duration
from consul_sd.api.spec import parse_spec
from consul_sd.api.status import Problem
from consul_sd.consul.errors import ConsulBadRequest, ConsulServerError, ConsulUnreachable
from consul_sd.controller import reporting, runner
from consul_sd.controller.credentials import resolve_endpoint
from consul_sd.controller.progress import Progress
from consul_sd.controller.runner import GenerationSink, describe_failure, run_generation
from consul_sd.discovery.snapshots import Snapshot
from consul_sd.kube import (
    DiscoveryRef,
    KubeError,
    SecretInvalid,
    SecretNotFound,
    decode_secret_value,
)
from consul_sd.loops import cancel_and_wait
from consul_simulator import ConsulSimulator
from tests.unit.fake_kube import REF, FakeKube
from tests.unit.test_outputs import fleet

SPEC = {"consul": {"server": "c:8500"}, "output": {"configMap": {"name": "cr"}}}
SECRET_BYTES = "s3cr3t-value"


def sink_for(kube: FakeKube, *, clock: Callable[[], float] = time.monotonic) -> GenerationSink:
    spec = parse_spec(SPEC, require_output=True)
    return GenerationSink(kube=kube, ref=REF, generation=3, spec=spec, clock=clock)


def snapshot(services: int, **kwargs: Any) -> Snapshot:
    groups = fleet(services)
    defaults: dict[str, Any] = {"mode": "Polling", "complete": True, "matched": len(groups)}
    return Snapshot(groups=groups, **(defaults | kwargs))


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def writes(kube: FakeKube) -> list[tuple[str, str, str]]:
    return [call for call in kube.calls if call[0] in ("create", "apply", "delete")]


# ------------------------------------------------------------------------------- the sink


async def test_nothing_is_written_before_the_first_complete_snapshot() -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    error = ConsulServerError("/v1/catalog/services: HTTP 500: boom", status=500)
    await sink.publish(Snapshot(groups={}, mode="Polling", complete=False, matched=0, error=error))
    assert writes(kube) == []
    status = kube.statuses[-1]
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Ready")["reason"] == "ConsulServerError"
    assert condition(status, "Progressing")["status"] == "True"
    assert status["observedGeneration"] == 3
    assert kube.events == [("Warning", "ConsulServerError")]


async def test_an_incomplete_snapshot_without_an_error_is_not_written_either() -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    await sink.publish(snapshot(4, complete=False, matched=5))
    assert writes(kube) == []
    assert condition(kube.statuses[-1], "Ready")["reason"] == "FirstSyncPending"


async def test_a_complete_snapshot_is_written_and_marks_ready() -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    await sink.publish(snapshot(10))
    assert writes(kube) == [("create", "ConfigMap", "cr-0")]
    (data,) = kube.objects[("ConfigMap", "cr-0")]["data"].values()
    assert len(json.loads(data)) == 30
    status = kube.statuses[-1]
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Degraded")["status"] == "False"
    assert status["targets"] == 30
    assert "lastSyncTime" in status
    assert status["outputs"] == [
        {"kind": "ConfigMap", "name": "cr-0", "targets": 30, "bytes": len(data.encode())}
    ]


async def test_unchanged_bytes_are_not_rewritten() -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    await sink.publish(snapshot(10))
    await sink.publish(snapshot(10))
    assert len(writes(kube)) == 1


async def test_an_oversize_write_keeps_ready_and_degrades_with_the_reason() -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    await sink.publish(snapshot(5))
    kube.refuse = lambda *_: KubeError("HTTP 422: Too long: at most 1048576", status=422)
    await sink.publish(snapshot(6))
    status = kube.statuses[-1]
    assert condition(status, "Degraded")["reason"] == "OutputTooLarge"
    assert condition(status, "Ready")["status"] == "True"  # the previous outputs still hold
    assert ("Warning", "OutputTooLarge") in kube.events
    # The figures are those of what the outputs hold, not of the snapshot that was refused.
    assert status["targets"] == 15
    assert condition(status, "Ready")["message"].startswith("15 targets from 5 services")


async def test_events_mark_transitions_not_every_cycle() -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    await sink.publish(snapshot(5))
    error = ConsulServerError("boom", status=500)
    for _ in range(3):
        await sink.publish(snapshot(5, complete=False, error=error))
    await sink.publish(snapshot(5))
    assert Counter(kube.events) == Counter(
        {("Warning", "ConsulServerError"): 1, ("Normal", "Recovered"): 1}
    )


async def test_failed_services_degrade_with_their_names() -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    failed = {"svc-00001": ConsulServerError("HTTP 500", status=500)}
    await sink.publish(snapshot(5, failed=failed))
    degraded = condition(kube.statuses[-1], "Degraded")
    assert degraded["reason"] == "ServicesFailing"
    assert "svc-00001" in degraded["message"]


async def test_every_service_refused_for_one_reason_is_that_reason_not_services_failing() -> None:
    """A healthFilter Consul cannot compile fails every service with the same 400."""
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    refusal = ConsulBadRequest("HTTP 400: filter: bad expression", status=400)
    failed = {f"svc-{i:05d}": refusal for i in range(3)}
    await sink.publish(
        Snapshot(groups={}, mode="Polling", complete=False, matched=3, failed=failed)
    )
    degraded = condition(kube.statuses[-1], "Degraded")
    assert degraded["reason"] == "ConsulBadRequest"
    assert "bad expression" in degraded["message"]


@pytest.mark.parametrize("reason", ["InvalidSpec", "SecretNotFound"])
async def test_a_blocked_start_reports_ready_false_with_the_reason(reason: str) -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.report_blocked(Problem(reason, "what to fix"))
    ready = condition(kube.statuses[-1], "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", reason, "what to fix")


async def test_the_status_sends_exactly_the_fields_it_knows() -> None:
    """Built from the CRD's model, it has today's keys; none null, no outputs before a write."""
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.report_blocked(None)
    assert set(kube.statuses[-1]) == {"observedGeneration", "conditions", "reason"}
    await sink.resume()
    requests = Counter({("catalog_services", "ok"): 1, ("health_service", "ok"): 4})
    await sink.publish(snapshot(4, duration=1.5, requests=requests))
    status = kube.statuses[-1]
    assert set(status) == {
        "observedGeneration",
        "conditions",
        "reason",
        "mode",
        "services",
        "failedServices",
        "consulRequests",
        "lastSyncDuration",
        "lastSyncTime",
        "targets",
        "outputs",
    }
    figures = ("mode", "services", "failedServices", "consulRequests", "lastSyncDuration")
    assert [status[key] for key in figures] == ["Polling", 4, 0, 5, "1s500ms"]
    assert set(condition(status, "Ready")) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


async def test_counters_alone_refresh_the_status_at_most_every_min_interval() -> None:
    now = [0.0]
    kube = FakeKube()
    sink = sink_for(kube, clock=lambda: now[0])
    await sink.resume()
    await sink.publish(snapshot(5, requests=Counter({("health_service", "ok"): 5})))
    patched = len(kube.statuses)
    now[0] += 1
    await sink.publish(snapshot(5, requests=Counter({("health_service", "ok"): 2}), duration=3))
    assert len(kube.statuses) == patched  # requests and duration alone: not yet
    now[0] += reporting.STATUS_MIN_INTERVAL
    await sink.publish(snapshot(5, requests=Counter({("health_service", "ok"): 2})))
    assert len(kube.statuses) == patched + 1
    await sink.publish(snapshot(6))  # the targets changed: at once
    assert len(kube.statuses) == patched + 2
    assert kube.statuses[-1]["targets"] == 18


async def test_auto_before_it_chose_a_mode_shows_no_mode() -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    cycles = {"namespace": "ns", "name": "cr", "mode": "Auto"}
    before = REGISTRY.get_sample_value("consul_sd_publications_total", cycles) or 0
    await sink.publish(snapshot(3, mode="Polling"))
    assert kube.status["mode"] == "Polling"  # what an earlier worker reported
    unreachable = ConsulUnreachable("/v1/catalog/services: connection refused")
    await sink.publish(snapshot(0, mode=None, complete=False, matched=0, error=unreachable))
    status = kube.status
    assert "mode" not in status
    assert condition(status, "Degraded")["reason"] == "ConsulUnreachable"
    assert REGISTRY.get_sample_value("consul_sd_publications_total", cycles) == before + 1
    assert kube.status["lastSyncTime"]  # kept: the failure wrote nothing


@pytest.mark.parametrize("mode", ["Polling", "Blocking", None])
async def test_every_mode_reports_how_long_its_discovery_took(mode: str | None) -> None:
    kube = FakeKube()
    sink = sink_for(kube)
    await sink.resume()
    labels = {"namespace": "ns", "name": "cr"}
    count = REGISTRY.get_sample_value("consul_sd_cycle_duration_seconds_count", labels) or 0
    total = REGISTRY.get_sample_value("consul_sd_cycle_duration_seconds_sum", labels) or 0
    await sink.publish(snapshot(3, mode=mode, duration=2.5))
    assert kube.statuses[-1]["lastSyncDuration"] == format_duration(2.5)
    assert REGISTRY.get_sample_value("consul_sd_cycle_duration_seconds_count", labels) == count + 1
    assert REGISTRY.get_sample_value("consul_sd_cycle_duration_seconds_sum", labels) == total + 2.5


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (SecretNotFound("Secret ns/consul not found"), "SecretNotFound"),
        (SecretInvalid("Secret ns/consul key 'token': blank"), "SecretInvalid"),
        (KubeError("HTTP 503: unavailable", status=503), "KubernetesError"),
        (ConsulServerError("HTTP 500: No cluster leader", status=500), "ConsulServerError"),
        (ValueError(SECRET_BYTES), "InternalError"),
    ],
)
def test_a_failure_at_the_boundary_is_reported_by_its_reason(
    failure: Exception, reason: str
) -> None:
    problem = describe_failure(failure)
    assert problem.reason == reason
    assert SECRET_BYTES not in problem.message  # an unexpected exception's text never shows


# ---------------------------------------------------------------------------- credentials

TLS_SPEC = {
    "server": "consul:8501",
    "scheme": "https",
    "tokenSecretRef": {"name": "consul", "key": "token"},
    "tls": {
        "caSecretRef": {"name": "tls", "key": "ca.crt"},
        "certSecretRef": {"name": "tls", "key": "tls.crt"},
        "keySecretRef": {"name": "tls", "key": "tls.key"},
        "serverName": "consul.service",
    },
}


def tls_secrets(**override: str) -> dict[tuple[str, str], str]:
    authority = trustme.CA()
    leaf = authority.issue_cert("consul-sd")
    secrets = {
        ("consul", "token"): "tok-123\n",
        ("tls", "ca.crt"): authority.cert_pem.bytes().decode(),
        ("tls", "tls.crt"): leaf.cert_chain_pems[0].bytes().decode(),
        ("tls", "tls.key"): leaf.private_key_pem.bytes().decode(),
    }
    for key, value in override.items():
        secrets[("tls" if key != "token" else "consul", key.replace("_", "."))] = value
    return secrets


async def test_credentials_and_tls_come_from_secrets_in_the_crs_namespace_read_once() -> None:
    kube = FakeKube(secrets=tls_secrets())
    consul = parse_spec({"consul": TLS_SPEC}).consul
    resolved = await resolve_endpoint(kube=kube, namespace="ns", consul=consul)
    endpoint = resolved.endpoint
    assert endpoint.token == "tok-123"
    assert endpoint.server_name == "consul.service"
    assert endpoint.ssl_context is not None
    assert endpoint.ssl_context.verify_mode.name == "CERT_REQUIRED"
    assert sorted(kube.secret_reads) == sorted(
        [
            ("ns", "consul", "token"),
            ("ns", "tls", "ca.crt"),
            ("ns", "tls", "tls.crt"),
            ("ns", "tls", "tls.key"),
        ]
    )
    assert "tok-123" not in repr(endpoint) + repr(resolved)


async def test_a_missing_secret_raises_secret_not_found() -> None:
    consul = parse_spec(
        {"consul": {"server": "c:8500", "tokenSecretRef": {"name": "gone", "key": "token"}}}
    ).consul
    with pytest.raises(SecretNotFound, match="ns/gone"):
        await resolve_endpoint(kube=FakeKube(), namespace="ns", consul=consul)


@pytest.mark.parametrize(
    ("secrets", "consul", "problem"),
    [
        pytest.param(
            {("t", "token"): f"abc\n{SECRET_BYTES}"},
            {"tokenSecretRef": {"name": "t", "key": "token"}},
            "Secret ns/t key 'token'",
            id="token with an inner newline",
        ),
        pytest.param(
            {("b", "username"): f"me:{SECRET_BYTES}", ("b", "password"): "pw"},
            {"basicAuthSecretRef": {"name": "b"}},
            "Secret ns/b (basic auth)",
            id="username with a colon",
        ),
        pytest.param(
            {("b", "username"): "me", ("b", "password"): f"{SECRET_BYTES}\u20ac"},
            {"basicAuthSecretRef": {"name": "b"}},
            "Secret ns/b (basic auth)",
            id="password outside latin-1",
        ),
        pytest.param(
            {("c", "ca.crt"): f"not a certificate {SECRET_BYTES}"},
            {"scheme": "https", "tls": {"caSecretRef": {"name": "c", "key": "ca.crt"}}},
            "TLS material from Secret(s) c/ca.crt",
            id="CA that is not PEM",
        ),
    ],
)
async def test_an_unusable_secret_value_is_secret_invalid_without_its_bytes(
    secrets: dict[tuple[str, str], str], consul: dict[str, Any], problem: str
) -> None:
    config = parse_spec({"consul": {"server": "c:8500", **consul}}).consul
    with pytest.raises(SecretInvalid) as raised:
        await resolve_endpoint(kube=FakeKube(secrets=secrets), namespace="ns", consul=config)
    assert problem in str(raised.value)
    assert SECRET_BYTES not in str(raised.value)
    # A traceback never shows the error underneath, whose text may quote the value.
    assert raised.value.__suppress_context__


def test_a_secret_that_is_not_utf8_is_secret_invalid_naming_the_byte_not_the_value() -> None:
    encoded = base64.b64encode(b"\xff" + SECRET_BYTES.encode()).decode()
    with pytest.raises(SecretInvalid, match=r"is not UTF-8 text \(byte 0\)") as raised:
        decode_secret_value(encoded, where="Secret ns/t key 'token'")
    assert SECRET_BYTES not in str(raised.value)


# ------------------------------------------------------------------------- run_generation


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(services=5, instances=1, nodes=2)
        yield simulator


def generation_spec(sim: ConsulSimulator, mode: str) -> dict[str, Any]:
    return {
        "consul": {
            "server": sim.address,
            "datacenter": "dc1",
            "tokenSecretRef": {"name": "consul", "key": "token"},
        },
        "mode": mode,
        "refreshInterval": "5s",
        "output": {"configMap": {"name": "cr"}},
    }


def degraded_reason(kube: FakeKube) -> str | None:
    if not kube.statuses:
        return None
    reason = condition(kube.statuses[-1], "Degraded").get("reason")
    return str(reason) if reason is not None else None


def held_services(kube: FakeKube) -> set[str]:
    services = set()
    for item in kube.objects.values():
        for text in item["data"].values():
            services |= {e["labels"]["__meta_consul_service"] for e in json.loads(text)}
    return services


async def until(predicate: Any, *, timeout: float = 600) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(1)


async def stop(task: asyncio.Task[None]) -> None:
    await cancel_and_wait([task])


@pytest.mark.looptime
@pytest.mark.parametrize("mode", ["Polling", "Blocking"])
async def test_a_rotated_secret_while_a_service_fails_keeps_that_services_targets(
    sim: ConsulSimulator, mode: str
) -> None:
    kube = FakeKube(secrets={("consul", "token"): "first"})
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=generation_spec(sim, mode))
    )
    try:
        everything = set(sim.catalog.service_names())
        await until(lambda: held_services(kube) == everything)
        failing = sorted(everything)[0]
        sim.faults.fail_services = {failing}
        kube.secrets[("consul", "token")] = "rotated"
        reads = len(kube.secret_reads)
        await until(lambda: len(kube.secret_reads) > reads)  # the re-read starts the new worker
        await asyncio.sleep(3 * 5)  # a few cycles of the new worker
        assert held_services(kube) == everything
        assert condition(kube.statuses[-1], "Degraded")["reason"] == "ServicesFailing"
    finally:
        await stop(task)


@pytest.mark.looptime
@pytest.mark.parametrize("mode", ["Polling", "Blocking"])
async def test_a_write_the_apiserver_refused_lands_once_it_is_back_even_on_a_quiet_fleet(
    sim: ConsulSimulator, mode: str
) -> None:
    kube = FakeKube(secrets={("consul", "token"): "token"})
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=generation_spec(sim, mode))
    )
    try:
        everything = set(sim.catalog.service_names())
        await until(lambda: held_services(kube) == everything)
        kube.refuse = lambda *_: KubeError("apiserver unreachable: ProtocolError", status=0)
        late: dict[str, Any] = {"Node": "node-x", "Address": "10.0.0.9"}
        late["Service"] = {"ID": "late-1", "Service": "late", "Port": 9}
        sim.register(late)  # one change, then a quiet fleet
        await until(lambda: degraded_reason(kube) == "OutputWriteFailed")
        kube.refuse = lambda *_: None  # the apiserver is back; Consul has nothing new to say
        await until(lambda: held_services(kube) == everything | {"late"}, timeout=60)
    finally:
        await stop(task)


@pytest.mark.looptime
async def test_a_rotated_secret_is_read_once_and_the_new_worker_uses_it(
    acl_sim: ConsulSimulator,
) -> None:
    sim = acl_sim
    kube = FakeKube(secrets={("consul", "token"): "good-token"})
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=acl_spec(sim, filtered=False))
    )
    try:
        await until(lambda: held_services(kube) == set(sim.catalog.service_names()))
        sim.acl_token = "rotated-token"  # the old token is refused from now on
        kube.secrets[("consul", "token")] = "rotated-token"
        reads = len(kube.secret_reads)
        await until(lambda: len(kube.secret_reads) > reads)  # the recheck saw the rotation
        await asyncio.sleep(3 * 5)  # a few cycles of the new worker, before its first recheck
        assert len(kube.secret_reads) == reads + 1
        assert condition(kube.statuses[-1], "Degraded")["status"] == "False"
    finally:
        await stop(task)


@pytest.mark.looptime
async def test_a_secret_deleted_while_running_is_read_once_before_it_is_reported(
    sim: ConsulSimulator,
) -> None:
    kube = FakeKube(secrets={("consul", "token"): "t"})
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=generation_spec(sim, "Polling"))
    )
    try:
        await until(lambda: held_services(kube) == set(sim.catalog.service_names()))
        reads = len(kube.secret_reads)
        del kube.secrets[("consul", "token")]
        await until(lambda: condition(kube.statuses[-1], "Degraded")["reason"] == "SecretNotFound")
    finally:
        await stop(task)
    first = next(
        i
        for i, status in enumerate(kube.statuses)
        if condition(status, "Degraded")["reason"] == "SecretNotFound"
    )
    assert kube.secret_reads_at_each_status[first] == reads + 1
    assert condition(kube.statuses[first], "Ready")["status"] == "True"  # the outputs keep it


@pytest.mark.looptime
async def test_after_a_restart_a_failing_service_keeps_its_targets_and_the_rest_update(
    sim: ConsulSimulator,
) -> None:
    kube = FakeKube(secrets={("consul", "token"): "t"})
    spec = generation_spec(sim, "Polling")
    first = asyncio.create_task(run_generation(kube=kube, ref=REF, generation=1, spec_data=spec))
    everything = set(sim.catalog.service_names())
    await until(lambda: held_services(kube) == everything)
    await stop(first)
    failing, changed = sorted(everything)[:2]
    sim.faults.fail_services = {failing}
    sim.register({"Node": "node-new", "Address": "10.9.9.9", "Service": {"Service": changed}})
    restarted = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=spec)
    )
    try:
        await until(lambda: "10.9.9.9:0" in json.dumps(list(kube.objects.values())))
        assert held_services(kube) == everything
    finally:
        await stop(restarted)


@pytest.mark.looptime
async def test_an_unexpected_exception_ends_in_status_and_an_event_and_never_logs_its_text(
    sim: ConsulSimulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def broken(**_: Any) -> None:
        nonlocal calls
        calls += 1
        raise UnicodeDecodeError("utf-8", SECRET_BYTES.encode(), 0, 1, "invalid start byte")

    monkeypatch.setattr(runner, "run_discovery", broken)
    kube = FakeKube(secrets={("consul", "token"): "t"})
    caplog.set_level(logging.DEBUG)
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=generation_spec(sim, "Polling"))
    )
    try:
        await until(lambda: calls >= 3, timeout=300)
    finally:
        await stop(task)
    ready = condition(kube.statuses[-1], "Ready")
    assert ready["reason"] == "InternalError"
    assert "UnicodeDecodeError" in ready["message"]
    assert kube.events.count(("Warning", "InternalError")) == 1
    assert "ns/cr" in caplog.text
    assert SECRET_BYTES not in caplog.text + json.dumps(kube.statuses)


@pytest.mark.looptime
async def test_a_name_that_cannot_be_a_label_value_is_an_invalid_spec(sim: ConsulSimulator) -> None:
    kube = FakeKube()
    long_ref = DiscoveryRef(namespace="ns", name="x" * 64, uid="u")
    task = asyncio.create_task(
        run_generation(
            kube=kube, ref=long_ref, generation=1, spec_data=generation_spec(sim, "Polling")
        )
    )
    try:
        await until(lambda: bool(kube.statuses))
    finally:
        await stop(task)
    assert condition(kube.statuses[-1], "Ready")["reason"] == "InvalidSpec"
    assert writes(kube) == []


@pytest.mark.looptime
async def test_an_apiserver_blip_while_rechecking_secrets_does_not_restart_the_worker(
    sim: ConsulSimulator,
) -> None:
    """A restarted worker would fetch every service again; a quiet fleet costs three requests."""
    kube = FakeKube(secrets={("consul", "token"): "t"})
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=generation_spec(sim, "Polling"))
    )
    try:
        everything = set(sim.catalog.service_names())
        await until(lambda: held_services(kube) == everything)
        await asyncio.sleep(10)  # settled: quiet cycles fetch no service
        sim.counters.reset()

        async def blip(*, namespace: str, name: str, key: str) -> str:
            raise KubeError("apiserver unreachable: ProtocolError", status=0)

        kube.read_secret_value = blip  # type: ignore[method-assign]
        await asyncio.sleep(3 * runner.SECRET_RECHECK_SECONDS)
        assert sim.counters.requests.get("health_service", 0) == 0
        assert condition(kube.statuses[-1], "Degraded")["status"] == "False"
    finally:
        await stop(task)


@pytest.mark.looptime
async def test_a_long_first_discovery_shows_progressing_before_it_ends(
    sim: ConsulSimulator,
) -> None:
    sim.faults.latency = 60.0  # every Consul answer takes a minute
    kube = FakeKube(secrets={("consul", "token"): "t"})
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=generation_spec(sim, "Polling"))
    )
    try:
        await asyncio.sleep(5)
        assert kube.statuses, "no status while the first discovery runs"
        progressing = condition(kube.statuses[-1], "Progressing")
        assert (progressing["status"], progressing["reason"]) == ("True", "FirstSyncPending")
        assert writes(kube) == []
    finally:
        await stop(task)


@pytest.mark.looptime
async def test_a_failure_after_a_long_good_run_restarts_without_the_earlier_backoff(
    sim: ConsulSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def flaky(**_: Any) -> None:
        starts.append(loop.time())
        if len(starts) == 5:
            await asyncio.sleep(2 * runner.STABLE_RUN_SECONDS)  # a long good run
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "run_discovery", flaky)
    kube = FakeKube(secrets={("consul", "token"): "t"})
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=generation_spec(sim, "Polling"))
    )
    try:
        await until(lambda: len(starts) >= 6, timeout=3600)
    finally:
        await stop(task)
    pauses = [b - a for a, b in itertools.pairwise(starts)]
    assert pauses[3] >= 8  # the backoff grew over four quick failures
    assert pauses[4] - 2 * runner.STABLE_RUN_SECONDS <= 2  # and started over after the run


@pytest.mark.looptime
@pytest.mark.parametrize("ready_before", [True, False])
async def test_an_operator_restart_during_an_outage_keeps_ready_only_if_it_was_ready(
    sim: ConsulSimulator, ready_before: bool
) -> None:
    kube = FakeKube(secrets={("consul", "token"): "t"})
    spec = generation_spec(sim, "Polling")
    first = asyncio.create_task(run_generation(kube=kube, ref=REF, generation=1, spec_data=spec))
    everything = set(sim.catalog.service_names())
    await until(lambda: held_services(kube) == everything)
    await stop(first)
    sim.faults.error_rate = 1.0
    kube.statuses.clear()
    restarted = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=spec, ready_before=ready_before)
    )
    try:
        await until(
            lambda: (
                bool(kube.statuses) and condition(kube.statuses[-1], "Degraded")["status"] == "True"
            )
        )
    finally:
        await stop(restarted)
    status = kube.statuses[-1]
    assert held_services(kube) == everything
    if ready_before:
        assert condition(status, "Ready")["status"] == "True"
        assert status["targets"] == 5
        assert condition(status, "Ready")["message"].startswith("5 targets from 5 services")
    else:
        assert condition(status, "Ready")["status"] == "False"


@pytest.mark.looptime
async def test_an_invalid_spec_after_a_running_generation_never_fails_liveness(
    sim: ConsulSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    progress = Progress(lambda: now[0])
    monkeypatch.setattr(runner, "PROGRESS", progress)
    kube = FakeKube(secrets={("consul", "token"): "t"})
    first = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=generation_spec(sim, "Polling"))
    )
    await until(lambda: bool(writes(kube)))
    await stop(first)  # a spec edit: kopf cancels generation 1
    invalid = {**generation_spec(sim, "Polling"), "refreshInterval": "1ms"}
    second = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=2, spec_data=invalid)
    )
    try:
        await until(lambda: condition(kube.statuses[-1], "Ready")["reason"] == "InvalidSpec")
        now[0] += 24 * 3600  # a day with nothing to run
        assert progress.stalled() == []
    finally:
        await stop(second)


@pytest.fixture
async def acl_sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False, acl_token="good-token") as simulator:
        simulator.generate(services=5, instances=1, nodes=2)
        yield simulator


def acl_spec(sim: ConsulSimulator, *, filtered: bool) -> dict[str, Any]:
    consul: dict[str, Any] = {
        "server": sim.address,
        "datacenter": "dc1",
        "tokenSecretRef": {"name": "consul", "key": "token"},
    }
    if filtered:
        consul_filter = {"selector": {"filter": 'ServiceName != "nothing-is-called-this"'}}
    else:
        consul_filter = {}
    return {
        "consul": consul,
        **consul_filter,
        "mode": "Polling",
        "refreshInterval": "5s",
        "output": {"configMap": {"name": "cr"}},
    }


@pytest.mark.looptime
@pytest.mark.parametrize("filtered", [False, True], ids=["no-filter", "with-filter"])
async def test_a_token_that_can_read_no_service_never_empties_the_outputs(
    acl_sim: ConsulSimulator, filtered: bool
) -> None:
    sim = acl_sim
    kube = FakeKube(secrets={("consul", "token"): "good-token"})
    task = asyncio.create_task(
        run_generation(kube=kube, ref=REF, generation=1, spec_data=acl_spec(sim, filtered=filtered))
    )
    try:
        everything = set(sim.catalog.service_names())
        await until(lambda: held_services(kube) == everything)
        # The Secret is rotated to a blank value (or, on a real Consul, the token's policy
        # loses service:read): every answer is ACL-filtered to nothing.
        kube.secrets[("consul", "token")] = "  \n"
        await asyncio.sleep(3 * 60)
        status = kube.statuses[-1]
        assert held_services(kube) == everything, (
            f"outputs now hold {sorted(held_services(kube))}; Ready="
            f"{condition(status, 'Ready')['status']}/{condition(status, 'Ready')['reason']} "
            f"Degraded={condition(status, 'Degraded')['status']} targets={status.get('targets')}"
        )
    finally:
        await stop(task)
