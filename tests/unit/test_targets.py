from __future__ import annotations

import pytest

from consul_sd.consul.records import Check, Instance, aggregated_status
from consul_sd.targets import build_target_group, join_host_port, sanitize_label_name


def instance(**overrides: object) -> Instance:
    fields: dict[str, object] = {
        "node": "n1",
        "node_address": "10.0.0.1",
        "node_meta": {},
        "node_tagged_addresses": {},
        "service_id": "s-1",
        "service_address": "",
        "service_port": 80,
        "tags": (),
        "service_meta": {},
        "namespace": "",
        "partition": "",
        "checks": (),
    }
    fields.update(overrides)
    return Instance(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "port", "address"),
    [
        ("10.0.0.1", 80, "10.0.0.1:80"),
        ("2001:db8::1", 9100, "[2001:db8::1]:9100"),
        ("fe80::1%eth0", 9100, "[fe80::1%eth0]:9100"),
        ("node.example", 0, "node.example:0"),
    ],
)
def test_addresses_are_joined_like_go_join_host_port(host: str, port: int, address: str) -> None:
    assert join_host_port(host, port) == address


@pytest.mark.parametrize(
    ("name", "sanitised"),
    [
        ("a.b", "a_b"),
        ("team/owner", "team_owner"),
        ("ü", "_"),
        ("ok_1", "ok_1"),
        ("a-b-c", "a_b_c"),
    ],
)
def test_each_invalid_character_becomes_one_underscore(name: str, sanitised: str) -> None:
    assert sanitize_label_name(name) == sanitised


@pytest.mark.parametrize(
    ("checks", "health"),
    [
        ((), "passing"),
        ((Check("serfHealth", "passing"),), "passing"),
        ((Check("a", "passing"), Check("b", "warning")), "warning"),
        ((Check("a", "warning"), Check("b", "critical")), "critical"),
        ((Check("_node_maintenance", "critical"), Check("b", "passing")), "maintenance"),
        ((Check("_service_maintenance:s-1", "critical"),), "maintenance"),
        ((Check("a", "critical"), Check("b", "bogus")), ""),
        ((Check("_node_maintenance", "critical"), Check("b", "bogus")), ""),
    ],
)
def test_health_aggregates_like_the_consul_go_client(
    checks: tuple[Check, ...], health: str
) -> None:
    assert aggregated_status(checks) == health


def test_service_address_wins_over_node_address() -> None:
    (target,) = build_target_group(
        service="s",
        datacenter="dc1",
        instances=[instance(service_address="192.0.2.7")],
        tag_separator=",",
    )
    assert target.address == "192.0.2.7:80"
    assert target.label_dict()["__meta_consul_address"] == "10.0.0.1"


def test_targets_are_sorted_whatever_order_consul_answers_in() -> None:
    instances = [instance(node="n2", service_id="b"), instance(node="n1", service_id="a")]
    forward = build_target_group(
        service="s", datacenter="dc1", instances=instances, tag_separator=","
    )
    backward = build_target_group(
        service="s", datacenter="dc1", instances=instances[::-1], tag_separator=","
    )
    assert forward == backward
    assert [t.label_dict()["__meta_consul_node"] for t in forward] == ["n1", "n2"]


def test_colliding_meta_keys_resolve_the_same_way_in_any_order() -> None:
    meta_orders = [{"a.b": "dot", "a-b": "dash"}, {"a-b": "dash", "a.b": "dot"}]
    values = {
        build_target_group(
            service="s",
            datacenter="dc1",
            instances=[instance(service_meta=meta)],
            tag_separator=",",
        )[0].label_dict()["__meta_consul_service_metadata_a_b"]
        for meta in meta_orders
    }
    assert values == {"dash"}


def test_empty_label_values_are_left_out() -> None:
    (target,) = build_target_group(
        service="s", datacenter="dc1", instances=[instance()], tag_separator=","
    )
    labels = target.label_dict()
    assert "__meta_consul_namespace" not in labels
    assert "__meta_consul_service_address" not in labels
    assert labels["__meta_consul_tags"] == ",,"
