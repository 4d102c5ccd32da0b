from __future__ import annotations

import pytest

from consul_sd.api.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400), ("0", 0)],
)
def test_prometheus_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5x", "1.5s", "m5", "30s5m", " 30s", "-1s"])
def test_anything_prometheus_rejects_is_rejected_with_the_rule(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration like 30s"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.25, 30, 300, 5400, 90061.5])
def test_formatting_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
