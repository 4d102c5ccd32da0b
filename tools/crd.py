"""The ConsulDiscovery CRD, generated from the pydantic models (``spec``, ``status``).

``deploy/crds/consul-sd.io_consuldiscoveries.yaml`` and the Helm chart's byte-identical copy
(``deploy/helm/consul-sd-operator/files/``, which the chart's CRD template reads) are this
module's output (``python -m tools.crd --write``, or ``make generate``; without ``--write``
the CRD goes to stdout); tests fail when either drifts. Pydantic's JSON schema is turned
into a structural OpenAPI v3 schema the apiserver accepts: references inlined, optional fields
as ``nullable``, no titles, no ``additionalProperties: false`` beside ``properties``
(structural schemas forbid it; unknown fields are rejected by kubectl's strict field validation
and pruned by the apiserver).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from consul_sd.api.names import CATEGORIES, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from consul_sd.api.spec import ConsulDiscoverySpec
from consul_sd.api.status import ConsulDiscoveryStatus

CRD_FILE = f"{GROUP}_{PLURAL}.yaml"
# Where ``write_crd_files`` puts the CRD, relative to the repository root.
CRD_PATHS = (
    Path("deploy") / "crds" / CRD_FILE,
    Path("deploy") / "helm" / "consul-sd-operator" / "files" / CRD_FILE,
)

_DROP_KEYS = {"title", "x-consul-sd-duration", "discriminator"}


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema as a structural schema: refs inlined, nulls as ``nullable``."""
    definitions = schema.get("$defs", {})

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = definitions[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
            return convert(merged)
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            nullable = len(options) != len(node["anyOf"])
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if len(options) == 1:
                merged = {**convert(options[0]), **convert(rest)}
                if nullable:
                    merged["nullable"] = True
                if merged.get("default", ...) is None:
                    del merged["default"]
                return merged
        result = {}
        for key, value in node.items():
            if key in _DROP_KEYS or key == "$defs":
                continue
            if key == "additionalProperties" and value is False:
                continue
            if key == "const":
                result["enum"] = [value]
                continue
            result[key] = convert(value)
        if result.get("default", ...) is None:
            del result["default"]
        return result

    converted: dict[str, Any] = convert(schema)
    return converted


def spec_schema() -> dict[str, Any]:
    schema = structural(ConsulDiscoverySpec.model_json_schema(by_alias=True, mode="validation"))
    # The operator cannot run without somewhere to write: require it in the schema too.
    schema["required"] = sorted({*schema.get("required", []), "output"})
    schema["properties"]["output"].pop("nullable", None)
    # Relabel params and free-form maps are atomic, as in prometheus-operator's CRDs.
    return schema


def status_schema() -> dict[str, Any]:
    return structural(ConsulDiscoveryStatus.model_json_schema(by_alias=True, mode="validation"))


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Mode", "type": "string", "jsonPath": ".status.mode"},
                        {"name": "Services", "type": "integer", "jsonPath": ".status.services"},
                        {"name": "Targets", "type": "integer", "jsonPath": ".status.targets"},
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {
                            "name": "Status",
                            "type": "string",
                            "description": "The Degraded reason, else Synced or FirstSyncPending.",
                            "jsonPath": ".status.reason",
                        },
                        {
                            "name": "Last Sync",
                            "type": "date",
                            "description": "When the targets were last confirmed current.",
                            "jsonPath": ".status.lastSyncTime",
                        },
                        {
                            "name": "Age",
                            "type": "date",
                            "jsonPath": ".metadata.creationTimestamp",
                        },
                        {
                            "name": "Failed",
                            "type": "integer",
                            "description": "Services whose last query failed.",
                            "jsonPath": ".status.failedServices",
                            "priority": 1,
                        },
                        {
                            "name": "Outputs",
                            "type": "string",
                            "description": "The objects written.",
                            "jsonPath": ".status.outputs[*].name",
                            "priority": 1,
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Consul service discovery into Prometheus targets.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    header = (
        "# Generated by `python -m tools.crd` from operator/consul_sd/api/spec.py: do not edit.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def write_crd_files(root: Path) -> list[Path]:
    """Write the CRD to every path of :data:`CRD_PATHS` under the repository ``root``."""
    text = render_crd()
    written = []
    for relative in CRD_PATHS:
        path = root / relative
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{path.parent} is missing: is {root} the repository root?")
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["--write"]:
        for written_path in write_crd_files(Path(sys.argv[2] if len(sys.argv) > 2 else ".")):
            sys.stdout.write(f"wrote {written_path}\n")
    else:
        sys.stdout.write(render_crd())
