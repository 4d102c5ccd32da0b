"""docs/crd-reference.md, generated from the models through the CRD schema (``crd``).

Role: one Markdown page that lists every ConsulDiscovery field users can write (``spec``) and
read (``status``): type, default, constraints and the description from the model, one table per
object. ``python -m tools.docs`` prints it; ``--write`` writes ``docs/crd-reference.md``
(a test fails when the committed page drifts from the model); it also writes the chart README's
values table (:mod:`tools.chart_docs`).

Limits: the page says what the OpenAPI schema says plus :data:`CROSS_FIELD_RULES`, the rules
only the pydantic validators enforce (a unit test checks each one against the model, so the
list cannot silently go stale), and :data:`FALLBACK_DESCRIPTIONS` for fields whose model has no
``description`` yet (a test fails once the model gains one, so the fallback is removed and the
model, which also feeds ``kubectl explain``, stays the source); it does not explain modes or
outputs (the README does).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from consul_sd.api.durations import DURATION_PATTERN
from consul_sd.api.names import CATEGORIES, GROUP, KIND, PLURAL, SHORT_NAMES, VERSION
from tools.chart_docs import write_readme
from tools.crd import build_crd, spec_schema, status_schema

DOC_PATH = Path("docs") / "crd-reference.md"

# Rules the OpenAPI schema cannot express, enforced by the model's validators and reported as
# Ready=False InvalidSpec: (field, rule as the status message words it).
CROSS_FIELD_RULES: tuple[tuple[str, str], ...] = (
    ("spec.output", "set configMap, scrapeConfig or httpSD"),
    ("spec.consul", "tokenSecretRef and basicAuthSecretRef are mutually exclusive"),
    ("spec.consul.tls", "certSecretRef and keySecretRef must be set together"),
    ("spec.watchTimeout", "must be at most 10m (Consul's limit)"),
    ("spec.watchTimeout", "must be at least 1s"),
    ("spec.refreshInterval", "must be at least 1s"),
)

# Descriptions for fields the model does not describe yet, by path as on the page. Moving one
# into spec.py/status.py (Field(description=...)) makes the tests ask for its removal here.
FALLBACK_DESCRIPTIONS: dict[str, str] = {}


def _description(path: str, node: dict[str, Any]) -> str:
    return str(node.get("description") or FALLBACK_DESCRIPTIONS.get(path, ""))


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "any")
    if node.get("pattern") == DURATION_PATTERN:
        return "duration"
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object" and "properties" not in node:
        values = node.get("additionalProperties")
        if isinstance(values, dict):
            return f"map[string]{_type(values)}"
        return "object"
    return str(kind)


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{value}`" for value in node["enum"]))
    for key, label in (("minimum", ">="), ("maximum", "<=")):
        if key in node:
            parts.append(f"{label} {node[key]}")
    for key, label in (("minLength", "length >="), ("maxLength", "length <=")):
        if key in node:
            parts.append(f"{label} {node[key]}")
    if "pattern" in node and node["pattern"] != DURATION_PATTERN:
        parts.append(f"pattern `{node['pattern']}`")
    if node.get("pattern") == DURATION_PATTERN:
        parts.append("Prometheus duration (`30s`, `5m`, `1h30m`)")
    return "; ".join(parts)


def _default(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    value = node["default"]
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    if value in ([], {}):
        return f"`{value}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").replace("``", "`").split())


def _object_sections(path: str, node: dict[str, Any]) -> list[str]:
    """A heading and a field table for ``node``, then one section per nested object."""
    properties: dict[str, Any] = node.get("properties", {})
    required = set(node.get("required", []))
    lines = [f"### `{path}`", ""]
    if _description(path, node):
        lines += [_cell(_description(path, node)), ""]
    lines += [
        "| field | type | required | default | constraints | description |",
        "|---|---|---|---|---|---|",
    ]
    nested: list[tuple[str, dict[str, Any]]] = []
    for name, child in properties.items():
        lines.append(
            f"| `{name}` | {_type(child)} | {'yes' if name in required else ''} | "
            f"{_default(child)} | {_cell(_constraints(child))} | "
            f"{_cell(_description(f'{path}.{name}', child))} |"
        )
        if "properties" in child:
            nested.append((f"{path}.{name}", child))
        elif child.get("type") == "array" and "properties" in child.get("items", {}):
            nested.append((f"{path}.{name}[]", child["items"]))
    lines.append("")
    for child_path, child in nested:
        lines += _object_sections(child_path, child)
    return lines


def render_reference() -> str:
    """The whole Markdown page."""
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    printed = version["additionalPrinterColumns"]
    columns = ", ".join(c["name"] for c in printed if not c.get("priority"))
    wide = ", ".join(c["name"] for c in printed if c.get("priority"))
    lines = [
        "<!-- Generated by `python -m tools.docs --write` from operator/consul_sd/api/spec.py"
        " and status.py: do not edit. -->",
        "",
        f"# {KIND} reference (`{GROUP}/{VERSION}`)",
        "",
        f"- API: `apiVersion: {GROUP}/{VERSION}`, `kind: {KIND}`, namespaced; plural "
        f"`{PLURAL}`, short name{'s' if len(SHORT_NAMES) > 1 else ''} "
        f"{', '.join(f'`{n}`' for n in SHORT_NAMES)}, category "
        f"{', '.join(f'`{c}`' for c in CATEGORIES)}.",
        f"- `kubectl get {SHORT_NAMES[0]}` columns: {columns}; `-o wide` adds {wide}. Status is"
        " the Degraded reason while degraded, else `Synced` or `FirstSyncPending`.",
        "- Secrets named in the spec are read from the ConsulDiscovery's own namespace.",
        "- Durations use Prometheus syntax: `ms`, `s`, `m`, `h`, `d`, `w`, `y` units, largest"
        " first.",
        "- Unknown fields are rejected by `kubectl` (strict field validation) and pruned by the"
        " apiserver.",
        "",
        "## Rules the schema cannot express",
        "",
        "The apiserver accepts these; the operator reports them as Ready=False, reason "
        "`InvalidSpec`, naming the field, and runs nothing until the spec is fixed.",
        "",
        "| field | rule |",
        "|---|---|",
        *(f"| `{field}` | {_cell(rule)} |" for field, rule in CROSS_FIELD_RULES),
        "",
        "## Spec",
        "",
        *_object_sections("spec", spec_schema()),
        "## Status",
        "",
        "Written by the operator (the status subresource); read-only for users.",
        "",
        *_object_sections("status", status_schema()),
    ]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def write_reference(root: Path) -> Path:
    """Write :data:`DOC_PATH` under the repository ``root``."""
    path = root / DOC_PATH
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent} is missing: is {root} the repository root?")
    path.write_text(render_reference())
    return path


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["--write"]:
        root = Path(sys.argv[2] if len(sys.argv) > 2 else ".")
        for written in (write_reference(root), write_readme(root)):
            sys.stdout.write(f"wrote {written}\n")
    else:
        sys.stdout.write(render_reference())
