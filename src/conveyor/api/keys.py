"""API key routes: create (the key and its webhook secret shown this once), list, revoke, rotate the secret."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from conveyor.api.auth import principal
from conveyor.api.deps import iso, json_response, path_id, runtime
from conveyor.auth.keys import MAX_LIMIT
from conveyor.auth.principal import Principal
from conveyor.errors import ForbiddenError, ValidationError
from conveyor.runtime import Runtime
from conveyor.store.db import Row

router = APIRouter(tags=["keys"])


class KeyCreate(BaseModel):
    """A key to make: its kind, a name, the recipe of a recipe key, and optional own limits."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: Literal["personal", "org", "recipe"]
    name: str = Field(min_length=1, max_length=200)
    recipe: str | None = Field(None, min_length=1, max_length=200, description="Recipe id or name (recipe keys).")
    rate_limit_per_min: int | None = Field(None, alias="rateLimitPerMin", ge=1, le=MAX_LIMIT)
    max_concurrent_jobs: int | None = Field(None, alias="maxConcurrentJobs", ge=1, le=MAX_LIMIT)


def key_view(row: Row) -> dict[str, Any]:
    """A key's public fields; never the key, its hash or its webhook secret."""
    return {
        "id": row["id"],
        "kind": row["kind"],
        "name": row["name"],
        "prefix": row["prefix"],
        "userId": row["user_id"],
        "orgId": row["org_id"],
        "recipe": row["recipe_id"],
        "rateLimitPerMin": row["rate_limit_per_min"],
        "maxConcurrentJobs": row["max_concurrent_jobs"],
        "createdAt": iso(row["created_at"]),
        "lastUsedAt": iso(row["last_used_at"]),
        "revokedAt": iso(row["revoked_at"]),
    }


def _manager(me: Principal) -> Principal:
    if not me.unlimited_manager:
        raise ForbiddenError("managing API keys needs a JWT or personal key with `manage all` (no recipe limits)")
    return me


def _owner_filter(me: Principal) -> str | None:
    """Whose keys the caller manages: their own, or everyone's for an admin acting as one."""
    return None if me.acts_as_admin else me.user_id


@router.post("/api/v1/keys", status_code=201, summary="Create an API key (the key and secret are shown only here)")
async def create_key(body: KeyCreate, me: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> Response:
    _manager(me)
    owner = await rt.auth.get_user(me.user_id)
    recipe_id = None
    if (body.kind == "recipe") != (body.recipe is not None):
        raise ValidationError("a recipe key needs a recipe, and only a recipe key takes one")
    if body.recipe is not None:
        recipe_id = (await rt.recipes.get(body.recipe, viewer=_owner_filter(me)))["id"]
    created = await rt.auth.keys.create(
        owner,
        body.kind,
        body.name,
        recipe_id=recipe_id,
        rate_limit_per_min=body.rate_limit_per_min,
        max_concurrent_jobs=body.max_concurrent_jobs,
    )
    return json_response({**key_view(created.row), "key": created.key, "webhookSecret": created.webhook_secret}, 201)


@router.get("/api/v1/keys", summary="List API keys (the caller's; an admin's manage-all token: everyone's)")
async def list_keys(me: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    rows = await rt.auth.keys.list_keys(_owner_filter(_manager(me)))
    return {"items": [key_view(row) for row in rows], "total": len(rows)}


@router.delete("/api/v1/keys/{key_id}", status_code=204, summary="Revoke an API key")
async def revoke_key(key_id: str, me: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> Response:
    await rt.auth.keys.revoke(path_id("key", key_id), user_id=_owner_filter(_manager(me)))
    return Response(status_code=204)


@router.post("/api/v1/keys/{key_id}/rotate-webhook-secret", summary="Rotate a key's webhook signing secret")
async def rotate_webhook_secret(
    key_id: str, me: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> dict[str, Any]:
    secret, until = await rt.auth.keys.rotate_webhook_secret(
        path_id("key", key_id),
        user_id=_owner_filter(_manager(me)),
        grace_s=rt.settings.keys.webhook_secret_grace_s,
    )
    return {"webhookSecret": secret, "previousValidUntil": iso(until)}
