"""Output objects from a snapshot: file_sd ConfigMap shards, ScrapeConfig shards, HTTP SD form.

Pure functions: targets in, Kubernetes object bodies out; ``kube`` writes them. Both outputs are
sharded so no object nears its limit (a ConfigMap holds 1 MiB; an etcd object ~1.5 MiB) and so a
change stays local: a service is assigned to shard ``crc32(name) % K`` with K a power of two, so
a change to one service rewrites one shard, and growing K splits each shard in two instead of
reshuffling everything. K is sticky: it only changes when the current K no longer fits or is
four times too many. A service too large for a quarter of a shard is spread by instance instead.
When even ``maxShards`` shards cannot hold the targets, :class:`OutputTooLarge` is raised and
the previous objects stay as they are.

The HTTP SD form of a ScrapeConfig (:func:`http_sd_scrape_config_spec`) holds no targets: one
object per ConsulDiscovery, whatever the fleet size, pointing Prometheus at the operator.

ScrapeConfig labels need no rewriting: every label name the target builder emits is sanitised
to ``[a-zA-Z0-9_]`` and starts with ``__meta_consul_``, which prometheus-operator accepts (one
invalid label would make it drop the whole object).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consul_sd.api.spec import ConfigMapOutput, HTTPSDOutput, ScrapeConfigOutput
from consul_sd.outputs.render import render_lines
from consul_sd.targets import Target, TargetGroup

# Aim shards below their limit so hashing skew rarely forces a resize (each shard is still
# checked against the limit, and K doubles when one overflows).
_FILL_TARGET = 0.75
# Bytes of ScrapeConfig JSON allowed per object; etcd refuses objects above ~1.5 MiB.
SCRAPE_CONFIG_MAX_BYTES = 1024 * 1024


class OutputTooLarge(Exception):
    """The targets do not fit the configured number of shards."""


def shard_index(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % shards


def _units(
    groups: Mapping[str, TargetGroup], *, measure: Any, split_above: float
) -> list[tuple[str, list[Target], int]]:
    """Sharding units: whole services, or single instances of services too big to keep whole."""
    units = []
    for name in sorted(groups):
        targets = list(groups[name])
        size = sum(measure(t) for t in targets)
        if size > split_above and len(targets) > 1:
            for target in targets:
                units.append((f"{name}\x00{target.address}", [target], measure(target)))
        else:
            units.append((name, targets, size))
    return units


def _choose_shards(
    *,
    units: Sequence[tuple[str, list[Target], int]],
    limit: float,
    max_shards: int,
    previous: int | None,
) -> list[list[tuple[str, list[Target], int]]]:
    total = sum(size for _, _, size in units)
    needed = 1
    while needed < max_shards and total > needed * limit * _FILL_TARGET:
        needed *= 2
    candidates = []
    if previous and needed <= previous <= min(max_shards, needed * 4):
        candidates.append(previous)
    count = needed
    while count <= max_shards:
        candidates.append(count)
        count *= 2
    for shards in candidates:
        buckets: list[list[tuple[str, list[Target], int]]] = [[] for _ in range(shards)]
        for unit in units:
            buckets[shard_index(unit[0], shards)].append(unit)
        if all(sum(size for _, _, size in bucket) <= limit for bucket in buckets):
            return buckets
    raise OutputTooLarge(
        f"{total} bytes of targets do not fit {max_shards} shards of at most {int(limit)} "
        "bytes: raise maxShards (and mount the extra shards) or narrow the selector"
    )


@dataclass(frozen=True)
class ConfigMapShard:
    name: str
    key: str
    data: bytes
    targets: int
    members: tuple[Target, ...] = ()


def config_map_shards(
    groups: Mapping[str, TargetGroup],
    *,
    output: ConfigMapOutput,
    previous: int | None = None,
) -> list[ConfigMapShard]:
    """One file_sd document per shard, named ``<name>-<i>`` with key ``<name>-<i>.json``."""

    def measure(target: Target) -> int:
        return len(target.line.encode()) + 2  # the ",\n" that joins it to the next group

    units = _units(groups, measure=measure, split_above=output.max_shard_bytes / 4)
    buckets = _choose_shards(
        units=units,
        limit=output.max_shard_bytes - 16,
        max_shards=output.max_shards,
        previous=previous,
    )
    shards = []
    for i, bucket in enumerate(buckets):
        name = f"{output.name}-{i}"
        ordered = sorted(bucket, key=lambda unit: unit[0])
        targets = tuple(t for _, unit_targets, _ in ordered for t in unit_targets)
        data = render_lines(t.line for t in targets)
        shards.append(ConfigMapShard(name, f"{name}.json", data, len(targets), targets))
    return shards


def config_map_data(name: str, targets: Iterable[Target]) -> dict[str, str]:
    """The data of ConfigMap ``name`` holding ``targets`` (one key, ``<name>.json``)."""
    return {f"{name}.json": render_lines(t.line for t in targets).decode()}


def static_config(target: Target) -> dict[str, Any]:
    return {"targets": [target.address], "labels": target.label_dict()}


def scrape_config_spec(settings: Mapping[str, Any], targets: Iterable[Target]) -> dict[str, Any]:
    """A ScrapeConfig spec: the scrape settings and one static config per target."""
    return {**settings, "staticConfigs": [static_config(t) for t in targets]}


def http_sd_url(base: str, *, namespace: str, name: str) -> str:
    """Where the operator serves one ConsulDiscovery's targets, under its ``--http-sd-url``."""
    return f"{base.rstrip('/')}/targets/{namespace}/{name}"


