"""Which JSON schemas become llama.cpp grammars: `grammar_schema`, an allow-list, and `pattern_is_safe`.

llama.cpp's JSON-schema-to-grammar conversion (Python) and its grammar parser (C++) trust their input: a quote in
an enum string, a NUL, a wide character range or an odd regex ends the process or loops for ever while the model's
lock is held. A schema comes from any recipe author, so `llm.local` builds a grammar only from the copy this module
returns; anything else is generated unconstrained and still validated (and repaired) against the whole schema.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("conveyor.llm")

# Character classes llama.cpp's regex-to-grammar converter gets wrong, written out (same meaning in JSON Schema).
_PORTABLE_CLASSES = {"\\d": "[0-9]", "\\w": "[A-Za-z0-9_]", "\\s": "[ \t\n\r]"}  # the last holds real tab etc.

# The allow-list's bounds (see the module's docstring for why there is one).
_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "$schema"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_COUNTS = frozenset({"minItems", "maxItems", "minLength", "maxLength"})
_MAX_GRAMMAR_COUNT = 200  # larger bounds become deeply nested grammar rules: left to validation
_MAX_GRAMMAR_DEPTH = 12
_MAX_GRAMMAR_NODES = 2000
_MAX_NAME_CHARS = 100
_MAX_CONSTANT_CHARS = 200
_MAX_ENUM_VALUES = 500
_MAX_BRANCHES = 50
_MAX_PATTERN_CHARS = 200
_MAX_PATTERN_REPEAT = 100
_MAX_PATTERN_GROUPS = 8
_DEF_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PATTERN_LITERALS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-:_ ,/")


class _NoGrammar(Exception):
    """The schema is outside the allow-list: no grammar for it."""


def grammar_schema(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema llama.cpp may turn into a grammar, or None when it must not see it (see `_ANNOTATIONS` above).

    Annotations, numeric bounds and large counts are left out (validation enforces them), a `pattern` outside the
    small regex language of `pattern_is_safe` is left out alone; any other keyword means no grammar at all."""
    if not isinstance(schema, Mapping):
        return None
    try:
        return _Shaper(_portable_patterns(schema)).root()
    except _NoGrammar as exc:
        log.info("llm: no grammar for this schema (%s); validating the answer only", exc)
        return None


