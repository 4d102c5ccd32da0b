"""file_sd JSON rendering: targets in, deterministic bytes out.

One group per instance (file_sd labels are per group), services in name order, targets in
:func:`consul_sd.targets.build_target_group` order, keys sorted, one group per line. The same
targets always give the same bytes, so writers compare bytes to skip no-op writes and a
ConfigMap shard only changes when its own services do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from consul_sd.targets import TargetGroup, iter_targets


def render_file_sd(groups: Mapping[str, TargetGroup]) -> bytes:
    """The file_sd JSON document of every target in ``groups``."""
    return render_lines(target.line for target in iter_targets(groups))


def render_lines(lines: Iterable[str]) -> bytes:
    """A JSON array of pre-rendered groups, one per line (``[]`` when there are none)."""
    body = ",\n".join(lines)
    if not body:
        return b"[]\n"
    return ("[\n" + body + "\n]\n").encode()
