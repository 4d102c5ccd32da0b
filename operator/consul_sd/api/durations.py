"""Durations in Prometheus syntax (``30s``, ``5m``, ``1h30m``, ``250ms``).

The spec, the CLI and the CRD schema all speak this one syntax, so users can copy values from
their ``consul_sd_configs``. Only what Prometheus's ``model.ParseDuration`` accepts is accepted:
units in descending order, each at most once, integers only.
"""

from __future__ import annotations

import re

# Same grammar as prometheus/common model.ParseDuration; used verbatim as the CRD pattern.
DURATION_PATTERN = (
    r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"
)
_DURATION_RE = re.compile(DURATION_PATTERN)
_UNITS = (
    ("y", 365 * 24 * 3600.0),
    ("w", 7 * 24 * 3600.0),
    ("d", 24 * 3600.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration; ``ValueError`` with the rule when it is not one."""
    if text == "0":
        return 0.0
    match = _DURATION_RE.match(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h30m")
    groups = match.groups()
    return sum(
        int(groups[2 * i + 1]) * factor
        for i, (_, factor) in enumerate(_UNITS)
        if groups[2 * i + 1] is not None
    )


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for ``seconds`` (millisecond precision)."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit, factor in _UNITS:
        unit_ms = round(factor * 1000)
        count, millis = divmod(millis, unit_ms)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
