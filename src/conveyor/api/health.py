"""`GET /api/v1/health`: liveness, with the version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from conveyor import __version__

router = APIRouter(tags=["health"])


@router.get("/api/v1/health", summary="Liveness and version")
async def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}
