from __future__ import annotations

import json

import pytest

from consul_sd.api.spec import (
    ConfigMapOutput,
    HTTPSDAuthorization,
    HTTPSDOutput,
    ScrapeConfigOutput,
    SecretKeyRef,
)
from consul_sd.consul.records import Instance
from consul_sd.outputs.shards import (
    OutputTooLarge,
    config_map_shards,
    http_sd_scrape_config_spec,
    http_sd_url,
    scrape_config_shards,
    scrape_config_spec,
    scrape_settings,
)
from consul_sd.targets import TargetGroup, build_target_group


def fleet(services: int, instances: int = 3, *, extra: str = "") -> dict[str, TargetGroup]:
    groups = {}
    for s in range(services):
        name = f"svc-{s:05d}"
        groups[name] = build_target_group(
            service=name,
            datacenter="dc1",
            instances=[
                Instance(
                    node=f"node-{i}",
                    node_address=f"10.0.{s % 250}.{i}",
                    node_meta={"rack": f"r{i}", "zone": "zone-a"},
                    node_tagged_addresses={"lan": f"10.0.{s % 250}.{i}"},
                    service_id=f"{name}-{i}{extra}",
                    service_address="",
                    service_port=8000 + i,
                    tags=("prod", "http"),
                    service_meta={"team": "payments", "version": "1.2.3"},
                    namespace="",
                    partition="",
                    checks=(),
                )
                for i in range(instances)
            ],
            tag_separator=",",
        )
    return groups


def test_every_config_map_shard_stays_under_its_limit() -> None:
    output = ConfigMapOutput(name="c", max_shard_bytes=64 * 1024, max_shards=64)
    shards = config_map_shards(fleet(1000), output=output)
    assert len(shards) > 1
    assert all(len(shard.data) <= 64 * 1024 for shard in shards)
    assert sum(len(json.loads(shard.data)) for shard in shards) == 3000
    assert sum(shard.targets for shard in shards) == 3000
    assert [shard.name for shard in shards] == [f"c-{i}" for i in range(len(shards))]
    assert all(shard.key == f"{shard.name}.json" for shard in shards)


def test_a_change_to_one_service_rewrites_one_shard() -> None:
    output = ConfigMapOutput(name="c", max_shard_bytes=64 * 1024, max_shards=64)
    groups = fleet(1000)
    before = config_map_shards(groups, output=output)
    changed = dict(groups)
    changed["svc-00042"] = fleet(43, extra="-x")["svc-00042"]
    after = config_map_shards(changed, output=output, previous=len(before))
    assert len(after) == len(before)
    assert sum(a != b for a, b in zip(before, after, strict=True)) == 1


def test_the_shard_count_is_sticky_while_it_still_fits() -> None:
    output = ConfigMapOutput(name="c", max_shard_bytes=64 * 1024, max_shards=64)
    grown = config_map_shards(fleet(1000), output=output)
    shrunk = config_map_shards(fleet(700), output=output, previous=len(grown))
    assert len(shrunk) == len(grown)


def test_targets_that_cannot_fit_raise_output_too_large() -> None:
    output = ConfigMapOutput(name="c", max_shard_bytes=16 * 1024, max_shards=2)
    with pytest.raises(OutputTooLarge, match="raise maxShards"):
        config_map_shards(fleet(200), output=output)


def test_a_service_too_big_for_one_shard_is_spread_by_instance() -> None:
    output = ConfigMapOutput(name="c", max_shard_bytes=16 * 1024, max_shards=64)
    shards = config_map_shards(fleet(1, instances=200), output=output)
    assert len(shards) > 1
    assert sum(len(json.loads(shard.data)) for shard in shards) == 200


def test_scrape_configs_carry_static_targets_and_only_the_settings_given() -> None:
    output = ScrapeConfigOutput(
        name="s", scrape_interval="30s", metrics_path="/metrics", max_targets_per_object=100
    )
    # As the publisher builds them: the shards' targets, then each object's spec.
    specs = [
        (name, scrape_config_spec(scrape_settings(output), members))
        for name, members in scrape_config_shards(fleet(200), output=output)
    ]
    assert len(specs) > 1
    total = 0
    for name, spec in specs:
        assert name.startswith("s-")
        assert set(spec) == {"scrapeInterval", "metricsPath", "staticConfigs"}
        for static in spec["staticConfigs"]:
            (address,) = static["targets"]
            assert address
            assert all(key.startswith("__meta_consul_") for key in static["labels"])
        total += len(spec["staticConfigs"])
    assert total == 600


def test_the_http_sd_form_points_at_the_operator_with_the_token_secret_and_settings() -> None:
    output = ScrapeConfigOutput(name="s", targets_from="HTTPSD", scrape_interval="15s")
    http_sd = HTTPSDOutput(
        refresh_interval="1m",
        authorization=HTTPSDAuthorization(secret_ref=SecretKeyRef(name="sd", key="token")),
    )
    url = http_sd_url("http://op.monitoring.svc:9090/", namespace="ns", name="fleet")
    spec = http_sd_scrape_config_spec(scrape_settings(output), url=url, http_sd=http_sd)
    assert spec == {
        "scrapeInterval": "15s",
        "httpSDConfigs": [
            {
                "url": "http://op.monitoring.svc:9090/targets/ns/fleet",
                "refreshInterval": "1m",
                "authorization": {
                    "type": "Bearer",
                    "credentials": {"name": "sd", "key": "token"},
                },
            }
        ],
    }


def test_the_http_sd_form_without_a_token_sends_no_authorization() -> None:
    output = ScrapeConfigOutput(name="s", targets_from="HTTPSD")
    spec = http_sd_scrape_config_spec(
        scrape_settings(output), url="http://op:9090/targets/ns/s", http_sd=HTTPSDOutput()
    )
    assert spec == {
        "httpSDConfigs": [{"url": "http://op:9090/targets/ns/s", "refreshInterval": "30s"}]
    }
