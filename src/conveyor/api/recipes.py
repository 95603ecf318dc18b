"""Native recipe routes: create (JSON or YAML), list, read, revise, delete, revisions, validate, Omnitool import
and export; blocks."""

from __future__ import annotations

import inspect
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from conveyor.api.auth import principal
from conveyor.api.deps import decode_cursor, iso, page, runtime
from conveyor.auth.principal import Principal
from conveyor.errors import ForbiddenError, PayloadTooLargeError
from conveyor.recipes.graph import RecipeGraph
from conveyor.recipes.model import parse_recipe_text
from conveyor.recipes.omnitool import export_omnitool, read_omnitool
from conveyor.runtime import Runtime
from conveyor.store import recipes as store
from conveyor.store.db import Row

router = APIRouter(tags=["recipes"])

RECIPE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


async def _read_document(request: Request, rt: Runtime) -> Any:
    body = await request.body()
    if len(body) > rt.settings.limits.max_body_bytes:
        raise PayloadTooLargeError(f"body is over {rt.settings.limits.max_body_bytes} bytes")
    return parse_recipe_text(body, request.headers.get("content-type", "application/json"))


def recipe_summary(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "revision": row["latest_revision"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def contract(graph: RecipeGraph) -> dict[str, Any]:
    """The recipe's inputs (start node fields) and outputs (output node ports), as clients see them."""
    output = graph.nodes[graph.output]
    return {
        "inputs": {name: field.model_dump(exclude_none=True) for name, field in graph.contract.items()},
        "outputs": {name: output.inputs[name].label() for name in output.sources},
    }


def viewer(me: Principal) -> str | None:
    """Whose recipes the caller sees: admins every recipe (None), others shared ones and their own."""
    return None if me.acts_as_admin else me.user_id


async def editable_recipe(rt: Runtime, me: Principal, recipe_id: str) -> Row:
    """A recipe the caller may change: `manage` on Workflow, and their own (admins: any, shared ones too)."""
    row = await rt.recipes.get(recipe_id, viewer=viewer(me))
    me.require_manage(row["id"])
    if not me.acts_as_admin and row["owner_id"] != me.user_id:
        raise ForbiddenError(f"recipe {recipe_id!r} is shared; only an admin may change it")
    return row


@router.post("/api/v1/recipes", status_code=201, summary="Create a recipe", openapi_extra=RECIPE_BODY)
async def create_recipe(
    request: Request, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> dict[str, Any]:
    me.require_manage()
    row = await rt.recipes.create(await _read_document(request, rt), owner_id=me.user_id)
    return recipe_summary(row)


@router.post("/api/v1/recipes/validate", summary="Validate a recipe without saving it", openapi_extra=RECIPE_BODY)
async def validate_recipe(
    request: Request, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> dict[str, Any]:
    graph = rt.recipes.validate(await _read_document(request, rt))
    return {"valid": True, "name": graph.doc.name, **contract(graph)}


@router.post("/api/v1/recipes/import", status_code=201, summary="Import an Omnitool recipe", openapi_extra=RECIPE_BODY)
async def import_recipe(
    request: Request,
    rt: Runtime = Depends(runtime),
    me: Principal = Depends(principal),
    allow_missing: bool = Query(False, description="Import unsupported nodes disabled instead of refusing."),
    allow_missing_camel: bool = Query(False, alias="allowMissing", description="Same as `allow_missing`."),
) -> dict[str, Any]:
    """Saves Omnitool recipe JSON as a native recipe (keeping its id); the answer lists the import's warnings."""
    me.require_manage()
    imported = read_omnitool(
        await _read_document(request, rt),
        rt.registry,
        allow_missing=allow_missing or allow_missing_camel,
        max_nodes=rt.settings.limits.max_recipe_nodes,
    )
    row = await rt.recipes.create(imported.doc, owner_id=me.user_id)
    return recipe_summary(row) | {"warnings": imported.warnings}


@router.get("/api/v1/recipes", summary="List recipes")
async def list_recipes(
    rt: Runtime = Depends(runtime),
    me: Principal = Depends(principal),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=200),
    name: str | None = Query(None, max_length=200),
) -> dict[str, Any]:
    rows = await store.read_recipes(rt.db, limit=limit, after=decode_cursor(cursor), name=name, viewer=viewer(me))
    total = await store.count_recipes(rt.db, name=name, viewer=viewer(me))
    return page([recipe_summary(row) for row in rows], rows, total, limit)


@router.get("/api/v1/recipes/{recipe_id}", summary="Read a recipe and its newest revision")
async def read_recipe(
    recipe_id: str, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> dict[str, Any]:
    row = await rt.recipes.get(recipe_id, viewer=viewer(me))
    graph = await rt.recipes.graph(row["id"], row["latest_revision"])
    return recipe_summary(row) | contract(graph) | {"recipe": await rt.recipes.body(row["id"], row["latest_revision"])}


@router.put("/api/v1/recipes/{recipe_id}", summary="Save a new revision", openapi_extra=RECIPE_BODY)
async def update_recipe(
    recipe_id: str, request: Request, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> dict[str, Any]:
    await editable_recipe(rt, me, recipe_id)
    row = await rt.recipes.update(recipe_id, await _read_document(request, rt))
    return recipe_summary(row)


@router.delete("/api/v1/recipes/{recipe_id}", status_code=204, summary="Delete a recipe (its jobs keep history)")
async def delete_recipe(recipe_id: str, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)) -> Response:
    row = await editable_recipe(rt, me, recipe_id)
    await rt.recipes.delete(row["id"])
    return Response(status_code=204)


@router.get("/api/v1/recipes/{recipe_id}/revisions", summary="List a recipe's revisions")
async def list_revisions(
    recipe_id: str, rt: Runtime = Depends(runtime), me: Principal = Depends(principal)
) -> dict[str, Any]:
    row = await rt.recipes.get(recipe_id, viewer=viewer(me))
    revisions = await store.read_revisions(rt.db, row["id"])
    items = [{"revision": r["revision"], "created_at": iso(r["created_at"])} for r in revisions]
    return {"items": items, "total": len(items), "next_cursor": None}


@router.get("/api/v1/recipes/{recipe_id}/export", summary="Export a recipe's newest revision")
async def export_recipe(
    recipe_id: str,
    rt: Runtime = Depends(runtime),
    me: Principal = Depends(principal),
    export_format: Literal["native", "omnitool"] = Query("native", alias="format"),
) -> dict[str, Any]:
    """The newest revision as a native document (with its `id`) or as Omnitool recipe JSON."""
    row = await rt.recipes.get(recipe_id, viewer=viewer(me))
    doc = {"id": row["id"], **await rt.recipes.body(row["id"], row["latest_revision"])}
    return export_omnitool(doc) if export_format == "omnitool" else doc


@router.get("/api/v1/blocks", summary="List the blocks recipes may use")
async def list_blocks(rt: Runtime = Depends(runtime), me: Principal = Depends(principal)) -> dict[str, Any]:
    items = []
    for name in rt.registry.names():
        block = rt.registry.get(name)
        assert block is not None
        items.append(
            {
                "name": name,
                "description": inspect.cleandoc(type(block).__doc__ or ""),
                "config": block.Config.model_json_schema(),
            }
        )
    return {"items": items, "total": len(items), "next_cursor": None}
