"""The database layer on SQLite and PostgreSQL: group commit, savepoint isolation, both placeholder styles."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from conveyor.store.db import Database, Op
from conveyor.store.schema import users

INSERT_USER = "INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3)"


async def test_writes_in_one_tick_share_a_commit_and_fail_alone(db: Database) -> None:
    results = await asyncio.gather(
        db.write(Op(INSERT_USER, ("u1", "one", 1))),
        db.write(Op(INSERT_USER, ("u2", "one", 2))),  # duplicate name: this caller alone fails
        db.write(Op(INSERT_USER, ("u3", "three", 3)), Op(INSERT_USER, ("u4", "four", 4))),
        return_exceptions=True,
    )
    assert results[0] == [1]
    assert isinstance(results[1], Exception)
    assert results[2] == [1, 1]
    names = {row["name"] for row in await db.fetch_all("SELECT name FROM users")}
    assert names == {"one", "three", "four"}


async def test_a_failing_group_rolls_back_its_own_earlier_statements(db: Database) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the driver's integrity error differs per back end
        await db.write(Op(INSERT_USER, ("a", "alpha", 1)), Op(INSERT_USER, ("a", "again", 2)))
    assert await db.fetch_val("SELECT COUNT(*) FROM users") == 0


async def test_returning_and_many(db: Database) -> None:
    await db.write(Op(INSERT_USER, [("m1", "m1", 1), ("m2", "m2", 2), ("m3", "m3", 3)], many=True))
    rows = await db.execute_returning("UPDATE users SET disabled = 1 WHERE created_at >= $1 RETURNING id", 2)
    assert sorted(row["id"] for row in rows) == ["m2", "m3"]


async def test_sqlalchemy_core_statements_compile_for_the_dialect(db: Database) -> None:
    await db.execute(INSERT_USER, "c1", "core", 5)
    row = await db.fetch_one(select(users.c.id, users.c.name).where(users.c.name == "core"))
    assert row == {"id": "c1", "name": "core"}
    assert await db.fetch_one(select(users).where(users.c.name == "missing")) is None


async def test_an_if_changed_op_runs_only_after_a_change(db: Database) -> None:
    await db.execute(INSERT_USER, "x1", "xray", 1)
    rename = "UPDATE users SET name = $2 WHERE id = $1"
    noted = Op(INSERT_USER, ("note", "noted", 2), if_changed=True)
    assert await db.write(Op(rename, ("nobody", "zed")), noted) == [0, 0]
    assert await db.fetch_one("SELECT id FROM users WHERE id = 'note'") is None
    assert await db.write(Op(rename, ("x1", "yankee")), noted) == [1, 1]
    assert await db.fetch_one("SELECT id FROM users WHERE id = 'note'") == {"id": "note"}
