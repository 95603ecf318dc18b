"""Checking a job's inputs against its recipe's input contract (the start node's fields)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conveyor.blocks.base import FileStore
from conveyor.blocks.io import MEDIA_KINDS, FieldKind, InputField
from conveyor.errors import ConveyorError, InputInvalidError

_SCALAR_CHECKS: dict[FieldKind, tuple[type | tuple[type, ...], str]] = {
    FieldKind.TEXT: (str, "a string"),
    FieldKind.NUMBER: ((int, float), "a number"),
    FieldKind.BOOLEAN: (bool, "true or false"),
}
MAX_MEDIA_ITEMS = 100


async def prepare_inputs(
    contract: Mapping[str, InputField], inputs: Mapping[str, Any], files: FileStore
) -> dict[str, Any]:
    """Checks every field and stores media; `InputInvalidError` (422) lists each problem by field.

    Missing required fields, unknown fields and mistyped values are all reported at once. Media values
    (URL, `data:` URI, base64, file id) are fetched or decoded into stored files, images checked by content.
    """
    problems: list[dict[str, str]] = []
    for name in inputs:
        if name not in contract:
            problems.append({"field": name, "message": f"unknown input {name!r} (expected: {_names(contract)})"})
    prepared: dict[str, Any] = {}
    for name, field in contract.items():
        if name not in inputs or inputs[name] is None:
            if field.required:
                problems.append({"field": name, "message": f"required input {name!r} is missing"})
            continue
        value = inputs[name]
        try:
            prepared[name] = await _prepare_value(field, value, files)
        except ConveyorError as exc:
            problems.append({"field": name, "message": exc.message})
        except (TypeError, ValueError) as exc:
            problems.append({"field": name, "message": str(exc)})
    if problems:
        summary = "; ".join(p["message"] for p in problems)
        raise InputInvalidError(f"inputs do not match the recipe: {summary}", details=problems)
    return prepared


def _names(contract: Mapping[str, InputField]) -> str:
    return ", ".join(contract) or "none"


async def _prepare_value(field: InputField, value: Any, files: FileStore) -> Any:
    kind = field.type
    if kind in _SCALAR_CHECKS:
        expected, label = _SCALAR_CHECKS[kind]
        if not isinstance(value, expected) or (kind == FieldKind.NUMBER and isinstance(value, bool)):
            raise TypeError(f"must be {label}, not {type(value).__name__}")
        if kind == FieldKind.TEXT and field.max_length is not None and len(str(value)) > field.max_length:
            raise ValueError(f"is {len(str(value))} characters; at most {field.max_length}")
        return value
    if kind == FieldKind.JSON:
        return value
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_MEDIA_ITEMS:
        raise ValueError(f"has {len(items)} items; at most {MAX_MEDIA_ITEMS}")
    return [await files.resolve_media(item, kind=MEDIA_KINDS[kind]) for item in items]
