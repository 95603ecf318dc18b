"""Encoding node outputs and results for the store: large values become file references.

A value whose JSON is over `inline_max` bytes is written to the file store and replaced by
`{"$spilled": "<fid>"}`, so the database never holds whole files; `rehydrate` reverses it on resume.
"""

from __future__ import annotations

from typing import Any

import orjson

from conveyor.blocks.base import FileStore

SPILLED = "$spilled"


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


async def encode(values: dict[str, Any], files: FileStore, inline_max: int) -> bytes:
    """The JSON of a dict of values, each value larger than `inline_max` spilled to a file."""
    encoded = dumps(values)
    if len(encoded) <= inline_max:
        return encoded
    spilled: dict[str, Any] = {}
    for key, value in values.items():
        data = dumps(value)
        if len(data) > inline_max:
            ref = await files.save_bytes(data, name=f"{key}.json", mime="application/json")
            spilled[key] = {SPILLED: ref["fid"]}
        else:
            spilled[key] = value
    return dumps(spilled)


async def rehydrate(values: dict[str, Any], files: FileStore) -> dict[str, Any]:
    """Reads spilled values back from the file store."""
    restored: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and len(value) == 1 and SPILLED in value:
            restored[key] = orjson.loads(await files.read_bytes(value[SPILLED]))
        else:
            restored[key] = value
    return restored
