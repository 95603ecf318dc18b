"""Saving recipes (validated, each save a new immutable revision) and loading the graphs jobs run."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson

from conveyor.blocks.base import BlockRegistry
from conveyor.errors import ConflictError, NotFoundError
from conveyor.recipes.graph import RecipeGraph, compile_recipe, parse_doc
from conveyor.recipes.model import RecipeDoc
from conveyor.store import recipes as store
from conveyor.store.db import Database, Row

GRAPH_CACHE_SIZE = 256
# A recipe by id, else the newest by name: one read for either (a client naming its recipe pays no miss first).
_RESOLVE = """SELECT id, name, latest_revision, owner_id FROM recipes
WHERE (id = $1 OR name = $1) AND deleted_at IS NULL{mine} ORDER BY id = $1 DESC, updated_at DESC LIMIT 1"""
_RESOLVE_ANY = _RESOLVE.format(mine="")
# A user sees shared recipes (no owner) and their own; see `store.recipes._visible`.
_RESOLVE_MINE = _RESOLVE.format(mine=" AND (owner_id IS NULL OR owner_id = $2)")


class RecipeService:
    """Recipes in the store, and a cache of compiled graphs keyed by (recipe, revision): revisions never change."""

    def __init__(self, db: Database, registry: BlockRegistry, *, max_nodes: int) -> None:
        self.db = db
        self.registry = registry
        self.max_nodes = max_nodes
        self._graphs: OrderedDict[tuple[str, int], RecipeGraph] = OrderedDict()

    def validate(self, data: Any) -> RecipeGraph:
        """Compiles a document; `RecipeInvalidError` (422) lists every problem by node."""
        return compile_recipe(data, self.registry, max_nodes=self.max_nodes)

    async def create(self, data: Any, *, owner_id: str | None = None) -> Row:
        graph = self.validate(data)
        doc = graph.doc
        # The check answers most duplicates without a failed write; the insert settles the races it cannot see.
        if doc.id is not None and await store.recipe_exists_any(self.db, doc.id):
            raise _id_taken(doc.id)
        try:
            return await store.create_recipe(
                self.db,
                name=doc.name,
                body=doc.body(),
                description=doc.description,
                owner_id=owner_id,
                recipe_id=doc.id,
            )
        except store.RecipeIdTakenError as exc:
            raise _id_taken(exc.recipe_id) from None

    async def update(self, recipe_id: str, data: Any) -> Row:
        doc = parse_doc(data)
        if doc.id is not None and doc.id != recipe_id:
            raise ConflictError(f"the body's id {doc.id!r} differs from the URL's {recipe_id!r}")
        graph = self.validate(doc)
        row = await store.add_revision(
            self.db, recipe_id, name=graph.doc.name, body=graph.doc.body(), description=graph.doc.description
        )
        if row is None:
            raise NotFoundError("recipe", recipe_id)
        return row

    async def resolve(
        self, ref: str, revision: int | None = None, *, viewer: str | None = None
    ) -> tuple[Row, RecipeGraph]:
        """The recipe a job names (id, else name) and the graph of the revision it will run (default: newest).

        Only recipes `viewer` sees are found (None: any). On the submit hot path: one prepared statement, then
        the graph cache.
        """
        if viewer is None:
            row = await self.db.fetch_one(_RESOLVE_ANY, ref)
        else:
            row = await self.db.fetch_one(_RESOLVE_MINE, ref, viewer)
        if row is None:
            raise NotFoundError("recipe", ref)
        if revision is not None and not 1 <= revision <= row["latest_revision"]:
            raise NotFoundError("recipe revision", f"{ref}@{revision}")
        return row, await self.graph(row["id"], revision or row["latest_revision"])

    async def get(self, ref: str, *, viewer: str | None = None) -> Row:
        """A recipe by id or name that `viewer` sees (None: any); `NotFoundError` (404) otherwise."""
        row = await store.find_recipe(self.db, ref, viewer=viewer)
        if row is None:
            raise NotFoundError("recipe", ref)
        return row

    async def body(self, recipe_id: str, revision: int) -> dict[str, Any]:
        row = await store.read_revision(self.db, recipe_id, revision)
        if row is None:
            raise NotFoundError("recipe revision", f"{recipe_id}@{revision}")
        body: dict[str, Any] = orjson.loads(row["body"])
        return body

    async def graph(self, recipe_id: str, revision: int) -> RecipeGraph:
        """The compiled graph of one revision (cached; revisions are immutable)."""
        key = (recipe_id, revision)
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            return graph
        graph = self.validate(RecipeDoc.model_validate(await self.body(recipe_id, revision)))
        self._graphs[key] = graph
        if len(self._graphs) > GRAPH_CACHE_SIZE:
            self._graphs.popitem(last=False)
        return graph

    async def latest_graph(self, ref: str, viewer: str | None = None) -> RecipeGraph:
        """The newest revision's graph of a recipe named by id or name that `viewer` sees (for `run_recipe`)."""
        row = await self.get(ref, viewer=viewer)
        return await self.graph(row["id"], row["latest_revision"])

    async def delete(self, recipe_id: str) -> None:
        if not await store.delete_recipe(self.db, recipe_id):
            raise NotFoundError("recipe", recipe_id)


def _id_taken(recipe_id: str) -> ConflictError:
    return ConflictError(f"a recipe with id {recipe_id!r} exists; PUT /api/v1/recipes/{recipe_id} to revise it")
