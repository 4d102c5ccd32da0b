"""The go-bexpr subset behind ``?filter=``, checked directly against rows."""

from __future__ import annotations

from typing import Any

import pytest

from consul_simulator import bexpr

ENTRY: dict[str, Any] = {
    "Node": {"Node": "node-1", "Address": "10.0.0.1", "Meta": {"rack": "r1", "a-b": "x"}},
    "Service": {
        "ID": "web-1",
        "Service": "web",
        "Tags": ["prod", "http"],
        "Meta": {"version": "1.2"},
        "Port": 8080,
        "EnableTagOverride": False,
    },
    "Checks": [
        {"CheckID": "serfHealth", "Status": "passing"},
        {"CheckID": "service:web-1", "Status": "critical"},
    ],
}


def matches(expression: str, row: dict[str, Any] = ENTRY) -> bool:
    return bexpr.compile_filter(expression, bexpr.HEALTH_SERVICE_ENTRY)(row)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Service.Service == "web"', True),
        ("Service.Service != web", False),
        ("Service.Port == 8080", True),
        ("Service.EnableTagOverride == false", True),
        ('"prod" in Service.Tags', True),
        ('"dev" not in Service.Tags', True),
        ("Service.Tags contains http", True),
        ("Service.Tags not contains http", False),
        ('"rack" in Node.Meta', True),
        ('Node.Meta["a-b"] == x', True),
        ('Node.Meta.missing == ""', True),
        ("Node.Meta.missing is empty", True),
        ("Service.Tags is not empty", True),
        ('Node.Address matches "^10\\\\."', True),
        ("Node.Address not matches `^10\\.`", False),
        ('Service.Tags matches "^ht"', True),
        ('"0.0" in Node.Address', True),
        ("Checks.Status == critical", True),
        ("Checks.Status == warning", False),
        ("Checks.Status != passing", True),
        ("not Service.Port == 8080", False),
        ("Service.Port == 1 or Service.Port == 8080 and Service.Service == web", True),
        ("(Service.Port == 1 or Service.Port == 8080) and Service.Service == db", False),
        ("not (Service.Port == 1) and not (Service.Service == db)", True),
    ],
)
def test_expressions_evaluate_like_go_bexpr(expression: str, expected: bool) -> None:
    assert matches(expression) is expected


def test_a_path_through_an_empty_list_matches_nothing() -> None:
    row = dict(ENTRY, Checks=[])
    assert not matches("Checks.Status == passing", row)
    assert not matches("Checks.Status != passing", row)


def test_absent_fields_read_as_zero_values() -> None:
    row = {"Node": {"Node": "n", "Meta": None}, "Service": {"Service": "s"}, "Checks": []}
    assert matches("Service.Port == 0", row)
    assert matches("Node.Meta is empty", row)
    assert matches("Service.Tags is empty", row)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("", "unexpected end"),
        ("Service.Port ==", "unexpected end"),
        ("Service.Nope == 1", 'Selector "Service.Nope" is not valid'),
        ("Service.Tags == prod", "not valid for the == and != operators"),
        ("Service.Port == eighty", "not an integer"),
        ("Service.Port contains 8", "not valid for the in and contains operators"),
        ("Service.Port is empty", "cannot be tested for emptiness"),
        ('Service.Service matches "("', "invalid regular expression"),
        ("Service.Service == web extra", "unexpected"),
        ("(Service.Service == web", "unexpected end"),
        ("(Service.Service == web or)", "unexpected ')'"),
        ('"web" == Service.Service', "expected a selector"),
        ("Service.Service === web", "invalid syntax"),
    ],
)
def test_bad_expressions_are_refused_with_bexprs_prefix(expression: str, reason: str) -> None:
    with pytest.raises(bexpr.FilterError) as caught:
        bexpr.compile_filter(expression, bexpr.HEALTH_SERVICE_ENTRY)
    message = str(caught.value)
    assert message.startswith("Failed to create boolean expression evaluator: ")
    assert reason in message
