from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from tools.crd import spec_schema

from consul_sd.api.spec import SpecError, parse_spec, validate_discovery_name
from consul_sd.discovery.query import DiscoveryQuery

MINIMAL: dict[str, Any] = {"consul": {"server": "consul.consul.svc:8500"}}


def problems(data: dict[str, Any], **kwargs: bool) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data, **kwargs)
    return caught.value.problems


def test_a_minimal_spec_gets_prometheus_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.mode == "Auto"
    assert spec.refresh_seconds == 30
    assert spec.watch_seconds == 120
    assert spec.max_concurrent == 100
    assert spec.tag_separator == ","
    assert spec.consul.allow_stale is True
    assert spec.consul.scheme == "http"


def test_yaml_field_names_are_camel_case() -> None:
    spec = parse_spec(
        {
            "consul": {"server": "c:8500", "tokenSecretRef": {"name": "t", "key": "token"}},
            "selector": {"nodeMeta": {"rack": "r1"}, "healthFilter": "Service.Port == 80"},
            "maxConcurrent": 200,
            "refreshInterval": "5m",
            "watchTimeout": "30s",
        }
    )
    assert spec.selector.node_meta == {"rack": "r1"}
    assert spec.consul.token_secret_ref is not None
    query = DiscoveryQuery.from_spec(spec)
    assert (query.max_concurrent, query.refresh_interval, query.watch_timeout) == (200, 300, 30)


def test_problems_name_the_field_and_the_rule() -> None:
    found = problems({**MINIMAL, "maxConcurrent": 0, "refreshInterval": "5x", "mode": "Fast"})
    assert "spec.maxConcurrent: must be >= 1" in found
    assert "spec.refreshInterval: '5x' is not a duration like 30s, 5m or 1h30m" in found
    assert "spec.mode: must be one of 'Auto', 'Polling' or 'Blocking'" in found


def test_unknown_fields_are_rejected_not_ignored() -> None:
    assert problems({**MINIMAL, "refreshIntervall": "1m"}) == [
        "spec.refreshIntervall: unknown field"
    ]


def test_a_server_with_credentials_is_refused_without_repeating_them() -> None:
    (found,) = problems({"consul": {"server": "admin:hunter22pw@consul:8500"}})
    assert found.startswith("spec.consul.server: credentials in an address are not supported")
    assert "hunter22pw" not in found
    assert "admin" not in found


def test_the_server_is_required() -> None:
    assert problems({"consul": {}}) == ["spec.consul.server: required"]


def test_watch_timeout_is_capped_at_consuls_ten_minutes() -> None:
    assert problems({**MINIMAL, "watchTimeout": "11m"}) == [
        "spec.watchTimeout: must be at most 10m (Consul's limit)"
    ]
    assert parse_spec({**MINIMAL, "watchTimeout": "10m"}).watch_seconds == 600


@pytest.mark.parametrize("interval", ["0s", "1ms", "999ms", "0m0s500ms"])
def test_a_refresh_interval_below_one_second_is_rejected(interval: str) -> None:
    assert problems({**MINIMAL, "refreshInterval": interval}) == [
        "spec.refreshInterval: must be at least 1s"
    ]


def test_a_refresh_interval_of_one_second_is_the_floor() -> None:
    assert parse_spec({**MINIMAL, "refreshInterval": "1s"}).refresh_seconds == 1
    assert parse_spec({**MINIMAL, "refreshInterval": "1000ms"}).refresh_seconds == 1


def test_the_crd_refuses_exactly_the_refresh_intervals_the_model_refuses() -> None:
    (rule,) = spec_schema()["properties"]["refreshInterval"]["x-kubernetes-validations"]
    assert rule["message"] == "must be at least 1s"
    below = re.fullmatch(r"!self\.matches\('(.*)'\)", rule["rule"])
    assert below is not None
    units = ("y", "w", "d", "h", "m", "s", "ms")
    # Every duration with each unit absent, 0, 1, or near a boundary: the CEL rule (RE2, same
    # semantics as Python's re for this pattern) must agree with the model on each.
    for amounts in itertools.product([None, "0", "1"], repeat=6):
        for ms in (None, "0", "1", "999", "0999", "1000", "1500"):
            text = "".join(f"{n}{u}" for n, u in zip((*amounts, ms), units, strict=True) if n)
            if not text:
                continue
            model_refuses = bool(
                [p for p in _problems_or_none(text) if p.startswith("spec.refreshInterval")]
            )
            assert (re.match(below.group(1), text) is not None) == model_refuses, text