def http_sd_scrape_config_spec(
    settings: Mapping[str, Any], *, url: str, http_sd: HTTPSDOutput
) -> dict[str, Any]:
    """A ScrapeConfig spec that fetches the targets from ``url`` (prometheus-operator's shape).

    The bearer token is a reference to the Secret the operator checks requests against, so
    the token itself is never in the object.
    """
    config: dict[str, Any] = {"url": url, "refreshInterval": http_sd.refresh_interval}
    if http_sd.authorization is not None:
        ref = http_sd.authorization.secret_ref
        config["authorization"] = {
            "type": "Bearer",
            "credentials": {"name": ref.name, "key": ref.key},
        }
    return {**settings, "httpSDConfigs": [config]}


def scrape_config_shards(
    groups: Mapping[str, TargetGroup],
    *,
    output: ScrapeConfigOutput,
    previous: int | None = None,
) -> list[tuple[str, tuple[Target, ...]]]:
    """``(ScrapeConfig name, targets)`` per shard, sized by their static configs' bytes."""
    configs: dict[Target, dict[str, Any]] = {}

    def measure(target: Target) -> int:
        config = configs.get(target)
        if config is None:
            config = configs[target] = static_config(target)
        return len(json.dumps(config, separators=(",", ":")))

    # Size by bytes with a per-object target count cap folded into the byte limit.
    average = max(1, sum(measure(t) for g in groups.values() for t in g)) / max(
        1, sum(len(g) for g in groups.values())
    )
    limit = min(SCRAPE_CONFIG_MAX_BYTES, average * output.max_targets_per_object)
    units = _units(groups, measure=measure, split_above=limit / 4)
    buckets = _choose_shards(units=units, limit=limit, max_shards=256, previous=previous)
    shards = []
    for i, bucket in enumerate(buckets):
        ordered = sorted(bucket, key=lambda unit: unit[0])
        shards.append((f"{output.name}-{i}", tuple(t for _, ts, _ in ordered for t in ts)))
    return shards


def scrape_settings(output: ScrapeConfigOutput) -> dict[str, Any]:
    """The user's scrape settings in ScrapeConfig field names, unset ones left out."""
    fields = output.model_dump(
        by_alias=True,
        exclude_none=True,
        exclude={"name", "labels", "max_targets_per_object", "targets_from"},
    )
    for key in ("relabelings", "metricRelabelings"):
        if not fields.get(key):
            fields.pop(key, None)
    return fields


def held_targets(kind: str, content: Mapping[str, Any]) -> list[Target]:
    """The targets an existing output object holds, read back from its data or spec.

    What a restarted operator learns from its own objects: the seed of its first discovery and
    the set each object holds, so no write ever drops a target another object has not taken
    over yet. Entries this operator would not have written are skipped.
    """
    if kind == "ConfigMap":
        entries: list[Any] = []
        for text in content.values():
            try:
                parsed = json.loads(text)
            except (TypeError, ValueError, RecursionError):
                continue
            if isinstance(parsed, list):
                entries.extend(parsed)
    else:
        entries = list(content.get("staticConfigs") or [])
    held = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        target = _read_target(entry.get("targets"), entry.get("labels"))
        if target is not None:
            held.append(target)
    return held


def _read_target(addresses: Any, labels: Any) -> Target | None:
    """An entry as this operator writes it (one address, string labels), else ``None``."""
    if not isinstance(labels, dict) or not isinstance(addresses, list) or len(addresses) != 1:
        return None
    if not isinstance(addresses[0], str) or not all(isinstance(v, str) for v in labels.values()):
        return None
    return Target.of(addresses[0], labels)
