"""Recipe rows and revisions under concurrent writers, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.errors import ConflictError
from conveyor.store import recipes as store
from conveyor.store.db import Database

BODY = {"name": "r", "nodes": {}}


async def _staggered(ticks: int) -> None:
    """Yields to the loop `ticks` times, so writers land in different group commits (and transactions)."""
    for _ in range(ticks):
        await asyncio.sleep(0)


async def test_concurrent_revisions_each_get_their_own_number(db: Database) -> None:
    await store.create_recipe(db, name="r", body=BODY, recipe_id="rev")

    async def revise(i: int) -> int:
        await _staggered(i % 7)
        row = await store.add_revision(db, "rev", name=f"r{i}", body=BODY | {"description": str(i)}, description="")
        assert row is not None and row["id"] == "rev"
        return int(row["latest_revision"])

    numbers = await asyncio.gather(*(revise(i) for i in range(30)))
    assert sorted(numbers) == list(range(2, 32))
    revisions = await store.read_revisions(db, "rev")
    assert [r["revision"] for r in revisions] == list(range(31, 0, -1))
    recipe = await store.read_recipe(db, "rev")
    assert recipe is not None and recipe["latest_revision"] == 31


async def test_revision_row_matches_its_body(db: Database) -> None:
    await store.create_recipe(db, name="r", body=BODY, recipe_id="match")
    row = await store.add_revision(db, "match", name="two", body=BODY | {"description": "2"}, description="d")
    assert row is not None and row["latest_revision"] == 2 and row["name"] == "two" and row["description"] == "d"
    saved = await store.read_revision(db, "match", 2)
    assert saved is not None and '"description":"2"' in saved["body"]


async def test_revising_a_missing_or_deleted_recipe_saves_nothing(db: Database) -> None:
    assert await store.add_revision(db, "nope", name="x", body=BODY, description="") is None
    await store.create_recipe(db, name="r", body=BODY, recipe_id="gone")
    assert await store.delete_recipe(db, "gone")
    assert await store.add_revision(db, "gone", name="x", body=BODY, description="") is None
    assert [r["revision"] for r in await store.read_revisions(db, "gone")] == [1]


async def test_concurrent_creates_of_one_id_leave_one_recipe(db: Database) -> None:
    async def create(i: int) -> str:
        await _staggered(i % 5)
        row = await store.create_recipe(db, name=f"r{i}", body=BODY, recipe_id="same")
        return str(row["id"])

    results = await asyncio.gather(*(create(i) for i in range(20)), return_exceptions=True)
    assert results.count("same") == 1, results
    conflicts = [r for r in results if isinstance(r, ConflictError)]
    assert len(conflicts) == 19, results
    assert all("same" in c.message for c in conflicts)
    assert [r["revision"] for r in await store.read_revisions(db, "same")] == [1]


async def test_create_of_a_taken_id_is_a_conflict(db: Database) -> None:
    await store.create_recipe(db, name="r", body=BODY, recipe_id="taken")
    with pytest.raises(ConflictError):
        await store.create_recipe(db, name="r", body=BODY, recipe_id="taken")
