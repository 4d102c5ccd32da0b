"""The simulator's state store: nodes, service instances and checks with Consul's raft indexes.

It follows the index bookkeeping of Consul's ``agent/consul/state`` catalog: one raft counter that
every write advances (even a write that changes nothing, as a raft entry is still applied); a
``nodes``, ``services`` and ``checks`` table index, moved only by writes that change a row of that
table; a per-service index raised by the service's instances, its checks, node-level checks and
node records of its nodes; and a "last extinction" index for services that no longer exist.
Rows render to JSON exactly in the shape Consul 1.16 CE returns (``render_*``).

Registrations are validated as Consul 1.16.3 validates them, with its messages (checked against a
real agent by tests/oracle): node IDs must be UUIDs, service meta follows Consul's key/value rules
(node meta is not checked on this path), any-addresses are refused as service addresses, and check
statuses are stored whatever they are (an unknown one aggregates to "" in discovery).

Limits: one datacenter, no namespaces or partitions (a registration's ``Namespace``/``Partition``
is echoed in Enterprise style but not used as a scope), exact-case service names, no Connect
kinds beyond echoing ``Kind``, not thread-safe. A ``Service`` with neither ``ID`` nor ``Service``
is refused, where Consul stores a service with an empty name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Catalog", "Check", "Instance", "Node", "SimulatedConsulError", "dump_json"]

HEALTH_STATES = ("passing", "warning", "critical")

# Consul renders an empty ConnectProxyConfig like this; shared because it is never mutated.
_PROXY: dict[str, Any] = {"Mode": "", "MeshGateway": {}, "Expose": {}}
_DEFAULT_WEIGHTS: dict[str, int] = {"Passing": 1, "Warning": 1}


def dump_json(value: Any) -> bytes:
    """Compact JSON, UTF-8, as Go's encoder writes it (minus its HTML escaping)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class SimulatedConsulError(Exception):
    """A request Consul would refuse; ``status`` and ``message`` are what its HTTP API answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Node:
    name: str
    id: str
    address: str
    datacenter: str
    tagged_addresses: dict[str, str] | None
    meta: dict[str, str] | None
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: Node) -> bool:
        return (
            self.id == other.id
            and self.address == other.address
            and self.datacenter == other.datacenter
            and self.tagged_addresses == other.tagged_addresses
            and self.meta == other.meta
        )


@dataclass(slots=True)
class Instance:
    node: str
    id: str
    name: str
    kind: str
    tags: list[str] | None
    address: str
    tagged_addresses: dict[str, Any] | None
    meta: dict[str, str] | None
    port: int
    weights: dict[str, int]
    enable_tag_override: bool
    namespace: str
    partition: str
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: Instance) -> bool:
        return (
            self.name == other.name
            and self.kind == other.kind
            and self.tags == other.tags
            and self.address == other.address
            and self.tagged_addresses == other.tagged_addresses
            and self.meta == other.meta
            and self.port == other.port
            and self.weights == other.weights
            and self.enable_tag_override == other.enable_tag_override
            and self.namespace == other.namespace
            and self.partition == other.partition
        )


@dataclass(slots=True)
class Check:
    node: str
    check_id: str
    name: str
    status: str
    notes: str
    output: str
    service_id: str
    service_name: str
    service_tags: list[str] | None
    type: str
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: Check) -> bool:
        return (
            self.name == other.name
            and self.status == other.status
            and self.notes == other.notes
            and self.output == other.output
            and self.service_id == other.service_id
            and self.service_name == other.service_name
            and self.service_tags == other.service_tags
            and self.type == other.type
        )


# --- rendering, in Consul's field order ---------------------------------------------------------


def render_node(node: Node) -> dict[str, Any]:
    return {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": node.tagged_addresses,
        "Meta": node.meta,
        "CreateIndex": node.create_index,
        "ModifyIndex": node.modify_index,
    }


def render_service(inst: Instance) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if inst.kind:
        out["Kind"] = inst.kind
    out["ID"] = inst.id
    out["Service"] = inst.name
    out["Tags"] = inst.tags if inst.tags is not None else []
    out["Address"] = inst.address
    if inst.tagged_addresses:
        out["TaggedAddresses"] = inst.tagged_addresses
    out["Meta"] = inst.meta
    # structs.NodeService declares `Port int json:",omitempty"`: a zero port is absent.
    if inst.port:
        out["Port"] = inst.port
    out["Weights"] = inst.weights
    out["EnableTagOverride"] = inst.enable_tag_override
    out["Proxy"] = _PROXY
    out["Connect"] = {}
    if inst.namespace:
        out["Namespace"] = inst.namespace
    if inst.partition:
        out["Partition"] = inst.partition
    out["PeerName"] = ""
    out["CreateIndex"] = inst.create_index
    out["ModifyIndex"] = inst.modify_index
    return out


def render_check(check: Check) -> dict[str, Any]:
    return {
        "Node": check.node,
        "CheckID": check.check_id,
        "Name": check.name,
        "Status": check.status,
        "Notes": check.notes,
        "Output": check.output,
        "ServiceID": check.service_id,
        "ServiceName": check.service_name,
        "ServiceTags": check.service_tags if check.service_tags is not None else [],
        "Type": check.type,
        "Interval": "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": check.create_index,
        "ModifyIndex": check.modify_index,
    }


def render_service_node(inst: Instance, node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": node.tagged_addresses,
        "NodeMeta": node.meta,
        "ServiceKind": inst.kind,
        "ServiceID": inst.id,
        "ServiceName": inst.name,
        "ServiceTags": inst.tags if inst.tags is not None else [],
        "ServiceAddress": inst.address,
    }
    if inst.tagged_addresses:
        out["ServiceTaggedAddresses"] = inst.tagged_addresses
    out["ServiceWeights"] = inst.weights
    # The catalog endpoint shows a service without meta as {} (the health endpoint as null).
    out["ServiceMeta"] = inst.meta if inst.meta is not None else {}
    out["ServicePort"] = inst.port  # no omitempty on structs.ServiceNode
    out["ServiceSocketPath"] = ""
    out["ServiceEnableTagOverride"] = inst.enable_tag_override
    out["ServiceProxy"] = _PROXY
    out["ServiceConnect"] = {}
    out["ServiceLocality"] = None
    if inst.namespace:
        out["Namespace"] = inst.namespace
    if inst.partition:
        out["Partition"] = inst.partition
    out["CreateIndex"] = inst.create_index
    out["ModifyIndex"] = inst.modify_index
    return out


# --- the store ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Cached:
    index: int
    entries: list[dict[str, Any]]
    body: bytes


class Catalog:
    """Nodes, instances and checks with Consul's index bookkeeping.

    ``on_change`` receives, after each write, the watch scopes whose index moved: ``"nodes"``,
    ``"services"``, ``"checks"``, ``"extinction"`` and ``"svc:<name>"`` per service, plus
    ``"state:<status>"`` for each status a written or deleted check had before or has after (the
    subtree of Consul's checks-by-status index that a /v1/health/state/STATUS query watches),
    ``"nodemeta:<key>=<value>"`` for each meta pair a written or deleted node had or has, with
    ``"nodemeta:*"`` when it had or has any, and ``"nodesvc:<node>"`` when an instance on that node
    is added, changed or removed (what a ``?node-meta=`` catalog list watches).
    """

    def __init__(self, *, datacenter: str, on_change: Callable[[set[str]], None]) -> None:
        self.datacenter = datacenter
        self._on_change = on_change
        # A real cluster has applied raft entries (elections, autopilot, ...) before the first
        # catalog write, so that write lands above the index 1 an empty catalog reports.
        self.raft_index = 10
        self.nodes: dict[str, Node] = {}
        self.instances: dict[str, dict[str, Instance]] = {}  # node -> service ID -> instance
        self.by_name: dict[str, dict[tuple[str, str], Instance]] = {}  # name -> (node, ID) -> ..
        self.checks: dict[str, dict[str, Check]] = {}  # node -> check ID -> check
        # The same checks grouped by owner, (node, service ID or ""), for rendering entries.
        self._checks_by_owner: dict[tuple[str, str], dict[str, Check]] = {}
        self._checks_by_status: dict[str, int] = {}  # status -> how many checks have it
        self.table_index: dict[str, int] = {"nodes": 0, "services": 0, "checks": 0}
        self.service_index: dict[str, int] = {}
        self.extinction_index = 0
        self._health_cache: dict[str, _Cached] = {}
        self._catalog_cache: dict[str, _Cached] = {}
        self._services_cache: tuple[int, bytes] | None = None
        self._scopes: set[str] = set()

    # --- indexes ---

    def index_for_service(self, name: str, *, checks: bool) -> int:
        """The X-Consul-Index of /v1/health/service/NAME (checks=True) or /v1/catalog/service."""
        idx = self.service_index.get(name)
        if idx is not None:
            return idx
        if self.extinction_index:
            return self.extinction_index
        # Never any extinction: Consul falls back to the catalog's max index.
        tables = self.table_index
        base = max(tables["nodes"], tables["services"])
        return max(base, tables["checks"]) if checks else base

    def scopes_for_state(self, state: str) -> tuple[str, ...]:
        """What a blocking /v1/health/state/STATE query watches.

        Consul watches the rows of its checks-by-status index under STATE; with no row there, the
        radix tree hands out the watch of the closest node above, its root, which any check
        write fires. So a passing-only change wakes a query on an empty state and not otherwise
        (measured on Consul 1.16 by tests/oracle/test_table_watch_parity.py).
        """
        if state == "any" or not self._checks_by_status.get(state):
            return ("checks",)
        return (f"state:{state}",)

    def scopes_for_node_meta(self, wanted: Mapping[str, str]) -> tuple[str, ...]:
        """What a blocking /v1/catalog/services?node-meta= query watches (Consul's
        ServicesByNodeMeta): the nodes carrying its first pair, and the instances of each node
        carrying them all.

        Where Consul's radix tree has no row to watch it watches the closest node above, here the
        whole table: every node with meta when no node carries the first pair, every instance
        for a matching node without any.
        """
        key, value = next(iter(wanted.items()))
        carrying = [node for node in self.nodes.values() if (node.meta or {}).get(key) == value]
        if not carrying:
            return ("nodemeta:*",)
        scopes = {f"nodemeta:{key}={value}"}
        for node in carrying:
            if all((node.meta or {}).get(k) == v for k, v in wanted.items()):
                scopes.add(f"nodesvc:{node.name}" if self.instances.get(node.name) else "services")
        # Consul's watch limit (2048 channels) falls back to the whole services table.
        if len(scopes) > 2048:
            return (f"nodemeta:{key}={value}", "services")
        return tuple(scopes)

    def scopes_for_service(self, name: str) -> tuple[str, ...]:
        """What a blocking query on ``name`` must watch to see its index move."""
        if name in self.service_index:
            return (f"svc:{name}",)
        if self.extinction_index:
            return (f"svc:{name}", "extinction")
        return (f"svc:{name}", "extinction", "nodes", "services", "checks")

    # --- writes ---

    def register(self, body: Mapping[str, Any]) -> int:
        """Apply a PUT /v1/catalog/register body; returns the raft index of the write."""
        if not isinstance(body, Mapping):
            raise SimulatedConsulError(400, "Request decode failed: expected a JSON object")
        # In Consul's order: forwarding by datacenter, then nodePreApply, then the address.
        self._check_dc(body)
        node_name = _opt_str(body, "Node")
        if not node_name:
            raise SimulatedConsulError(500, "Must provide node")
        node_id = _opt_str(body, "ID")
        if node_id:
            _check_node_id(node_id)
        skip_node_update = bool(body.get("SkipNodeUpdate", False))
        address = _opt_str(body, "Address")
        if not address and not skip_node_update:
            raise SimulatedConsulError(500, "Must provide address if SkipNodeUpdate is not set")
        node = Node(
            name=node_name,
            id=node_id,
            address=address,
            datacenter=self.datacenter,
            tagged_addresses=_opt_str_map(body, "TaggedAddresses"),
            meta=_opt_str_map(body, "NodeMeta"),
        )
        inst = self._parse_service(node_name, body.get("Service"))
        checks = self._parse_checks(node_name, body=body, inst=inst)
        if inst is not None:
            # Consul validates service meta in its state store, after every other check.
            _check_service_meta(inst)

        idx = self._begin()
        self._ensure_node(node, idx=idx, skip_update=skip_node_update)
        if inst is not None:
            self._ensure_instance(inst, idx)
        for check in checks:
            self._ensure_check(check, idx)
        return self._commit(idx)

    def deregister(self, body: Mapping[str, Any]) -> int:
        """Apply a PUT /v1/catalog/deregister body; returns the raft index of the write."""
        if not isinstance(body, Mapping):
            raise SimulatedConsulError(400, "Request decode failed: expected a JSON object")
        node_name = _opt_str(body, "Node")
        if not node_name:
            raise SimulatedConsulError(500, "Must provide node")
        self._check_dc(body)
        service_id = _opt_str(body, "ServiceID")
        check_id = _opt_str(body, "CheckID")
        idx = self._begin()
        if service_id:
            self._delete_instance(node_name, service_id=service_id, idx=idx)
        elif check_id:
            self._delete_check(node_name, check_id=check_id, idx=idx)
        else:
            self._delete_node(node_name, idx)
        return self._commit(idx)

    def set_check_status(self, *, node: str, check_id: str, status: str) -> int:
        """Change one check's status, as an agent's anti-entropy sync would; returns the index."""
        if status not in HEALTH_STATES:
            raise SimulatedConsulError(400, f"Invalid check status {status!r}")
        existing = self.checks.get(node, {}).get(check_id)
        if existing is None:
            raise SimulatedConsulError(404, f"no check {check_id!r} on node {node!r}")
        idx = self._begin()
        self._ensure_check(replace(existing, status=status), idx)
        return self._commit(idx)

    def _check_dc(self, body: Mapping[str, Any]) -> None:
        dc = _opt_str(body, "Datacenter")
        if dc and dc != self.datacenter:
            raise SimulatedConsulError(500, "No path to datacenter")

    def _parse_service(self, node: str, raw: Any) -> Instance | None:
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise SimulatedConsulError(400, "Request decode failed: Service must be an object")
        name = _opt_str(raw, "Service")
        if not name:
            raise SimulatedConsulError(
                500, "Must provide service name (Service.Service) when service ID is provided"
            )
        tags = raw.get("Tags")
        if tags is not None and (
            not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
        ):
            raise SimulatedConsulError(400, "Request decode failed: Tags must be a list of strings")
        port = raw.get("Port", 0)
        if port is None:
            port = 0
        if not isinstance(port, int) or isinstance(port, bool):
            raise SimulatedConsulError(400, "Request decode failed: Port must be an integer")
        weights = _weights(raw.get("Weights"))
        tagged = raw.get("TaggedAddresses")
        if tagged is not None and not isinstance(tagged, Mapping):
            raise SimulatedConsulError(
                400, "Request decode failed: TaggedAddresses must be an object"
            )
        address = _opt_str(raw, "Address")
        if address in _ANY_ADDRESSES:
            raise SimulatedConsulError(500, "Invalid service address")
        return Instance(
            node=node,
            id=_opt_str(raw, "ID") or name,
            name=name,
            kind=_opt_str(raw, "Kind"),
            tags=list(tags) if tags is not None else None,
            address=address,
            tagged_addresses=dict(sorted(tagged.items())) if tagged else None,
            meta=_opt_str_map(raw, "Meta"),
            port=port,
            weights=weights,
            enable_tag_override=bool(raw.get("EnableTagOverride", False)),
            namespace=_opt_str(raw, "Namespace"),
            partition=_opt_str(raw, "Partition"),
        )

    def _parse_checks(
        self, node: str, *, body: Mapping[str, Any], inst: Instance | None
    ) -> list[Check]:
        raw_checks: list[Any] = []
        if body.get("Check") is not None:
            raw_checks.append(body["Check"])
        extra = body.get("Checks")
        if extra is not None:
            if not isinstance(extra, list):
                raise SimulatedConsulError(400, "Request decode failed: Checks must be a list")
            raw_checks.extend(extra)
        checks: list[Check] = []
        for raw in raw_checks:
            if not isinstance(raw, Mapping):
                raise SimulatedConsulError(400, "Request decode failed: a check must be an object")
            check_id = _opt_str(raw, "CheckID") or _opt_str(raw, "Name")
            if not check_id:
                raise SimulatedConsulError(500, "Must provide a CheckID or a Name for each check")
            check_node = _opt_str(raw, "Node") or node
            if check_node.lower() != node.lower():
                raise SimulatedConsulError(
                    500,
                    f"Node '{check_node}' for check '{check_id}' doesn't match "
                    f"register request node '{node}'",
                )
            # Consul stores any status it is given (an unknown one aggregates to ""), and
            # critical when there is none.
            status = _opt_str(raw, "Status") or "critical"
            service_id = _opt_str(raw, "ServiceID")
            target = inst if inst is not None and inst.id == service_id else None
            if service_id and target is None:
                target = self.instances.get(node, {}).get(service_id)
                if target is None:
                    raise SimulatedConsulError(
                        500, f"Unknown service ID '{service_id}' for check ID '{check_id}'"
                    )
            checks.append(
                Check(
                    node=node,
                    check_id=check_id,
                    name=_opt_str(raw, "Name"),
                    status=status,
                    notes=_opt_str(raw, "Notes"),
                    output=_opt_str(raw, "Output"),
                    service_id=service_id,
                    service_name=target.name if target is not None else "",
                    service_tags=list(target.tags or []) if target is not None else None,
                    type=_opt_str(raw, "Type"),
                )
            )
        return checks

    def _begin(self) -> int:
        # Every accepted write is a raft entry, so the raft index moves even when nothing changes.
        self.raft_index += 1
        self._scopes = set()
        return self.raft_index

    def _commit(self, idx: int) -> int:
        scopes, self._scopes = self._scopes, set()
        if scopes:
            self._on_change(scopes)
        return idx

    def _touch_table(self, table: str, idx: int) -> None:
        self.table_index[table] = idx
        self._scopes.add(table)

    def _touch_service(self, name: str, idx: int) -> None:
        self.service_index[name] = idx
        self._scopes.add(f"svc:{name}")

    def _touch_services_of_node(self, node: str, idx: int) -> None:
        for inst in self.instances.get(node, {}).values():
            self._touch_service(inst.name, idx)

    def _touch_node_meta(self, *metas: dict[str, str] | None) -> None:
        for meta in metas:
            if meta:
                self._scopes.add("nodemeta:*")
                self._scopes.update(f"nodemeta:{k}={v}" for k, v in meta.items())

    def _ensure_node(self, node: Node, *, idx: int, skip_update: bool) -> None:
        existing = self.nodes.get(node.name)
        if existing is not None and (skip_update or existing.same(node)):
            return
        self._touch_node_meta(existing.meta if existing is not None else None, node.meta)
        node.create_index = existing.create_index if existing is not None else idx
        node.modify_index = idx
        self.nodes[node.name] = node
        self.instances.setdefault(node.name, {})
        self.checks.setdefault(node.name, {})
        self._touch_table("nodes", idx)
        self._touch_services_of_node(node.name, idx)

    def _ensure_instance(self, inst: Instance, idx: int) -> None:
        on_node = self.instances.setdefault(inst.node, {})
        existing = on_node.get(inst.id)
        if existing is not None and existing.same(inst):
            return
        if existing is not None and existing.name != inst.name:
            self._unlink_instance(existing, idx)
        inst.create_index = existing.create_index if existing is not None else idx
        inst.modify_index = idx
        on_node[inst.id] = inst
        self.by_name.setdefault(inst.name, {})[(inst.node, inst.id)] = inst
        self._scopes.add(f"nodesvc:{inst.node}")
        self._touch_table("services", idx)
        self._touch_service(inst.name, idx)

    def _unlink_instance(self, inst: Instance, idx: int) -> None:
        """Drop ``inst`` from its service name, recording an extinction if it was the last one."""
        same_name = self.by_name.get(inst.name, {})
        same_name.pop((inst.node, inst.id), None)
        if same_name:
            self._touch_service(inst.name, idx)
            return
        self.by_name.pop(inst.name, None)
        self.service_index.pop(inst.name, None)
        self._health_cache.pop(inst.name, None)
        self._catalog_cache.pop(inst.name, None)
        self.extinction_index = idx
        self._scopes.update((f"svc:{inst.name}", "extinction"))

    def _ensure_check(self, check: Check, idx: int) -> None:
        on_node = self.checks.setdefault(check.node, {})
        existing = on_node.get(check.check_id)
        if existing is not None and existing.same(check):
            return
        check.create_index = existing.create_index if existing is not None else idx
        check.modify_index = idx
        if existing is not None:
            self._forget_check(existing)
        self._count_status(check.status, +1)
        on_node[check.check_id] = check
        self._checks_by_owner.setdefault((check.node, check.service_id), {})[check.check_id] = check
        self._touch_table("checks", idx)
        self._touch_check_owner(check, idx)

    def _touch_check_owner(self, check: Check, idx: int) -> None:
        if check.service_id:
            inst = self.instances.get(check.node, {}).get(check.service_id)
            if inst is not None:
                self._touch_service(inst.name, idx)
        else:
            self._touch_services_of_node(check.node, idx)

    def _count_status(self, status: str, step: int) -> None:
        self._checks_by_status[status] = self._checks_by_status.get(status, 0) + step
        self._scopes.add(f"state:{status}")

    def _forget_check(self, check: Check) -> None:
        """Drop ``check`` from the by-owner and by-status views (not from ``checks``)."""
        self._count_status(check.status, -1)
        owner = (check.node, check.service_id)
        group = self._checks_by_owner.get(owner)
        if group is not None:
            group.pop(check.check_id, None)
            if not group:
                del self._checks_by_owner[owner]

    def _delete_instance(self, node: str, *, service_id: str, idx: int) -> None:
        inst = self.instances.get(node, {}).pop(service_id, None)
        if inst is None:
            return
        on_node = self.checks.get(node, {})
        owned = self._checks_by_owner.pop((node, service_id), {})
        for cid, check in owned.items():
            self._count_status(check.status, -1)
            del on_node[cid]
        if owned:
            self._touch_table("checks", idx)
        self._scopes.add(f"nodesvc:{node}")
        self._touch_table("services", idx)
        self._unlink_instance(inst, idx)

    def _delete_check(self, node: str, *, check_id: str, idx: int) -> None:
        check = self.checks.get(node, {}).pop(check_id, None)
        if check is None:
            return
        self._forget_check(check)
        self._touch_table("checks", idx)
        self._touch_check_owner(check, idx)

    def _delete_node(self, node: str, idx: int) -> None:
        if node not in self.nodes:
            return
        for check in self.checks.pop(node, {}).values():
            self._forget_check(check)
            self._touch_table("checks", idx)
        instances = self.instances.pop(node, {})
        if instances:
            self._scopes.add(f"nodesvc:{node}")
            self._touch_table("services", idx)
        for inst in instances.values():
            self._unlink_instance(inst, idx)
        self._touch_node_meta(self.nodes.pop(node).meta)
        self._touch_table("nodes", idx)

    # --- reads ---

    def service_names(self) -> Iterable[str]:
        return self.by_name.keys()

    def _sorted_instances(self, name: str) -> list[Instance]:
        return [inst for _, inst in sorted(self.by_name.get(name, {}).items())]

    def _health_cached(self, name: str) -> _Cached | None:
        idx = self.service_index.get(name)
        if idx is None:
            return None
        cached = self._health_cache.get(name)
        if cached is None or cached.index != idx:
            entries = [self._health_entry(inst) for inst in self._sorted_instances(name)]
            cached = _Cached(idx, entries, dump_json(entries))
            self._health_cache[name] = cached
        return cached

    def _health_entry(self, inst: Instance) -> dict[str, Any]:
        # Consul lists the node-level checks first, then the instance's, each by CheckID.
        node_level = self._checks_by_owner.get((inst.node, ""), {})
        own = self._checks_by_owner.get((inst.node, inst.id), {})
        checks = [render_check(node_level[k]) for k in sorted(node_level)]
        checks.extend(render_check(own[k]) for k in sorted(own))
        return {
            "Node": render_node(self.nodes[inst.node]),
            "Service": render_service(inst),
            "Checks": checks,
        }

    def health_entries(self, name: str) -> list[dict[str, Any]]:
        """Entries of /v1/health/service/NAME; shared cached objects, never mutate them."""
        cached = self._health_cached(name)
        return cached.entries if cached is not None else []

    def health_body(self, name: str) -> bytes:
        cached = self._health_cached(name)
        return cached.body if cached is not None else b"[]"

    def _catalog_cached(self, name: str) -> _Cached | None:
        idx = self.service_index.get(name)
        if idx is None:
            return None
        cached = self._catalog_cache.get(name)
        if cached is None or cached.index != idx:
            rows = [
                render_service_node(inst, self.nodes[inst.node])
                for inst in self._sorted_instances(name)
            ]
            cached = _Cached(idx, rows, dump_json(rows))
            self._catalog_cache[name] = cached
        return cached

    def catalog_rows(self, name: str) -> list[dict[str, Any]]:
        """Rows of /v1/catalog/service/NAME; shared cached objects, never mutate them."""
        cached = self._catalog_cached(name)
        return cached.entries if cached is not None else []

    def catalog_body(self, name: str) -> bytes:
        cached = self._catalog_cached(name)
        return cached.body if cached is not None else b"[]"

    def services_map(self) -> dict[str, list[str]]:
        return {
            name: sorted({t for inst in insts.values() for t in (inst.tags or ())})
            for name, insts in self.by_name.items()
        }

    def services_body(self) -> bytes:
        idx = self.table_index["services"]
        if self._services_cache is None or self._services_cache[0] != idx:
            self._services_cache = (idx, dump_json(dict(sorted(self.services_map().items()))))
        return self._services_cache[1]

    def check_rows(self, state: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for node in sorted(self.checks):
            for check_id in sorted(self.checks[node]):
                check = self.checks[node][check_id]
                if state in ("any", check.status):
                    rows.append(render_check(check))
        return rows

    def node_rows(self) -> list[dict[str, Any]]:
        return [render_node(self.nodes[name]) for name in sorted(self.nodes)]


def _opt_str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SimulatedConsulError(400, f"Request decode failed: {key} must be a string")
    return value


def _opt_str_map(body: Mapping[str, Any], key: str) -> dict[str, str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SimulatedConsulError(400, f"Request decode failed: {key} must map strings to strings")
    # Go's encoder writes map keys sorted (by bytes, i.e. by code point for UTF-8).
    return dict(sorted(value.items()))


# ipaddr.IsAny: what Consul refuses as a service address.
_ANY_ADDRESSES = frozenset({"0.0.0.0", "::", "[::]"})
_META_KEY = re.compile(r"[a-zA-Z0-9_-]+")
_META_MAX_PAIRS = 64
_META_KEY_MAX_BYTES = 128
_META_VALUE_MAX_BYTES = 512
_META_RESERVED_PREFIX = "consul-"
# structs.allowedConsulMetaKeysForMeshGateway
_MESH_GATEWAY_META_KEYS = frozenset({"consul-wan-federation"})


def _check_service_meta(inst: Instance) -> None:
    """structs.ValidateServiceMetadata, with the state store's message around it."""
    problem = _meta_problem(inst.meta or {}, kind=inst.kind)
    if problem is not None:
        raise SimulatedConsulError(
            500,
            f"failed inserting service: Invalid Service Meta for node {inst.node} "
            f"and serviceID {inst.id}: {problem}",
        )


def _meta_problem(meta: Mapping[str, str], *, kind: str) -> str | None:
    if len(meta) > _META_MAX_PAIRS:
        # Consul's wording, whether the meta is a node's or a service's.
        return f"Node metadata cannot contain more than {_META_MAX_PAIRS} key/value pairs"
    allowed = _MESH_GATEWAY_META_KEYS if kind == "mesh-gateway" else frozenset()
    for key, value in meta.items():
        if not key:
            reason = "Key cannot be blank"
        elif not _META_KEY.fullmatch(key):
            reason = "Key contains invalid characters"
        elif len(key.encode()) > _META_KEY_MAX_BYTES:
            reason = f"Key is too long (limit: {_META_KEY_MAX_BYTES} characters)"
        elif key.startswith(_META_RESERVED_PREFIX) and key not in allowed:
            reason = f"Key prefix '{_META_RESERVED_PREFIX}' is reserved for internal use"
        elif len(value.encode()) > _META_VALUE_MAX_BYTES:
            reason = f"Value is too long (limit: {_META_VALUE_MAX_BYTES} characters)"
        else:
            continue
        return f"Couldn't load metadata pair ('{key}', '{value}'): {reason}"
    return None


def _check_node_id(node_id: str) -> None:
    """hashicorp/go-uuid's ParseUUID, as Consul's nodePreApply reports it."""
    raw = node_id.encode()
    if len(raw) != 36:
        raise SimulatedConsulError(500, "Bad node ID: uuid string is wrong length")
    if any(raw[i : i + 1] != b"-" for i in (8, 13, 18, 23)):
        raise SimulatedConsulError(500, "Bad node ID: uuid is improperly formatted")
    for byte in raw[0:8] + raw[9:13] + raw[14:18] + raw[19:23] + raw[24:]:
        if chr(byte) not in "0123456789abcdefABCDEF":
            # encoding/hex's InvalidByteError (a byte, not a rune), formatted with %#U.
            raise SimulatedConsulError(
                500, f"Bad node ID: encoding/hex: invalid byte: U+{byte:04X} '{chr(byte)}'"
            )


def _weights(weights: Any) -> dict[str, int]:
    # Consul silently falls back to {1, 1} when the weights are absent or invalid.
    if isinstance(weights, Mapping):
        passing, warning = weights.get("Passing"), weights.get("Warning", 0)
        if (
            isinstance(passing, int)
            and isinstance(warning, int)
            and 1 <= passing <= 65535
            and 0 <= warning <= 65535
        ):
            return {"Passing": passing, "Warning": warning}
    return dict(_DEFAULT_WEIGHTS)
