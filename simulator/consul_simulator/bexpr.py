"""A useful subset of go-bexpr, the language of Consul's ``?filter=`` query parameter.

Supported: selectors as dotted paths (``Service.Meta.env``) or with a quoted index
(``ServiceMeta["my-key"]``); the operators ``==``, ``!=``, ``is empty``, ``is not empty``, ``in``,
``not in``, ``contains``, ``not contains``, ``matches``, ``not matches``; ``and``, ``or``, ``not``
and parentheses; values as "double-quoted" or `backtick` strings, numbers or bare words.

As in go-bexpr, a selector is checked against the shape of the rows being filtered when the
expression is compiled (an unknown field is an error), a path that crosses a list
(``Checks.Status``) matches when ANY element matches, and a missing map key reads as the empty
string. Not supported: JSON-pointer selectors (``/Service/Meta``) and bexpr's evaluator options.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "CATALOG_NODE",
    "HEALTH_CHECK",
    "HEALTH_SERVICE_ENTRY",
    "NODE",
    "SERVICE_NODE",
    "FilterError",
    "Schema",
    "compile_filter",
]

# Leaf kinds mirror the Go field types that bexpr distinguishes.
STRING = "string"
INT = "int"
BOOL = "bool"
STRINGS = "[]string"
STRING_MAP = "map[string]string"

Schema: TypeAlias = str | dict[str, "Schema"] | tuple[str, "Schema"]
"""A leaf kind, a struct (field -> schema), ("[]", element) or ("map", value)."""

_WEIGHTS: Schema = {"Passing": INT, "Warning": INT}
_SERVICE_ADDRESS: Schema = {"Address": STRING, "Port": INT}

NODE: Schema = {
    "ID": STRING,
    "Node": STRING,
    "Address": STRING,
    "Datacenter": STRING,
    "TaggedAddresses": STRING_MAP,
    "Meta": STRING_MAP,
}
CATALOG_NODE = NODE

SERVICE_NODE: Schema = {
    "ID": STRING,
    "Node": STRING,
    "Address": STRING,
    "Datacenter": STRING,
    "TaggedAddresses": STRING_MAP,
    "NodeMeta": STRING_MAP,
    "ServiceKind": STRING,
    "ServiceID": STRING,
    "ServiceName": STRING,
    "ServiceTags": STRINGS,
    "ServiceAddress": STRING,
    "ServiceTaggedAddresses": ("map", _SERVICE_ADDRESS),
    "ServiceWeights": _WEIGHTS,
    "ServiceMeta": STRING_MAP,
    "ServicePort": INT,
    "ServiceEnableTagOverride": BOOL,
}

HEALTH_CHECK: Schema = {
    "Node": STRING,
    "CheckID": STRING,
    "Name": STRING,
    "Status": STRING,
    "Notes": STRING,
    "Output": STRING,
    "ServiceID": STRING,
    "ServiceName": STRING,
    "ServiceTags": STRINGS,
    "Type": STRING,
}

HEALTH_SERVICE_ENTRY: Schema = {
    "Node": NODE,
    "Service": {
        "Kind": STRING,
        "ID": STRING,
        "Service": STRING,
        "Tags": STRINGS,
        "Address": STRING,
        "TaggedAddresses": ("map", _SERVICE_ADDRESS),
        "Meta": STRING_MAP,
        "Port": INT,
        "Weights": _WEIGHTS,
        "EnableTagOverride": BOOL,
    },
    "Checks": ("[]", HEALTH_CHECK),
}

Row: TypeAlias = Mapping[str, Any]
Predicate: TypeAlias = Callable[[Row], bool]


class FilterError(ValueError):
    """The expression does not parse or does not fit the rows; Consul 1.16 answers 500 with it."""

    def __str__(self) -> str:
        return f"Failed to create boolean expression evaluator: {self.args[0]}"


def compile_filter(expression: str, schema: Schema) -> Predicate:
    """Compile ``expression`` for rows shaped like ``schema`` (JSON objects, as Consul renders)."""
    parser = _Parser(_tokenize(expression), schema)
    predicate = parser.expression()
    if parser.peek() is not None:
        raise FilterError(f"unexpected {parser.peek()!r} at the end of the expression")
    return predicate


# --- lexer -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    \s*(?:
      (?P<dq>"(?:[^"\\]|\\.)*")
    | (?P<bq>`[^`]*`)
    | (?P<op>==|!=|\(|\)|\[|\]|\.)
    | (?P<num>-?\d+(?:\.\d+)?(?![A-Za-z_]))
    | (?P<word>[A-Za-z_][A-Za-z0-9_\-]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "str", "num", "word" or "op"
    text: str

    def __repr__(self) -> str:
        return self.text


def _tokenize(expression: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    end = len(expression.rstrip())
    while pos < end:
        m = _TOKEN.match(expression, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"invalid syntax at offset {pos}: {expression[pos : pos + 20]!r}")
        pos = m.end()
        if m.group("dq") is not None:
            try:
                text = json.loads(m.group("dq"))
            except ValueError as exc:
                raise FilterError(f"invalid string {m.group('dq')}") from exc
            tokens.append(_Token("str", text))
        elif m.group("bq") is not None:
            tokens.append(_Token("str", m.group("bq")[1:-1]))
        elif m.group("op") is not None:
            tokens.append(_Token("op", m.group("op")))
        elif m.group("num") is not None:
            tokens.append(_Token("num", m.group("num")))
        else:
            tokens.append(_Token("word", m.group("word")))
    return tokens


# --- parser ------------------------------------------------------------------------------------

_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "empty", "contains", "matches"})


@dataclass(frozen=True, slots=True)
class _Selector:
    path: tuple[str, ...]
    leaf: Schema  # what the path ends on, after crossing any lists

    def __str__(self) -> str:
        return ".".join(self.path)


class _Parser:
    def __init__(self, tokens: list[_Token], schema: Schema) -> None:
        self._tokens = tokens
        self._pos = 0
        self._schema = schema

    def peek(self, ahead: int = 0) -> _Token | None:
        i = self._pos + ahead
        return self._tokens[i] if i < len(self._tokens) else None

    def _next(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError("unexpected end of expression")
        self._pos += 1
        return token

    def _is_word(self, word: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token is not None and token.kind == "word" and token.text == word

    def _is_op(self, op: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text == op

    def _expect_op(self, op: str) -> None:
        token = self._next()
        if token.kind != "op" or token.text != op:
            raise FilterError(f"expected {op!r}, found {token.text!r}")

    def expression(self) -> Predicate:
        left = self._and()
        while self._is_word("or"):
            self._pos += 1
            right = self._and()
            left = _either(left, right)
        return left

    def _and(self) -> Predicate:
        left = self._unary()
        while self._is_word("and"):
            self._pos += 1
            right = self._unary()
            left = _both(left, right)
        return left

    def _unary(self) -> Predicate:
        if self._is_word("not"):
            self._pos += 1
            inner = self._unary()
            return lambda row: not inner(row)
        if self._is_op("("):
            self._pos += 1
            inner = self.expression()
            self._expect_op(")")
            return inner
        return self._match()

    def _match(self) -> Predicate:
        first = self._next()
        if first.kind == "op":
            raise FilterError(f"unexpected {first.text!r}")
        # "value in Selector" is the one form where the selector comes second.
        if self._is_word("in") or (self._is_word("not") and self._is_word("in", 1)):
            negate = self._is_word("not")
            self._pos += 2 if negate else 1
            selector = self._selector(self._next())
            return _membership(selector, schema=self._schema, raw=first.text, negate=negate)
        selector = self._selector(first)
        op = self._next()
        if op.kind == "op" and op.text in ("==", "!="):
            return _equality(
                selector, schema=self._schema, raw=self._value(), negate=op.text == "!="
            )
        if op.kind == "word" and op.text == "is":
            negate = self._is_word("not")
            if negate:
                self._pos += 1
            if not self._is_word("empty"):
                raise FilterError("expected 'empty' after 'is'")
            self._pos += 1
            return _emptiness(selector, schema=self._schema, negate=negate)
        negate = op.kind == "word" and op.text == "not"
        if negate:
            op = self._next()
        if op.kind == "word" and op.text == "contains":
            return _membership(selector, schema=self._schema, raw=self._value(), negate=negate)
        if op.kind == "word" and op.text == "matches":
            return _matching(selector, schema=self._schema, raw=self._value(), negate=negate)
        raise FilterError(f"expected an operator after {selector}, found {op.text!r}")

    def _value(self) -> str:
        token = self._next()
        if token.kind == "op" or (token.kind == "word" and token.text in _KEYWORDS):
            raise FilterError(f"expected a value, found {token.text!r}")
        return token.text

    def _selector(self, first: _Token) -> _Selector:
        if first.kind != "word" or first.text in _KEYWORDS:
            raise FilterError(f"expected a selector, found {first.text!r}")
        path = [first.text]
        while True:
            if self._is_op("."):
                self._pos += 1
                part = self._next()
                if part.kind not in ("word", "num"):
                    raise FilterError(f"invalid selector after {'.'.join(path)}")
                path.append(part.text)
            elif self._is_op("["):
                self._pos += 1
                part = self._next()
                if part.kind != "str":
                    raise FilterError("a selector index must be a quoted string")
                self._expect_op("]")
                path.append(part.text)
            else:
                break
        return _Selector(tuple(path), _leaf_schema(self._schema, path))


def _leaf_schema(schema: Schema, path: list[str]) -> Schema:
    current = schema
    i = 0
    while i < len(path):
        part = path[i]
        if isinstance(current, dict):
            if part not in current:
                raise FilterError(f'Selector "{".".join(path)}" is not valid')
            current = current[part]
        elif isinstance(current, tuple) and current[0] == "[]":
            current = current[1]
            continue  # a list is crossed without consuming a path element
        elif isinstance(current, tuple) or current == STRING_MAP:
            current = current[1] if isinstance(current, tuple) else STRING
        else:
            raise FilterError(f'Selector "{".".join(path)}" is not valid')
        i += 1
    return current


# --- evaluation --------------------------------------------------------------------------------


def _leaves(row: Row, *, schema: Schema, path: tuple[str, ...]) -> list[Any]:
    """All values the path reaches in ``row``: several when it crosses a list."""
    values: list[Any] = [row]
    current = schema
    i = 0
    while i < len(path):
        part = path[i]
        if isinstance(current, tuple) and current[0] == "[]":
            values = [item for v in values for item in (v or ())]
            current = current[1]
            continue
        if isinstance(current, dict):
            values = [v.get(part) if isinstance(v, Mapping) else None for v in values]
            current = current[part]
        elif current == STRING_MAP:
            values = [(v or {}).get(part, "") for v in values]
            current = STRING
        else:
            values = [(v or {}).get(part) for v in values]
            current = current[1] if isinstance(current, tuple) else current
        i += 1
    return values


def _zero(kind: Schema, value: Any) -> Any:
    if value is not None:
        return value
    return {STRING: "", INT: 0, BOOL: False}.get(kind) if isinstance(kind, str) else None


def _test_leaves(selector: _Selector, *, schema: Schema, test: Callable[[Any], bool]) -> Predicate:
    path, leaf = selector.path, selector.leaf
    return lambda row: any(test(_zero(leaf, v)) for v in _leaves(row, schema=schema, path=path))


def _equality(selector: _Selector, *, schema: Schema, raw: str, negate: bool) -> Predicate:
    leaf = selector.leaf
    expected: Any
    if leaf == STRING:
        expected = raw
    elif leaf == INT:
        try:
            expected = int(raw)
        except ValueError as exc:
            raise FilterError(f"{raw!r} is not an integer for {selector}") from exc
    elif leaf == BOOL:
        if raw not in ("true", "false"):
            raise FilterError(f"{raw!r} is not a boolean for {selector}")
        expected = raw == "true"
    else:
        raise FilterError(f'Selector "{selector}" is not valid for the == and != operators')
    return _test_leaves(selector, schema=schema, test=lambda v: (v == expected) != negate)


def _emptiness(selector: _Selector, *, schema: Schema, negate: bool) -> Predicate:
    if selector.leaf in (INT, BOOL):
        raise FilterError(f'Selector "{selector}" cannot be tested for emptiness')
    return _test_leaves(selector, schema=schema, test=lambda v: (len(v or ()) == 0) != negate)


def _membership(selector: _Selector, *, schema: Schema, raw: str, negate: bool) -> Predicate:
    if selector.leaf in (INT, BOOL):
        raise FilterError(f'Selector "{selector}" is not valid for the in and contains operators')
    # For lists it is membership, for maps key presence, for strings a substring test.
    return _test_leaves(selector, schema=schema, test=lambda v: (raw in (v or ())) != negate)


def _matching(selector: _Selector, *, schema: Schema, raw: str, negate: bool) -> Predicate:
    try:
        pattern = re.compile(raw)
    except re.error as exc:
        raise FilterError(f"invalid regular expression {raw!r}: {exc}") from exc
    if selector.leaf == STRING:
        return _test_leaves(
            selector, schema=schema, test=lambda v: (pattern.search(v) is not None) != negate
        )
    if selector.leaf == STRINGS:
        return _test_leaves(
            selector,
            schema=schema,
            test=lambda v: any(pattern.search(s) for s in (v or ())) != negate,
        )
    raise FilterError(f'Selector "{selector}" is not valid for the matches operator')


def _either(left: Predicate, right: Predicate) -> Predicate:
    return lambda row: left(row) or right(row)


def _both(left: Predicate, right: Predicate) -> Predicate:
    return lambda row: left(row) and right(row)
