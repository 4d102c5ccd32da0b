"""Consul's answers as typed records, parsed strictly, and the health rule (pure, no I/O).

The parsers check every field they read and raise :class:`ConsulBadResponse` naming the
endpoint for anything unexpected; :func:`parsed` turns what they did not foresee into the same
error, so an odd answer is a status reason, never a crash deeper in the engine.
:func:`aggregated_status` is Consul's ``AggregatedStatus``, the value of ``__meta_consul_health``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from consul_sd.consul.errors import ConsulBadResponse, ConsulError

HEALTH_PASSING: Final = "passing"
HEALTH_WARNING: Final = "warning"
HEALTH_CRITICAL: Final = "critical"
HEALTH_MAINTENANCE: Final = "maintenance"
NODE_MAINTENANCE_CHECK: Final = "_node_maintenance"
SERVICE_MAINTENANCE_PREFIX: Final = "_service_maintenance:"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Check:
    check_id: str
    status: str


@dataclass(frozen=True, slots=True)
class CheckState:
    """A row of /v1/health/state: one check of one node (of one service, or the node's own)."""

    node: str
    check_id: str
    service_name: str
    status: str
    service_id: str = ""


@dataclass(frozen=True, slots=True)
class Instance:
    """One entry of /v1/health/service/NAME: a service instance on a node, with its checks."""

    node: str
    node_address: str
    node_meta: Mapping[str, str]
    node_tagged_addresses: Mapping[str, str]
    service_id: str
    service_address: str
    service_port: int
    tags: tuple[str, ...]
    service_meta: Mapping[str, str]
    namespace: str
    partition: str
    checks: tuple[Check, ...]


def parsed(parse: Callable[[Any], _T], data: Any, *, where: str) -> _T:
    """``parse(data)``, with any error other than a :class:`ConsulBadResponse` turned into one.

    The parsers check every field they read; this guard is for what they did not foresee, so
    that an odd answer is a status reason and never a crash of the worker.
    """
    try:
        return parse(data)
    except ConsulError:
        raise
    except RecursionError:
        raise ConsulBadResponse(f"{where}: answer nested too deeply") from None
    except Exception as exc:
        raise ConsulBadResponse(f"{where}: unexpected answer ({type(exc).__name__})") from None


def parse_service_list(data: Any) -> dict[str, tuple[str, ...]]:
    """/v1/catalog/services: ``{name: (tags, sorted)}``; null tags are an empty list.

    Sorted because Consul builds each list from a map: the same catalog comes back with its
    tags in another order from one answer to the next (2529 of 7001 services between two reads
    on a real agent), and a comparison of two answers would see every one of them change.
    """
    where = "/v1/catalog/services"
    if not isinstance(data, dict):
        raise ConsulBadResponse(f"{where}: expected an object, got {type(data).__name__}")
    services: dict[str, tuple[str, ...]] = {}
    for name, raw_tags in data.items():
        tags = [] if raw_tags is None else raw_tags
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ConsulBadResponse(f"{where}: tags of {name!r} are not a list of strings")
        services[name] = tuple(sorted(set(tags)))
    return services


def parse_check_states(data: Any) -> frozenset[CheckState]:
    """/v1/health/state/STATE rows as :class:`CheckState` records, strictly checked."""
    where = "/v1/health/state"
    if data is None:
        return frozenset()
    if not isinstance(data, list):
        raise ConsulBadResponse(f"{where}: expected a list, got {type(data).__name__}")
    states = set()
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ConsulBadResponse(f"{where}: entry {i} is not an object")
        keys = ("Node", "CheckID", "ServiceName", "Status", "ServiceID")
        fields = tuple(row.get(key) or "" for key in keys)
        if not set(map(type, fields)) <= {str}:
            raise ConsulBadResponse(
                f"{where}: entry {i}: Node, CheckID, ServiceName, Status and ServiceID must be "
                "strings"
            )
        states.add(CheckState(*fields))
    return frozenset(states)


def parse_service_checks(data: Any) -> dict[str, frozenset[tuple[str, str]]]:
    """/v1/health/state/any rows as, per service, its checks' (node, CheckID); node checks left out.

    What a registration or deregistration of an instance with a check changes; a status or
    output change does not (those are the critical and warning reads' business).
    """
    where = "/v1/health/state/any"
    if data is None:
        return {}
    if not isinstance(data, list):
        raise ConsulBadResponse(f"{where}: expected a list, got {type(data).__name__}")
    checks: dict[str, set[tuple[str, str]]] = {}
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ConsulBadResponse(f"{where}: entry {i} is not an object")
        node, check_id, service = (row.get(key) or "" for key in ("Node", "CheckID", "ServiceName"))
        if not (isinstance(node, str) and isinstance(check_id, str) and isinstance(service, str)):
            raise ConsulBadResponse(
                f"{where}: entry {i}: Node, CheckID and ServiceName must be strings"
            )
        if service:
            checks.setdefault(service, set()).add((node, check_id))
    return {service: frozenset(found) for service, found in checks.items()}


def parse_node_indexes(data: Any) -> list[tuple[str, int]]:
    """/v1/catalog/nodes rows as (node name, ModifyIndex), strictly checked."""
    where = "/v1/catalog/nodes"
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConsulBadResponse(f"{where}: expected a list, got {type(data).__name__}")
    nodes = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ConsulBadResponse(f"{where}: entry {i} is not an object")
        name, modified = row.get("Node"), row.get("ModifyIndex")
        if not isinstance(name, str) or not isinstance(modified, int) or isinstance(modified, bool):
            raise ConsulBadResponse(f"{where}: entry {i}: Node or ModifyIndex missing or mistyped")
        nodes.append((name, modified))
    return nodes


def parse_health_entries(data: Any, *, where: str) -> list[Instance]:
    """Entries of /v1/health/service/NAME as :class:`Instance` records, strictly checked."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConsulBadResponse(f"{where}: expected a list, got {type(data).__name__}")
    return [_parse_entry(entry, where=f"{where}: entry {i}") for i, entry in enumerate(data)]


def _parse_entry(entry: Any, *, where: str) -> Instance:
    # The hot path of a cold discovery (21000 entries at 7000 services): checks inline.
    if not isinstance(entry, dict):
        raise ConsulBadResponse(f"{where}: expected an object")
    node = entry.get("Node")
    service = entry.get("Service")
    if not isinstance(node, dict):
        raise ConsulBadResponse(f"{where}: Node is not an object")
    if not isinstance(service, dict):
        raise ConsulBadResponse(f"{where}: Service is not an object")
    checks = _parse_checks(entry.get("Checks") or (), where=where)
    port = service.get("Port") or 0
    if not isinstance(port, int) or isinstance(port, bool):
        raise ConsulBadResponse(f"{where}: Service.Port is not an integer")
    tags = service.get("Tags") or ()
    if not isinstance(tags, list | tuple) or not set(map(type, tags)) <= {str}:
        raise ConsulBadResponse(f"{where}: Service.Tags is not a list of strings")
    strings = (
        node.get("Node") or "",
        node.get("Address") or "",
        service.get("ID") or "",
        service.get("Address") or "",
        service.get("Namespace") or "",
        service.get("Partition") or "",
    )
    if not set(map(type, strings)) <= {str}:
        raise ConsulBadResponse(
            f"{where}: Node.Node, Node.Address, Service.ID, "
            "Service.Address, Namespace and Partition must be strings"
        )
    return Instance(
        node=strings[0],
        node_address=strings[1],
        node_meta=_str_map(node.get("Meta"), where=f"{where}: Node.Meta"),
        node_tagged_addresses=_str_map(
            node.get("TaggedAddresses"), where=f"{where}: Node.TaggedAddresses"
        ),
        service_id=strings[2],
        service_address=strings[3],
        service_port=port,
        tags=tuple(tags),
        service_meta=_str_map(service.get("Meta"), where=f"{where}: Service.Meta"),
        namespace=strings[4],
        partition=strings[5],
        checks=checks,
    )


def _parse_checks(raw: Any, *, where: str) -> tuple[Check, ...]:
    if not isinstance(raw, list | tuple):
        raise ConsulBadResponse(f"{where}: Checks is not a list")
    checks = []
    for check in raw:
        if not isinstance(check, dict):
            raise ConsulBadResponse(f"{where}: Checks has an element that is not an object")
        check_id = check.get("CheckID") or ""
        status = check.get("Status") or ""
        if not isinstance(check_id, str) or not isinstance(status, str):
            raise ConsulBadResponse(f"{where}: Checks has a CheckID or Status that is no string")
        checks.append(Check(check_id, status))
    return tuple(checks)


def _str_map(value: Any, *, where: str) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not set(map(type, value.values())) <= {str}:
        raise ConsulBadResponse(f"{where} is not a map of strings")
    return value


def aggregated_status(checks: Sequence[Check]) -> str:
    """Consul's ``HealthChecks.AggregatedStatus``, the value of ``__meta_consul_health``.

    Maintenance checks win; otherwise critical > warning > passing; no checks is passing; any
    other status value gives "" (as the Go client does).
    """
    warning = critical = maintenance = False
    for check in checks:
        if check.check_id == NODE_MAINTENANCE_CHECK or check.check_id.startswith(
            SERVICE_MAINTENANCE_PREFIX
        ):
            maintenance = True
            continue
        if check.status == HEALTH_PASSING:
            continue
        if check.status == HEALTH_WARNING:
            warning = True
        elif check.status == HEALTH_CRITICAL:
            critical = True
        else:
            return ""
    if maintenance:
        return HEALTH_MAINTENANCE
    if critical:
        return HEALTH_CRITICAL
    if warning:
        return HEALTH_WARNING
    # "No checks" and "all passing" both aggregate to passing, as in the Go client.
    return HEALTH_PASSING
