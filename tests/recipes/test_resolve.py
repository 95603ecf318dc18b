"""Which recipe a job names, on SQLite and PostgreSQL: an id wins over a name, else the newest recipe of that
name the caller sees; deleted recipes and other users' private ones are not found."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.blocks import default_registry
from conveyor.errors import NotFoundError
from conveyor.recipes.service import RecipeService
from conveyor.store.db import Database, Op
from conveyor.store.recipes import create_recipe, delete_recipe, find_recipe

BODY = {
    "name": "r",
    "nodes": {
        "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text"}}}},
        "out": {"block": "recipe_output", "inputs": {"text": "start.text"}},
    },
}


async def resolved(recipes: RecipeService, ref: str, viewer: str | None = None) -> str:
    row, _graph = await recipes.resolve(ref, viewer=viewer)
    return str(row["id"])


async def test_an_id_wins_over_a_name_and_the_newest_name_wins(db: Database) -> None:
    recipes = RecipeService(db, default_registry(), max_nodes=50)
    await create_recipe(db, name="first", body=BODY, recipe_id="rcp-a")
    await create_recipe(db, name="rcp-a", body=BODY, recipe_id="rcp-b")  # named like the other's id
    await create_recipe(db, name="twin", body=BODY, recipe_id="rcp-old")
    await asyncio.sleep(0.005)  # a later `updated_at`
    await create_recipe(db, name="twin", body=BODY, recipe_id="rcp-new")
    assert await resolved(recipes, "rcp-a") == "rcp-a"
    assert await resolved(recipes, "first") == "rcp-a"
    assert await resolved(recipes, "twin") == "rcp-new"
    assert await resolved(recipes, "rcp-old") == "rcp-old"
    for ref, expected in (("rcp-a", "rcp-a"), ("first", "rcp-a"), ("twin", "rcp-new")):
        found = await find_recipe(db, ref)  # the recipe API's lookup agrees
        assert found is not None and found["id"] == expected
    await delete_recipe(db, "rcp-new")
    assert await resolved(recipes, "twin") == "rcp-old"
    with pytest.raises(NotFoundError):
        await recipes.resolve("nothing-by-that-name")


async def test_a_viewer_finds_shared_recipes_and_their_own_only(db: Database) -> None:
    recipes = RecipeService(db, default_registry(), max_nodes=50)
    await db.write(Op("INSERT INTO users (id, name, is_admin, disabled, created_at) VALUES ('u1', 'u1', 0, 0, 0)"))
    await create_recipe(db, name="mine", body=BODY, recipe_id="rcp-shared")
    await asyncio.sleep(0.005)
    await create_recipe(db, name="mine", body=BODY, recipe_id="rcp-u1", owner_id="u1")
    assert await resolved(recipes, "mine", viewer="u1") == "rcp-u1"
    assert await resolved(recipes, "mine", viewer="u2") == "rcp-shared"  # u1's newer one is not u2's to see
    assert await resolved(recipes, "rcp-shared", viewer="u2") == "rcp-shared"
    with pytest.raises(NotFoundError):
        await recipes.resolve("rcp-u1", viewer="u2")
