"""Targets with exactly the labels Prometheus v3's consul_sd gives, one group per instance.

Prometheus puts one target group per service (group labels ``__meta_consul_service`` and
``__meta_consul_dc``) with per-instance labels; file_sd and static configs only carry labels per
group, so each instance becomes its own group with both sets merged. The label values follow
``discovery/consul/consul.go`` (v3.14) to the character, with two documented choices:

- Empty-valued labels are left out: Prometheus treats an empty label as an absent one, so the
  targets are identical after discovery, and outputs are ~15% smaller (CE has no namespace or
  partition, many services no address).
- Meta keys that sanitise to the same label name collide at random upstream (Go map order). Here
  the key that already is a valid label name wins; otherwise the smallest key by code point wins.

Targets are sorted (node, service id, address) so the same Consul state always gives the same
bytes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from consul_sd.consul.records import Instance, aggregated_status

SERVICE_LABEL = "__meta_consul_service"
DATACENTER_LABEL = "__meta_consul_dc"
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Target:
    """One scrape target, held as its file_sd group: ``{"labels":{...},"targets":[address]}``.

    The rendered line is the only copy of the labels: at 20000 targets a string per target costs
    a quarter of the memory of per-label objects, renderers join lines as they are, and equal
    targets compare equal by one string comparison.
    """

    address: str
    line: str

    @classmethod
    def of(cls, address: str, labels: Mapping[str, str]) -> Target:
        """The target at ``address`` with ``labels`` (not ``__address__``; empty ones dropped)."""
        kept = {name: value for name, value in labels.items() if value != ""}
        return cls(address=address, line=_ENCODER.encode({"labels": kept, "targets": [address]}))

    def label_dict(self) -> dict[str, str]:
        labels: dict[str, str] = json.loads(self.line)["labels"]
        return labels


TargetGroup = tuple[Target, ...]
"""All targets of one Consul service, sorted."""


@functools.lru_cache(maxsize=65536)
def sanitize_label_name(name: str) -> str:
    """Prometheus's ``strutil.SanitizeLabelName``: each invalid character becomes ``_``."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def join_host_port(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``: brackets exactly when the host contains a colon."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def build_target_group(
    *,
    service: str,
    datacenter: str,
    instances: Sequence[Instance],
    tag_separator: str,
) -> TargetGroup:
    """The targets of one service, labelled as Prometheus's consul_sd labels them."""
    keyed = [
        (
            (instance.node, instance.service_id),
            _build_target(
                service=service,
                datacenter=datacenter,
                instance=instance,
                tag_separator=tag_separator,
            ),
        )
        for instance in instances
    ]
    keyed.sort(key=lambda pair: (pair[0], pair[1].address))
    return tuple(target for _, target in keyed)


def _build_target(
    *,
    service: str,
    datacenter: str,
    instance: Instance,
    tag_separator: str,
) -> Target:
    host = instance.service_address or instance.node_address
    # The separator also surrounds the list so relabel regexes need not special-case the ends.
    tags = tag_separator + tag_separator.join(instance.tags) + tag_separator
    labels: dict[str, str] = {
        SERVICE_LABEL: service,
        DATACENTER_LABEL: datacenter,
        "__meta_consul_address": instance.node_address,
        "__meta_consul_node": instance.node,
        "__meta_consul_namespace": instance.namespace,
        "__meta_consul_partition": instance.partition,
        "__meta_consul_tags": tags,
        "__meta_consul_service_address": instance.service_address,
        "__meta_consul_service_port": str(instance.service_port),
        "__meta_consul_service_id": instance.service_id,
        "__meta_consul_health": aggregated_status(instance.checks),
    }
    labels.update(_prefixed("__meta_consul_metadata_", instance.node_meta))
    labels.update(_prefixed("__meta_consul_service_metadata_", instance.service_meta))
    labels.update(_prefixed("__meta_consul_tagged_address_", instance.node_tagged_addresses))
    return Target.of(join_host_port(host, instance.service_port), labels)


def _prefixed(prefix: str, values: Mapping[str, str]) -> dict[str, str]:
    """``prefix + sanitised key`` for each entry, with the deterministic collision rule."""
    if not values:
        return {}
    names = [sanitize_label_name(key) for key in values]
    if len(set(names)) == len(names):  # no collision: the common case, kept cheap
        return {prefix + name: value for name, value in zip(names, values.values(), strict=True)}
    chosen: dict[str, tuple[bool, str, str]] = {}
    for name, (key, value) in zip(names, values.items(), strict=True):
        # Preference order: a key that needed no sanitising, then the smallest original key.
        rank = (name != key, key, value)
        current = chosen.get(name)
        if current is None or rank < current:
            chosen[name] = rank
    return {prefix + name: rank[2] for name, rank in chosen.items()}


def group_targets(targets: Iterable[Target]) -> TargetGroup:
    """Targets read back from an output, as one service's group in the builder's order."""

    def order(target: Target) -> tuple[str, str, str]:
        labels = target.label_dict()
        node, service_id = labels.get("__meta_consul_node", ""), labels.get(_SERVICE_ID, "")
        return (node, service_id, target.address)

    return tuple(sorted(set(targets), key=order))


_SERVICE_ID = "__meta_consul_service_id"


def count_targets(groups: Mapping[str, TargetGroup]) -> int:
    return sum(len(group) for group in groups.values())


def iter_targets(groups: Mapping[str, TargetGroup]) -> Iterable[Target]:
    """Every target, services in name order, so renderers produce stable bytes."""
    for name in sorted(groups):
        yield from groups[name]
