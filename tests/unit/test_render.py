from __future__ import annotations

import json

from consul_sd.consul.records import Instance
from consul_sd.outputs.render import render_file_sd
from consul_sd.targets import TargetGroup, build_target_group


def group(service: str, *ports: int) -> tuple[str, TargetGroup]:
    instances = [
        Instance(
            node=f"n{port}",
            node_address="10.0.0.1",
            node_meta={},
            node_tagged_addresses={},
            service_id=f"{service}-{port}",
            service_address="",
            service_port=port,
            tags=("t",),
            service_meta={},
            namespace="",
            partition="",
            checks=(),
        )
        for port in ports
    ]
    return service, build_target_group(
        service=service, datacenter="dc1", instances=instances, tag_separator=","
    )


def test_file_sd_has_one_group_per_instance_with_only_targets_and_labels() -> None:
    data = json.loads(render_file_sd(dict([group("a", 1, 2), group("b", 3)])))
    assert len(data) == 3
    assert all(set(item) == {"targets", "labels"} for item in data)
    assert [item["targets"] for item in data] == [["10.0.0.1:1"], ["10.0.0.1:2"], ["10.0.0.1:3"]]


def test_service_order_does_not_change_the_bytes() -> None:
    one = dict([group("a", 1), group("b", 2)])
    other = dict([group("b", 2), group("a", 1)])
    assert render_file_sd(one) == render_file_sd(other)


def test_no_targets_is_an_empty_json_array() -> None:
    assert json.loads(render_file_sd({})) == []
