"""The demo recipes seeded on first start (`CONVEYOR_SEED_DEMO`): each is created once, by its fixed id."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from conveyor.errors import ConflictError
from conveyor.recipes.service import RecipeService
from conveyor.store.recipes import recipe_exists_any

DEMO_DIR = Path(__file__).parent / "demo"
log = logging.getLogger("conveyor.seed")


async def seed_demo_recipes(recipes: RecipeService) -> list[str]:
    """Creates each demo recipe whose id was never used (a deleted demo stays deleted); returns the new ids."""
    created = []
    for path in sorted(DEMO_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if await recipe_exists_any(recipes.db, doc["id"]):
            continue
        try:
            row = await recipes.create(doc)
        except ConflictError:
            continue  # another process seeded it a moment ago
        except Exception:
            log.exception("could not seed the demo recipe %s", path.name)
            continue
        created.append(row["id"])
    return created