class _Shaper:
    """One pass over a schema for `grammar_schema`: the allowed copy, counting nodes and following `$ref`s."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self.nodes = 0
        self.defs: dict[str, Any] = {}

    def root(self) -> dict[str, Any]:
        defs = self.schema.get("$defs", {})
        if not isinstance(defs, Mapping) or not all(isinstance(n, str) and _DEF_NAME.fullmatch(n) for n in defs):
            raise _NoGrammar("$defs must map plain names to schemas")
        self.defs = dict(defs)
        _check_acyclic(self.defs)
        shaped = self.shape({k: v for k, v in self.schema.items() if k != "$defs"}, 0)
        if defs:
            shaped["$defs"] = {name: self.shape(item, 1) for name, item in defs.items()}
        return shaped

    def shape(self, schema: Any, depth: int) -> dict[str, Any]:
        self.nodes += 1
        if self.nodes > _MAX_GRAMMAR_NODES or depth > _MAX_GRAMMAR_DEPTH:
            raise _NoGrammar("the schema is too large or too deeply nested")
        if not isinstance(schema, Mapping):
            raise _NoGrammar("a subschema is not an object")
        if "$ref" in schema:
            if set(schema) - _ANNOTATIONS != {"$ref"} or _ref_name(schema["$ref"]) not in self.defs:
                raise _NoGrammar("only a plain $ref to #/$defs/<name> is supported")
            return {"$ref": schema["$ref"]}
        shaped: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _ANNOTATIONS or key in ("minimum", "maximum"):
                _check_number(value, key)
                continue
            shaped_value = self.keyword(key, value, depth)
            if shaped_value is not _DROP:
                shaped[key] = shaped_value
        return shaped

    def keyword(self, key: str, value: Any, depth: int) -> Any:
        if key == "type":
            types = value if isinstance(value, list) else [value]
            if not types or not all(isinstance(t, str) and t in _TYPES for t in types):
                raise _NoGrammar(f"unsupported type {str(value)[:50]!r}")
            return value
        if key == "properties":
            if not isinstance(value, Mapping):
                raise _NoGrammar("properties is not an object")
            return {_safe_text(name, _MAX_NAME_CHARS): self.shape(item, depth + 1) for name, item in value.items()}
        if key == "required":
            if not isinstance(value, list):
                raise _NoGrammar("required is not a list")
            return [_safe_text(name, _MAX_NAME_CHARS) for name in value]
        if key == "additionalProperties":
            return value if isinstance(value, bool) else self.shape(value, depth + 1)
        if key == "items":
            return self.shape(value, depth + 1)
        if key in ("anyOf", "oneOf"):
            if not isinstance(value, list) or not 0 < len(value) <= _MAX_BRANCHES:
                raise _NoGrammar(f"{key} must be a short non-empty list")
            return [self.shape(item, depth + 1) for item in value]
        return _leaf_keyword(key, value)


def _leaf_keyword(key: str, value: Any) -> Any:
    """`_Shaper.keyword` for keywords without subschemas."""
    if key == "enum":
        if not isinstance(value, list) or not 0 < len(value) <= _MAX_ENUM_VALUES:
            raise _NoGrammar("enum must be a non-empty list of at most 500 values")
        return [_safe_constant(item) for item in value]
    if key == "const":
        return _safe_constant(value)
    if key in _COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _NoGrammar(f"{key} is not a count")
        return value if value <= _MAX_GRAMMAR_COUNT else _DROP
    if key == "pattern":
        return value if isinstance(value, str) and pattern_is_safe(value) else _DROP
    raise _NoGrammar(f"keyword {key[:50]!r} is not supported by grammars")


_DROP = object()  # a keyword left out of the grammar (the answer is still validated against it)


def _ref_name(ref: Any) -> str | None:
    return ref[len("#/$defs/") :] if isinstance(ref, str) and ref.startswith("#/$defs/") else None


def _check_acyclic(defs: Mapping[str, Any]) -> None:
    """Refuses `$defs` that refer to themselves (directly or not): the converter would follow them for ever."""
    uses = {name: {n for n in _refs_in(item) if n in defs} for name, item in defs.items()}
    done: set[str] = set()
    for start in uses:
        seen: set[str] = set()
        stack = [start]
        for _ in range(_MAX_GRAMMAR_NODES):  # bounded: each def is expanded at most once per start
            if not stack:
                break
            name = stack.pop()
            for used in uses[name]:
                if used == start:
                    raise _NoGrammar("recursive $defs are not supported")
                if used not in seen and used not in done:
                    seen.add(used)
                    stack.append(used)
        done.add(start)


def _refs_in(value: Any) -> set[str]:
    found: set[str] = set()
    stack, steps = [value], 0
    while stack and steps < _MAX_GRAMMAR_NODES * 10:
        steps += 1
        item = stack.pop()
        if isinstance(item, Mapping):
            name = _ref_name(item.get("$ref"))
            if name is not None:
                found.add(name)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    if stack:
        raise _NoGrammar("the schema is too large")
    return found


def _safe_text(value: Any, limit: int) -> str:
    """Printable ASCII without quote or backslash: what llama.cpp's grammar literals handle."""
    if (
        not isinstance(value, str)
        or len(value) > limit
        or not all(" " <= char <= "~" and char not in '"\\' for char in value)
    ):
        raise _NoGrammar("a name or constant holds characters grammars cannot take")
    return value


