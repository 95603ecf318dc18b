"""What routes share: the runtime, pagination cursors, timestamps."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request, Response

from conveyor.errors import BadRequestError, NotFoundError
from conveyor.runtime import Runtime

MAX_BIGINT = 2**63  # ids and times are stored as signed 64-bit integers; larger values break the queries
MAX_CURSOR_ID = 200


async def runtime(request: Request) -> Runtime:
    """The process's runtime. Async on purpose: FastAPI runs a plain `def` dependency in a thread per request."""
    rt: Runtime = request.app.state.runtime
    return rt


def json_response(data: Any, status: int = 200) -> Response:
    """A JSON response serialised by orjson (several times faster than the standard library's json)."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as an ISO 8601 UTC timestamp."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_cursor(created_at: int, ident: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at}:{ident}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[int, str] | None:
    """The (created_at, id) a list continues after; a bad cursor is a 400."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, ident = raw.split(":", 1)
        at = int(created)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequestError("cursor is not one this server gave out") from None
    if not 0 <= at < MAX_BIGINT or len(ident) > MAX_CURSOR_ID or "\x00" in ident:
        raise BadRequestError("cursor is not one this server gave out")
    return at, ident


def path_id(kind: str, ident: str) -> str:
    """An id from a URL path, checked before it reaches the database: one holding NUL names nothing (404).

    PostgreSQL text cannot hold NUL, so asking it would fail with a 500 rather than find nothing.
    """
    if "\x00" in ident:
        raise NotFoundError(kind, ident)
    return ident


def parse_event_id(raw: str | None) -> int:
    """The `Last-Event-ID` a stream resumes after (0: from the start); anything but an event id is a 400."""
    if not raw:
        return 0
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or int(raw) >= MAX_BIGINT:
        raise BadRequestError("Last-Event-ID must be an event id this server sent")
    return int(raw)


def page(items: list[dict[str, Any]], rows: list[Any], total: int, limit: int) -> dict[str, Any]:
    """The shared list shape: `{"items", "total", "next_cursor"}`."""
    next_cursor = None
    if len(rows) == limit and rows:
        last = rows[-1]
        next_cursor = encode_cursor(last["created_at"], last["id"])
    return {"items": items, "total": total, "next_cursor": next_cursor}
