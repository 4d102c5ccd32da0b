"""The OutputPublisher against a fake Kubernetes seam that fails on unexpected calls."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
import trustme

from consul_sd.consul import ConsulServerError
from consul_sd.kube import DiscoveryRef, KubeError, SecretNotFound
from consul_sd.runner import OutputPublisher, Problem, resolve_endpoint
from consul_sd.spec import parse_spec
from consul_sd.workers import Snapshot
from tests.unit.test_outputs import fleet

REF = DiscoveryRef(namespace="ns", name="cr", uid="uid-1")


class FakeKube:
    """Records writes; every method the test did not expect raises."""

    def __init__(self, *, existing: list[dict[str, Any]] | None = None) -> None:
        self.existing = existing or []
        self.applied: list[tuple[str, str, Mapping[str, Any]]] = []
        self.deleted: list[tuple[str, str]] = []
        self.statuses: list[Mapping[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.fail_apply: KubeError | None = None

    async def list_config_maps(self, *, namespace: str, discovery: str) -> list[dict[str, Any]]:
        assert (namespace, discovery) == ("ns", "cr")
        return self.existing

    async def list_scrape_configs(self, *, namespace: str, discovery: str) -> list[dict[str, Any]]:
        return []

    async def apply_config_map(
        self, *, owner: DiscoveryRef, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        if self.fail_apply is not None:
            raise self.fail_apply
        assert owner == REF
        assert labels["consul-sd.io/discovery"] == "cr"
        self.applied.append(("ConfigMap", name, data))

    async def apply_scrape_config(self, **kwargs: Any) -> None:
        raise AssertionError("unexpected ScrapeConfig write")

    async def delete_output(self, *, namespace: str, kind: str, name: str) -> None:
        self.deleted.append((kind, name))

    async def patch_status(self, *, ref: DiscoveryRef, status: Mapping[str, Any]) -> None:
        self.statuses.append(status)

    async def post_event(self, *, ref: DiscoveryRef, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason))

    async def read_secret_value(self, *, namespace: str, name: str, key: str) -> str:
        raise AssertionError("unexpected Secret read")


def publisher(kube: FakeKube) -> OutputPublisher:
    pub = OutputPublisher(kube=kube, ref=REF, generation=3)
    pub.spec = parse_spec(
        {"consul": {"server": "c:8500"}, "output": {"configMap": {"name": "cr"}}},
        require_output=True,
    )
    return pub


def snapshot(services: int, **kwargs: Any) -> Snapshot:
    groups = fleet(services)
    defaults: dict[str, Any] = {"mode": "Polling", "complete": True, "matched": len(groups)}
    return Snapshot(groups=groups, **(defaults | kwargs))


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


async def test_nothing_is_written_before_the_first_complete_snapshot() -> None:
    kube = FakeKube()
    pub = publisher(kube)
    await pub.resume()
    error = ConsulServerError("/v1/catalog/services: HTTP 500: boom", status=500)
    await pub.publish(Snapshot(groups={}, mode="Polling", complete=False, matched=0, error=error))
    assert kube.applied == []
    assert kube.deleted == []
    status = kube.statuses[-1]
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Ready")["reason"] == "ConsulServerError"
    assert condition(status, "Progressing")["status"] == "True"
    assert status["observedGeneration"] == 3
    assert kube.events == [("Warning", "ConsulServerError")]


async def test_a_complete_snapshot_is_written_and_marks_ready() -> None:
    kube = FakeKube()
    pub = publisher(kube)
    await pub.resume()
    await pub.publish(snapshot(10))
    assert [name for _, name, _ in kube.applied] == ["cr-0"]
    (data,) = kube.applied[0][2].values()
    assert len(json.loads(data)) == 30
    status = kube.statuses[-1]
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Degraded")["status"] == "False"
    assert status["targets"] == 30
    assert status["outputs"] == [
        {"kind": "ConfigMap", "name": "cr-0", "targets": 30, "bytes": len(data.encode())}
    ]


async def test_unchanged_bytes_are_not_rewritten() -> None:
    kube = FakeKube()
    pub = publisher(kube)
    await pub.resume()
    await pub.publish(snapshot(10))
    await pub.publish(snapshot(10))
    assert len(kube.applied) == 1


async def test_a_restart_rewrites_nothing_that_is_current() -> None:
    first = FakeKube()
    pub = publisher(first)
    await pub.resume()
    await pub.publish(snapshot(10))
    (_, name, data) = first.applied[0]
    labels = {"consul-sd.io/discovery": "cr", "app.kubernetes.io/managed-by": "consul-sd-operator"}
    existing = [{"metadata": {"name": name, "labels": labels}, "data": dict(data)}]
    second = FakeKube(existing=existing)
    restarted = publisher(second)
    await restarted.resume()
    await restarted.publish(snapshot(10))
    assert second.applied == []
    assert second.deleted == []


async def test_outputs_no_longer_wanted_are_deleted_after_the_new_set_is_written() -> None:
    stale = [{"metadata": {"name": "old-7", "labels": {}}, "data": {"old-7.json": "[]"}}]
    kube = FakeKube(existing=stale)
    pub = publisher(kube)
    await pub.resume()
    await pub.publish(snapshot(5))
    assert kube.applied[0][1] == "cr-0"
    assert kube.deleted == [("ConfigMap", "old-7")]


async def test_an_oversize_write_keeps_the_previous_outputs_and_says_why() -> None:
    kube = FakeKube()
    pub = publisher(kube)
    await pub.resume()
    await pub.publish(snapshot(5))
    kube.fail_apply = KubeError("HTTP 422: Too long: must have at most 1048576 bytes", status=422)
    await pub.publish(snapshot(6))
    status = kube.statuses[-1]
    assert condition(status, "Degraded")["reason"] == "OutputTooLarge"
    assert "Too long" in condition(status, "Degraded")["message"]
    assert condition(status, "Ready")["status"] == "True"  # the previous outputs still hold
    assert kube.deleted == []
    assert ("Warning", "OutputTooLarge") in kube.events


async def test_events_mark_transitions_not_every_cycle() -> None:
    kube = FakeKube()
    pub = publisher(kube)
    await pub.resume()
    await pub.publish(snapshot(5))
    error = ConsulServerError("boom", status=500)
    for _ in range(3):
        await pub.publish(snapshot(5, complete=False, error=error))
    await pub.publish(snapshot(5))
    assert Counter(kube.events) == Counter(
        {("Warning", "ConsulServerError"): 1, ("Normal", "Recovered"): 1}
    )


async def test_failed_services_degrade_with_their_names() -> None:
    kube = FakeKube()
    pub = publisher(kube)
    await pub.resume()
    failed = {"svc-00001": ConsulServerError("HTTP 500", status=500)}
    await pub.publish(snapshot(5, failed=failed))
    degraded = condition(kube.statuses[-1], "Degraded")
    assert degraded["reason"] == "ServicesFailing"
    assert "svc-00001" in degraded["message"]


@pytest.mark.parametrize("reason", ["InvalidSpec", "SecretNotFound"])
async def test_a_blocked_start_reports_ready_false_with_the_reason(reason: str) -> None:
    kube = FakeKube()
    pub = publisher(kube)
    await pub.report_blocked(Problem(reason, "what to fix"))
    ready = condition(kube.statuses[-1], "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", reason, "what to fix")


class SecretKube(FakeKube):
    def __init__(self, secrets: dict[tuple[str, str], str]) -> None:
        super().__init__()
        self.secrets = secrets
        self.reads: list[tuple[str, str, str]] = []

    async def read_secret_value(self, *, namespace: str, name: str, key: str) -> str:
        self.reads.append((namespace, name, key))
        return self.secrets[(name, key)]


async def test_credentials_and_tls_come_from_secrets_in_the_crs_namespace() -> None:
    authority = trustme.CA()
    leaf = authority.issue_cert("consul-sd")
    kube = SecretKube(
        {
            ("consul", "token"): "tok-123\n",
            ("tls", "ca.crt"): authority.cert_pem.bytes().decode(),
            ("tls", "tls.crt"): leaf.cert_chain_pems[0].bytes().decode(),
            ("tls", "tls.key"): leaf.private_key_pem.bytes().decode(),
        }
    )
    spec = parse_spec(
        {
            "consul": {
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
        }
    )
    endpoint = await resolve_endpoint(kube=kube, namespace="ns", spec=spec)
    assert endpoint.token == "tok-123"
    assert endpoint.server_name == "consul.service"
    assert endpoint.ssl_context is not None
    assert endpoint.ssl_context.verify_mode.name == "CERT_REQUIRED"
    assert {namespace for namespace, _, _ in kube.reads} == {"ns"}
    assert "tok-123" not in repr(endpoint)


async def test_a_missing_secret_raises_secret_not_found() -> None:
    kube = FakeKube()

    async def missing(*, namespace: str, name: str, key: str) -> str:
        raise SecretNotFound(f"Secret {namespace}/{name} not found")

    kube.read_secret_value = missing  # type: ignore[method-assign]
    spec = parse_spec(
        {"consul": {"server": "c:8500", "tokenSecretRef": {"name": "gone", "key": "token"}}}
    )
    with pytest.raises(SecretNotFound, match="ns/gone"):
        await resolve_endpoint(kube=kube, namespace="ns", spec=spec)