def _safe_constant(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _safe_text(value, _MAX_CONSTANT_CHARS)
    _check_number(value, "enum")
    return value


def _check_number(value: Any, key: str) -> None:
    if key not in ("minimum", "maximum", "enum"):
        return  # an annotation: anything goes, it is left out
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > 1e15:
        raise _NoGrammar(f"{key} is not a plain number")


def pattern_is_safe(pattern: str) -> bool:
    """Whether `pattern` is in the small regex language grammars get: `^...$` around literal letters, digits and
    `-:_ ,/`, `.`, classes like `[0-9]`/`[A-Za-z_]`, groups with `|`, and `? * + {n} {n,m}` (n <= m <= 100)."""
    if len(pattern) > _MAX_PATTERN_CHARS or not pattern.startswith("^") or not pattern.endswith("$"):
        return False
    parser = _PatternParser(pattern[1:-1])
    try:
        parser.alternation(0)
    except _NoGrammar:
        return False
    return parser.at == len(parser.text)


class _PatternParser:
    """A recursive-descent check of `pattern_is_safe`'s language; raises `_NoGrammar` at the first thing outside it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def alternation(self, depth: int) -> None:
        if depth > _MAX_PATTERN_GROUPS:
            raise _NoGrammar("groups nested too deep")
        self.sequence(depth)
        while self.peek() == "|":
            self.at += 1
            self.sequence(depth)

    def sequence(self, depth: int) -> None:
        items = 0
        while self.peek() not in ("", "|", ")"):
            self.atom(depth)
            self.quantifier()
            items += 1
        if items == 0:
            raise _NoGrammar("an empty alternative")

    def atom(self, depth: int) -> None:
        char = self.peek()
        self.at += 1
        if char in _PATTERN_LITERALS or char == ".":
            return
        if char == "(":
            self.alternation(depth + 1)
            if self.peek() != ")":
                raise _NoGrammar("an unclosed group")
            self.at += 1
            return
        if char == "[":
            self.char_class()
            return
        raise _NoGrammar(f"{char!r} is not allowed")

    def char_class(self) -> None:
        members = 0
        while self.peek() != "]":
            first = self.peek()
            if not (first.isascii() and (first.isalnum() or first == "_")):
                raise _NoGrammar("a class holds something other than letters, digits and ranges")
            self.at += 1
            members += 1
            if self.peek() == "-":
                self.at += 1
                last = self.peek()
                if not _same_kind(first, last) or last < first:
                    raise _NoGrammar("a bad class range")
                self.at += 1
        if members == 0:
            raise _NoGrammar("an empty class")
        self.at += 1

    def quantifier(self) -> None:
        char = self.peek()
        if char in ("?", "*", "+"):
            self.at += 1
        elif char == "{":
            end = self.text.find("}", self.at)
            bounds = self.text[self.at + 1 : end].split(",") if end > 0 else []
            if not 1 <= len(bounds) <= 2 or not all(b.isdigit() and len(b) <= 3 for b in bounds):
                raise _NoGrammar("a bad repetition")
            low, high = int(bounds[0]), int(bounds[-1])
            if low > high or high > _MAX_PATTERN_REPEAT or high == 0:
                raise _NoGrammar("a repetition out of bounds")
            self.at = end + 1


def _same_kind(first: str, last: str) -> bool:
    return any(
        first in kind and last in kind for kind in (string.digits, string.ascii_lowercase, string.ascii_uppercase)
    )


def _portable_patterns(value: Any, depth: int = 0) -> Any:
    """The schema with `\\d`, `\\w` and `\\s` written out in patterns (before the allow-list looks at them)."""
    if depth > _MAX_GRAMMAR_DEPTH * 3:
        raise _NoGrammar("the schema is too deeply nested")
    if isinstance(value, list):
        return [_portable_patterns(item, depth + 1) for item in value]
    if not isinstance(value, Mapping):
        return value
    shaped: dict[str, Any] = {}
    for key, item in value.items():
        if key == "pattern" and isinstance(item, str):
            for escape, written in _PORTABLE_CLASSES.items():
                item = item.replace(escape, written)
            shaped[key] = item
        else:
            shaped[key] = _portable_patterns(item, depth + 1)
    return shaped
