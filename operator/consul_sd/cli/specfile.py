"""ConsulDiscovery YAML files as the CLI reads them: every document, with its file and index.

``discover --spec`` takes one spec out of a file (a bare spec, one CR, or the ConsulDiscovery of
a kubectl-style multi-document file, ``--name`` choosing among several); ``validate`` checks every
ConsulDiscovery in it. A YAML syntax error is one line naming the file, line and column, never
PyYAML's multi-line dump. Reading only: what a spec means is :mod:`consul_sd.api.spec`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from consul_sd.api.names import KIND
from consul_sd.cli.arguments import UsageError

_MERGE_TAG = "tag:yaml.org,2002:merge"
# A Prometheus configuration or a file of ConsulDiscovery objects: far above any real one.
MAX_YAML_BYTES = 64 * 1024 * 1024


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's when installed: 10 MB in seconds, not minutes) that
    refuses a key twice in one mapping, as Prometheus and kubectl do (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, *, deep: bool = False) -> dict[Any, Any]:
        first: dict[tuple[str, str], yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # merged keys may be overridden, as in Prometheus
            mark = first.setdefault((key_node.tag, key_node.value), key_node.start_mark)
            if mark is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    problem=f"key {key_node.value!r} given twice (first at line {mark.line + 1})",
                    problem_mark=key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def read_documents(path: Path, *, flag: str = "", keep_empty: bool = False) -> list[Any]:
    """Every document of ``path`` (``keep_empty``: empty ones as None, so indexes count every
    document); :class:`UsageError` naming the file if unreadable."""
    where = f"{flag} {path}".strip()
    text = read_text(path, where=where)
    try:
        return [doc for doc in yaml.load_all(text, Loader=_Loader) if keep_empty or doc is not None]
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: {_yaml_problem(exc)}") from None


def iter_documents(path: Path) -> Iterator[tuple[int, Any]]:
    """Every document of ``path`` (empty ones as None) with its index, read one at a time so
    that a YAML error in one leaves the ones before it to the caller; :class:`UsageError`
    names the file, and the document a YAML error breaks (``FILE[N]``)."""
    loader, index = yaml.load_all(read_text(path, where=str(path)), Loader=_Loader), 0
    while True:  # ends with the stream: each round takes one document or raises
        try:
            document = next(loader)
        except StopIteration:
            return
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}[{index}]: {_yaml_problem(exc)}") from None
        yield index, document
        index += 1


def read_text(path: Path, *, where: str, max_bytes: int = MAX_YAML_BYTES) -> str:
    """The UTF-8 text of ``path``, read at most ``max_bytes`` (a device such as /dev/zero, or
    the wrong file, must not fill the memory); :class:`UsageError` starting ``where`` if not."""
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            size = f"{max_bytes // (1024 * 1024)} MiB"
            raise UsageError(f"{where}: larger than {size}; is this the right file?")
        return data.decode()
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        # The error's own text quotes the bytes, which may be a credential.
        raise UsageError(f"{where}: not UTF-8 text (byte {exc.start})") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for PyYAML's multi-line error: where, and what."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        position = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        return f"invalid YAML at {position}{exc.problem}"
    return f"invalid YAML ({str(exc).splitlines()[0]})"


def spec_from_file(path: Path, *, name: str | None) -> dict[str, Any]:
    """The spec in ``path``: a bare spec, one CR, or the ConsulDiscovery of a multi-document
    file (examples/ keep a Secret or a Prometheus beside it); ``name`` picks one of several."""
    documents = read_documents(path, flag="--spec")
    if not all(isinstance(doc, dict) for doc in documents):
        raise UsageError(f"--spec {path}: a document is not a YAML mapping")
    if not documents:
        raise UsageError(f"--spec {path}: the file holds no document")
    if len(documents) == 1 and "kind" not in documents[0] and name is None:
        return _spec_of(path, documents[0])
    found = [doc for doc in documents if doc.get("kind") == KIND]
    names = [_name_of(path, doc) for doc in found]
    if name is not None:
        found = [doc for doc, doc_name in zip(found, names, strict=True) if doc_name == name]
        if not found:
            raise UsageError(
                f"--spec {path}: no ConsulDiscovery named {name!r} (found: {names or 'none'})"
            )
    if not found:
        raise UsageError(f"--spec {path}: no ConsulDiscovery in the file")
    if len(found) > 1:
        raise UsageError(
            f"--spec {path}: {len(found)} ConsulDiscovery objects ({', '.join(names)}): "
            "choose one with --name"
        )
    return _spec_of(path, found[0])


def _name_of(path: Path, document: dict[str, Any]) -> str:
    metadata = document.get("metadata")
    if metadata is None:
        return ""
    if not isinstance(metadata, dict):
        raise UsageError(
            f"--spec {path}: metadata must be a mapping (key: value), not {type(metadata).__name__}"
        )
    return str(metadata.get("name", ""))


def _spec_of(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    data = document.get("spec", document) if "kind" in document or "spec" in document else document
    if not isinstance(data, dict):
        raise UsageError(f"--spec {path}: spec is not a mapping")
    return data


def friendly_problem(problem: str) -> str:
    """A spec problem as users read it: the address rule in words rather than as a pattern."""
    if problem.startswith("spec.consul.server:") and "does not match" in problem:
        value = problem.split(":", 1)[1].split(" does not match", maxsplit=1)[0].strip()
        return (
            f"spec.consul.server: {value} is not host:port "
            "(the scheme goes in spec.consul.scheme, a path in pathPrefix)"
        )
    if problem.startswith("spec.consul.pathPrefix:") and "does not match" in problem:
        # A query (?token=...) may hold a credential: said without the value.
        return "spec.consul.pathPrefix: not a path like /consul (no query, fragment or space)"
    return problem