def _problems_or_none(interval: str) -> list[str]:
    try:
        parse_spec({**MINIMAL, "refreshInterval": interval})
    except SpecError as error:
        return error.problems
    return []


def test_a_name_longer_than_a_label_value_is_a_problem() -> None:
    assert validate_discovery_name("a" * 63) is None
    assert validate_discovery_name("team-a") is None
    assert validate_discovery_name("a" * 64) == (
        "metadata.name: 64 characters, at most 63 (the name is a label value on the outputs)"
    )


def test_cross_field_rules_name_their_object() -> None:
    found = problems(
        {
            "consul": {
                "server": "c:8500",
                "tls": {"certSecretRef": {"name": "c", "key": "tls.crt"}},
                "tokenSecretRef": {"name": "t", "key": "k"},
                "basicAuthSecretRef": {"name": "b"},
            }
        }
    )
    assert "spec.consul.tls: certSecretRef and keySecretRef must be set together" in found


def test_the_operator_requires_an_output() -> None:
    assert problems(MINIMAL, require_output=True) == [
        "spec.output: required (configMap, scrapeConfig or httpSD)"
    ]
    assert problems({**MINIMAL, "output": {}}) == [
        "spec.output: set configMap, scrapeConfig or httpSD"
    ]


def test_http_sd_alone_is_an_output_with_a_30s_refresh_and_no_token() -> None:
    spec = parse_spec({**MINIMAL, "output": {"httpSD": {}}}, require_output=True)
    assert spec.output is not None
    assert spec.output.serves_http_sd
    assert spec.output.http_sd_settings.refresh_interval == "30s"
    assert spec.output.http_sd_settings.authorization is None


def test_a_scrape_config_is_static_unless_it_asks_for_http_sd() -> None:
    static = parse_spec({**MINIMAL, "output": {"scrapeConfig": {"name": "sc"}}}).output
    http = parse_spec(
        {**MINIMAL, "output": {"scrapeConfig": {"name": "sc", "targetsFrom": "HTTPSD"}}}
    ).output
    assert static is not None
    assert http is not None
    assert static.scrape_config is not None
    assert static.scrape_config.targets_from == "Static"
    assert not static.serves_http_sd
    assert http.serves_http_sd  # httpSD itself may be left out


def test_http_sd_fields_are_checked_by_their_yaml_names() -> None:
    found = problems(
        {
            **MINIMAL,
            "output": {
                "scrapeConfig": {"name": "sc", "targetsFrom": "Http"},
                "httpSD": {"refreshInterval": "500ms", "authorization": {}},
            },
        }
    )
    assert "spec.output.scrapeConfig.targetsFrom: must be one of 'Static' or 'HTTPSD'" in found
    assert "spec.output.httpSD.refreshInterval: must be at least 1s" in found
    assert "spec.output.httpSD.authorization.secretRef: required" in found


def test_only_exact_services_skip_the_catalog_as_in_prometheus() -> None:
    assert not DiscoveryQuery(services=("a",)).uses_catalog
    assert DiscoveryQuery(services=("a",), tags=("t",)).uses_catalog
    assert DiscoveryQuery(services=("a",), filter="x").uses_catalog
    assert DiscoveryQuery().uses_catalog


def test_a_service_must_carry_every_required_tag() -> None:
    query = DiscoveryQuery(tags=("a", "b"))
    assert query.matches("s", ["a", "b", "c"])
    assert not query.matches("s", ["a"])
    assert not DiscoveryQuery(services=("x",)).matches("s", [])
