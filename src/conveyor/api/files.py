"""File routes: multipart upload, streamed download."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, UploadFile
from fastapi.responses import StreamingResponse

from conveyor.api.auth import principal
from conveyor.api.deps import path_id, runtime
from conveyor.auth.principal import Principal
from conveyor.errors import BadRequestError
from conveyor.runtime import Runtime

router = APIRouter(tags=["files"])

UPLOAD_CHUNK = 256 * 1024
MAX_FILES_PER_UPLOAD = 20


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk


INLINE_PREFIXES = ("image/", "audio/", "video/")
INLINE_TYPES = frozenset({"text/plain", "application/json", "application/pdf"})
NEVER_INLINE = frozenset({"image/svg+xml"})  # SVG can carry scripts


def is_inline_safe(mime: str) -> bool:
    """Whether a browser may show this type inline without it acting as a page (else it downloads)."""
    base = mime.split(";", 1)[0].strip().lower()
    return base not in NEVER_INLINE and (base in INLINE_TYPES or base.startswith(INLINE_PREFIXES))


def content_disposition(disposition: str, name: str) -> str:
    """A `Content-Disposition` value for any file name (RFC 6266): headers are latin-1, names are not.

    `filename` is an ASCII stand-in for old clients; `filename*` (RFC 5987) carries the name as UTF-8.
    """
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name) or "file"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.post("/api/v1/files", status_code=201, summary="Upload files (multipart, field `file`)")
async def upload_files(
    file: list[UploadFile], rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> dict[str, Any]:
    if len(file) > MAX_FILES_PER_UPLOAD:
        raise BadRequestError(f"at most {MAX_FILES_PER_UPLOAD} files per upload")
    files = rt.files.bind(user_id=me.user_id, job_id=None)
    items = []
    for upload in file:
        try:
            ref = await files.save_stream(
                _chunks(upload), name=upload.filename or "file", mime=upload.content_type or ""
            )
        finally:
            await upload.close()
        items.append(dict(ref))
    return {"items": items, "total": len(items), "next_cursor": None}


@router.get("/api/v1/files/{fid}", summary="Download a file (streamed)")
async def download_file(
    fid: str, rt: Runtime = Depends(runtime), me: Principal = Depends(principal), download: bool = Query(False)
) -> StreamingResponse:
    files = rt.files.bind(user_id=me.user_id, job_id=None)  # another user's file is not found (404)
    ref = await files.describe(path_id("file", fid))
    disposition = "inline" if not download and is_inline_safe(ref["mime"]) else "attachment"
    return StreamingResponse(
        files.open(ref["fid"]),
        media_type=ref["mime"],
        headers={
            "Content-Length": str(ref["size"]),
            "Content-Disposition": content_disposition(disposition, ref["name"]),
            "X-Content-Type-Options": "nosniff",
            # A stored file never runs as a page of this origin, whatever its type (no stored XSS via uploads).
            "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; media-src 'self'",
        },
    )
