"""File routes: multipart upload, streamed download."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, UploadFile
from fastapi.responses import StreamingResponse

from conveyor.api.deps import runtime
from conveyor.errors import BadRequestError
from conveyor.runtime import Runtime

router = APIRouter(tags=["files"])

UPLOAD_CHUNK = 256 * 1024
MAX_FILES_PER_UPLOAD = 20


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk


@router.post("/api/v1/files", status_code=201, summary="Upload files (multipart, field `file`)")
async def upload_files(file: list[UploadFile], rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    if len(file) > MAX_FILES_PER_UPLOAD:
        raise BadRequestError(f"at most {MAX_FILES_PER_UPLOAD} files per upload")
    items = []
    for upload in file:
        try:
            ref = await rt.files.save_stream(
                _chunks(upload), name=upload.filename or "file", mime=upload.content_type or ""
            )
        finally:
            await upload.close()
        items.append(dict(ref))
    return {"items": items, "total": len(items), "next_cursor": None}


@router.get("/api/v1/files/{fid}", summary="Download a file (streamed)")
async def download_file(fid: str, rt: Runtime = Depends(runtime), download: bool = Query(False)) -> StreamingResponse:
    ref = await rt.files.describe(fid)
    disposition = "attachment" if download else "inline"
    safe_name = ref["name"].replace('"', "").replace("\\", "")
    return StreamingResponse(
        rt.files.open(ref["fid"]),
        media_type=ref["mime"],
        headers={
            "Content-Length": str(ref["size"]),
            "Content-Disposition": f'{disposition}; filename="{safe_name}"',
            "X-Content-Type-Options": "nosniff",
        },
    )
