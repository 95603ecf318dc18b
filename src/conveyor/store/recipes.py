"""Recipes and their immutable revisions (a cold path: statements built with SQLAlchemy Core)."""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any

import orjson
from sqlalchemy import and_, func, insert, literal, or_, select, update

from conveyor.errors import ConflictError
from conveyor.store.db import Database, Op, Row
from conveyor.store.schema import recipe_revisions, recipes

# SQLITE_CONSTRAINT_PRIMARYKEY and SQLITE_CONSTRAINT_UNIQUE: other integrity errors (a foreign key) are not "taken".
_SQLITE_DUPLICATE_KEY = {1555, 2067}


def now_ms() -> int:
    return int(time.time() * 1000)


class RecipeIdTakenError(ConflictError):
    """The id of a recipe being created is already taken (deleted recipes included); the API answers 409."""

    def __init__(self, recipe_id: str) -> None:
        super().__init__(f"a recipe with id {recipe_id!r} exists", details={"id": recipe_id})
        self.recipe_id = recipe_id


async def create_recipe(
    db: Database,
    *,
    name: str,
    body: dict[str, Any],
    description: str = "",
    owner_id: str | None = None,
    recipe_id: str | None = None,
) -> Row:
    """Creates a recipe with its first revision (1); `RecipeIdTakenError` when the id is taken.

    The insert itself decides who gets an id (a check before it races other writers).
    """
    recipe_id = recipe_id or str(uuid.uuid4())
    at = now_ms()
    try:
        await db.write(
            Op(
                insert(recipes).values(
                    id=recipe_id,
                    name=name,
                    description=description,
                    owner_id=owner_id,
                    latest_revision=1,
                    created_at=at,
                    updated_at=at,
                )
            ),
            Op(insert(recipe_revisions).values(recipe_id=recipe_id, revision=1, body=_dump(body), created_at=at)),
        )
    except Exception as exc:
        if is_unique_violation(exc):
            raise RecipeIdTakenError(recipe_id) from None
        raise
    row = await read_recipe(db, recipe_id)
    assert row is not None
    return row


def is_unique_violation(exc: BaseException) -> bool:
    """Whether a driver error is a duplicate primary or unique key (SQLite or asyncpg)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return getattr(exc, "sqlite_errorcode", None) in _SQLITE_DUPLICATE_KEY
    try:
        from asyncpg.exceptions import UniqueViolationError
    except ImportError:  # PostgreSQL support not installed: no asyncpg error can occur
        return False
    return isinstance(exc, UniqueViolationError)


async def add_revision(
    db: Database, recipe_id: str, *, name: str, body: dict[str, Any], description: str
) -> Row | None:
    """Saves a new revision of an existing recipe; returns the recipe row as saved, or None when it does not exist.

    The recipe row is bumped first and its new `latest_revision` read back from the same statement; the
    revision row then copies that number within the same transaction. On PostgreSQL the UPDATE holds the
    row's lock until commit, so concurrent saves queue one behind another and each gets its own number.
    """
    at = now_ms()
    live = and_(recipes.c.id == recipe_id, recipes.c.deleted_at.is_(None))
    bumped, _ = await db.write(
        Op(
            update(recipes)
            .where(live)
            .values(latest_revision=recipes.c.latest_revision + 1, name=name, description=description, updated_at=at)
            .returning(*recipes.c),
            returning=True,
        ),
        Op(
            insert(recipe_revisions).from_select(
                ["recipe_id", "revision", "body", "created_at"],
                select(recipes.c.id, recipes.c.latest_revision, literal(_dump(body)), literal(at)).where(live),
            )
        ),
    )
    return dict(bumped[0]) if bumped else None


def _dump(body: dict[str, Any]) -> str:
    return orjson.dumps(body).decode()


def _visible(viewer: str | None) -> Any:
    """Recipes a user sees: shared ones (no owner: seeded or imported by an operator) and their own.

    `viewer=None` is an operator (the CLI, an admin): every recipe.
    """
    live = recipes.c.deleted_at.is_(None)
    if viewer is None:
        return live
    return and_(live, or_(recipes.c.owner_id.is_(None), recipes.c.owner_id == viewer))


async def read_recipe(db: Database, recipe_id: str, *, viewer: str | None = None) -> Row | None:
    """A live recipe by id that `viewer` may see, or None."""
    return await db.fetch_one(select(recipes).where(and_(recipes.c.id == recipe_id, _visible(viewer))))


async def find_recipe(db: Database, ref: str, *, viewer: str | None = None) -> Row | None:
    """A live recipe by id, or else by exact name (the newest of that name), among those `viewer` sees."""
    return await db.fetch_one(
        select(recipes)
        .where(and_(or_(recipes.c.id == ref, recipes.c.name == ref), _visible(viewer)))
        .order_by((recipes.c.id == ref).desc(), recipes.c.updated_at.desc())
        .limit(1)
    )


async def read_recipes(
    db: Database,
    *,
    limit: int,
    after: tuple[int, str] | None = None,
    name: str | None = None,
    viewer: str | None = None,
) -> list[Row]:
    """Live recipes `viewer` sees, newest first, keyset-paginated on (created_at, id)."""
    query = select(recipes).where(_visible(viewer))
    if name:
        query = query.where(recipes.c.name == name)
    if after is not None:
        created, ident = after
        query = query.where(
            or_(recipes.c.created_at < created, and_(recipes.c.created_at == created, recipes.c.id < ident))
        )
    return await db.fetch_all(query.order_by(recipes.c.created_at.desc(), recipes.c.id.desc()).limit(limit))


async def count_recipes(db: Database, *, name: str | None = None, viewer: str | None = None) -> int:
    query = select(func.count()).select_from(recipes).where(_visible(viewer))
    if name:
        query = query.where(recipes.c.name == name)
    return int(await db.fetch_val(query))


async def delete_recipe(db: Database, recipe_id: str) -> bool:
    """Soft-deletes a recipe: its revisions stay, so jobs that ran it keep their history."""
    count = await db.execute(
        update(recipes)
        .where(and_(recipes.c.id == recipe_id, recipes.c.deleted_at.is_(None)))
        .values(deleted_at=now_ms())
    )
    return count > 0


async def read_revision(db: Database, recipe_id: str, revision: int) -> Row | None:
    return await db.fetch_one(
        select(recipe_revisions).where(
            and_(recipe_revisions.c.recipe_id == recipe_id, recipe_revisions.c.revision == revision)
        )
    )


async def read_revisions(db: Database, recipe_id: str) -> list[Row]:
    """Every revision of a recipe, newest first, without bodies."""
    return await db.fetch_all(
        select(recipe_revisions.c.recipe_id, recipe_revisions.c.revision, recipe_revisions.c.created_at)
        .where(recipe_revisions.c.recipe_id == recipe_id)
        .order_by(recipe_revisions.c.revision.desc())
    )


async def recipe_exists_any(db: Database, recipe_id: str) -> bool:
    """Whether an id is taken, deleted recipes included (ids are never reused)."""
    row = await db.fetch_one(select(recipes.c.id).where(recipes.c.id == recipe_id))
    return row is not None
