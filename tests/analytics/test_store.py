"""The model store on SQLite and PostgreSQL: models, branches as overlays, merges, checksums, the resolve cache, the
demo seed (once, with several processes starting together)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor.analytics.demo import build_demo_database, demo_model_files
from conveyor.analytics.seed import DEMO_MODEL, demo_database_path, demo_generators, seed_demo_model
from conveyor.analytics.store import ChecksumMismatchError, ModelService, checksum
from conveyor.errors import BadRequestError, ConflictError, NotFoundError, PayloadTooLargeError
from conveyor.store.db import Database, open_database

pytestmark = pytest.mark.timeout(60)

SMALL_VIEW = "table: orders\ndimensions:\n  order_id: {type: number}\nmeasures:\n  order_count: {aggregate: count}\n"


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    build_demo_database(path)
    return path


@pytest.fixture
def models(db: Database) -> ModelService:
    return ModelService(db, check_timeout_s=20)


async def _demo_model(models: ModelService, demo_db: Path, name: str = "sales") -> str:
    connection = await models.add_connection(f"{name}-db", "duckdb", str(demo_db))
    row = await models.create_model(name, connection["id"], files=demo_model_files())
    return str(row["id"])


async def test_resolve_parses_the_model_and_caches_it_by_version(models: ModelService, demo_db: Path) -> None:
    model_id = await _demo_model(models, demo_db)
    first = await models.resolve(model_id, None)
    assert {"sales", "customers"} <= set(first.semantic.topics)
    assert first.spec.kind == "duckdb" and first.spec.target == str(demo_db.resolve())
    assert first.problems == [] and first.version == 1
    assert await models.resolve(model_id, None) is first  # unchanged: the cached parse
    await models.write_file(model_id, "extra.view", SMALL_VIEW)
    second = await models.resolve(model_id, None)
    assert second is not first and second.version == 2 and "extra" in second.semantic.views


async def test_another_process_write_is_seen_by_the_cache(db: Database, database_url: str, demo_db: Path) -> None:
    mine = ModelService(db)
    model_id = await _demo_model(mine, demo_db)
    await mine.resolve(model_id)
    other_db = open_database(database_url)
    await other_db.connect()
    try:
        await ModelService(other_db).write_file(model_id, "extra.view", SMALL_VIEW)
    finally:
        await other_db.close()
    assert "extra" in (await mine.resolve(model_id)).semantic.views


async def test_a_branch_overlays_its_model_and_merges_into_it(models: ModelService, demo_db: Path) -> None:
    model_id = await _demo_model(models, demo_db)
    branch = await models.create_branch(model_id, "feature/new-metrics")
    base_files = (await models.files(model_id)).files
    assert (await models.files(model_id, branch["id"])).files == base_files  # an empty overlay
    await models.write_file(model_id, "extra.view", SMALL_VIEW, branch_id=branch["id"])
    await models.write_file(model_id, "customers.topic", "", branch_id=branch["id"])  # hides the base's file
    changed = "base_view: orders\nlabel: Sales v2\n"
    await models.write_file(model_id, "sales.topic", changed, branch_id=branch["id"])

    on_branch = await models.resolve(model_id, branch["id"])
    assert set(on_branch.semantic.topics) == {"sales"} and on_branch.semantic.topics["sales"].label == "Sales v2"
    assert "extra" in on_branch.semantic.views
    base = await models.resolve(model_id)
    assert "customers" in base.semantic.topics and "extra" not in base.semantic.views  # the base is untouched
    combined = await models.files(model_id, branch["id"])
    assert "customers.topic" not in combined.files and combined.files["sales.topic"] == changed

    version = await models.merge_branch(model_id, "feature/new-metrics")
    assert version == 2
    merged = await models.files(model_id)
    assert merged.files == combined.files and merged.version == 2
    assert merged.checksums["sales.topic"] == checksum(changed)
    with pytest.raises(NotFoundError):
        await models.resolve(model_id, branch["id"])
    assert (await models.branches([model_id]))[model_id] == []
    after = await models.resolve(model_id)
    assert set(after.semantic.topics) == {"sales"} and after.version == 2


async def test_merge_can_keep_the_branch_emptied(models: ModelService, demo_db: Path) -> None:
    model_id = await _demo_model(models, demo_db)
    branch = await models.create_branch(model_id, "keep")
    await models.write_file(model_id, "extra.view", SMALL_VIEW, branch_id=branch["id"])
    await models.merge_branch(model_id, "keep", delete_branch=False)
    assert "extra.view" in (await models.files(model_id)).files
    assert (await models.files(model_id, branch["id"])).files == (await models.files(model_id)).files
    await models.delete_branch(model_id, "keep")
    with pytest.raises(NotFoundError):
        await models.branch(model_id, branch["id"])


async def test_previous_checksum_is_a_compare_and_swap(models: ModelService, demo_db: Path) -> None:
    model_id = await _demo_model(models, demo_db)
    before = await models.files(model_id)
    seen = before.checksums["orders.view"]
    text = before.files["orders.view"]
    with pytest.raises(ChecksumMismatchError):
        await models.write_file(model_id, "orders.view", text + "# x\n", previous_checksum="0" * 64)
    results = await asyncio.gather(
        *(
            models.write_file(model_id, "orders.view", text + f"# writer {i}\n", previous_checksum=seen)
            for i in range(3)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1, results
    assert all(isinstance(r, ChecksumMismatchError) for r in results if isinstance(r, BaseException))
    assert (await models.files(model_id)).version == 2


async def test_writes_without_a_checksum_all_land(models: ModelService, demo_db: Path) -> None:
    model_id = await _demo_model(models, demo_db)
    await asyncio.gather(*(models.write_file(model_id, f"v{i}.view", SMALL_VIEW) for i in range(4)))
    found = await models.files(model_id)
    assert {f"v{i}.view" for i in range(4)} <= set(found.files) and found.version == 5


async def test_unknown_models_and_branches_are_404(models: ModelService, demo_db: Path) -> None:
    model_id = await _demo_model(models, demo_db)
    other_id = await _demo_model(models, demo_db, "other")
    branch = await models.create_branch(other_id, "b1")
    with pytest.raises(NotFoundError):
        await models.resolve("8d0f7a3e-2a7c-4c3e-9f1e-1c2b3a4d5e6f")
    with pytest.raises(NotFoundError):
        await models.resolve(model_id, branch["id"])  # a branch of another model
    with pytest.raises(NotFoundError):
        await models.resolve(model_id, "no\x00such")
    assert (await models.resolve(branch["id"])).branch_id == branch["id"]  # a branch id alone names its branch
    with pytest.raises(NotFoundError):
        await models.merge_branch(model_id, "b1")
    with pytest.raises(NotFoundError):
        await models.write_file(model_id, "nothing.view", "")


@pytest.mark.parametrize(
    ("file_name", "text", "error"),
    [
        ("orders.yaml", SMALL_VIEW, BadRequestError),
        ("../etc.view", SMALL_VIEW, BadRequestError),
        ("orders.view", "dimensions: [unclosed", BadRequestError),
        ("orders.view", "- a list\n- not a mapping\n", BadRequestError),
        ("orders.view", "a: " + "x" * (256 * 1024), PayloadTooLargeError),
    ],
)
async def test_bad_files_are_refused(
    models: ModelService, demo_db: Path, file_name: str, text: str, error: type[Exception]
) -> None:
    model_id = await _demo_model(models, demo_db)
    with pytest.raises(error):
        await models.write_file(model_id, file_name, text)
    assert (await models.files(model_id)).version == 1


async def test_names_and_connections_are_checked(models: ModelService, demo_db: Path, tmp_path: Path) -> None:
    model_id = await _demo_model(models, demo_db)
    connection = await models.connection("sales-db")
    with pytest.raises(ConflictError):
        await models.create_model("sales", connection["id"])
    with pytest.raises(ConflictError):
        await models.add_connection("sales-db", "duckdb", str(demo_db))
    await models.create_branch(model_id, "dup")
    with pytest.raises(ConflictError):
        await models.create_branch(model_id, "dup")
    with pytest.raises(BadRequestError):
        await models.create_branch(model_id, " leading space")
    with pytest.raises(BadRequestError):
        await models.add_connection("missing", "duckdb", str(tmp_path / "missing.duckdb"))
    with pytest.raises(BadRequestError):
        await models.add_connection("pg", "postgres", "mysql://x")
    with pytest.raises(BadRequestError):
        await models.add_connection("odd", "oracle", str(demo_db))


async def test_validate_adds_the_databases_problems(models: ModelService, demo_db: Path) -> None:
    model_id = await _demo_model(models, demo_db)
    assert await models.validate(model_id) == []
    broken = "table: orders\ndimensions:\n  nope: {type: number}\n"
    await models.write_file(model_id, "ghost.view", "table: no_such_table\n")
    await models.write_file(model_id, "odd.view", broken)
    problems = await models.validate(model_id)
    assert {(p.view, p.field) for p in problems} == {("ghost", None), ("odd", "nope")}, problems
    assert await models.validate(model_id, check_database=False) == []


async def test_the_demo_is_seeded_once_by_processes_starting_together(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    others = [open_database(database_url) for _ in range(2)]
    for other in others:
        await other.connect()
    try:
        made = await asyncio.gather(*(seed_demo_model(d, tmp_path / "data") for d in (db, *others, db)))
    finally:
        for other in others:
            await other.close()
    assert sum(m is not None for m in made) == 1, made
    assert not demo_database_path(tmp_path / "data").exists()  # built on first use, not at start
    models = ModelService(db, generated=demo_generators(tmp_path / "data"))
    (model,) = (await models.list_models(filters={"name": DEMO_MODEL})).rows
    assert (await models.files(model["id"])).files == dict(sorted(demo_model_files().items()))
    await asyncio.gather(*(models.resolve(model["id"]) for _ in range(3)))
    assert demo_database_path(tmp_path / "data").is_file()
    assert [p.name for p in (tmp_path / "data" / "analytics").iterdir()] == ["demo.duckdb"]  # no scratch left
    assert await models.validate(model["id"]) == []
    assert await seed_demo_model(db, tmp_path / "data") is None  # a restart seeds nothing more


async def test_add_model_makes_the_connection_and_model_together_or_neither(
    models: ModelService, demo_db: Path
) -> None:
    with pytest.raises(BadRequestError):
        await models.add_model("shop", "duckdb", str(demo_db), files={"orders.view": "a: [1"})
    with pytest.raises(NotFoundError):
        await models.connection("shop")  # nothing was left behind
    row = await models.add_model("shop", "duckdb", str(demo_db), files=demo_model_files())
    assert (await models.connection("shop"))["id"] == row["connection_id"]
    assert set((await models.resolve(row["id"])).semantic.topics) == {"sales", "customers"}
    with pytest.raises(ConflictError):
        await models.add_model("shop", "duckdb", str(demo_db))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_overlay_and_merge_match_a_plain_dict_model(models: ModelService, demo_db: Path, seed: int) -> None:
    """Random writes to a model and its branch: the combined files are always the base's dict updated by the
    branch's (an empty file removing), and merging makes the base exactly what the branch showed."""
    import random

    rng = random.Random(seed)
    connection = await models.add_connection("db", "duckdb", str(demo_db))
    model_id = (await models.create_model("m", connection["id"]))["id"]
    branch_id = (await models.create_branch(model_id, "b"))["id"]
    base: dict[str, str] = {}
    overlay: dict[str, str] = {}
    names = [f"v{i}.view" for i in range(5)]
    expected: dict[str, str] = {}
    for step in range(30):
        name = rng.choice(names)
        in_branch = rng.random() < 0.6
        text = "" if rng.random() < 0.25 else f"table: t{step}\n"
        if not in_branch and not text and name not in base:
            continue  # deleting a file the model does not have is a 404, checked elsewhere
        if in_branch and not text and not {**base, **overlay}.get(name):
            continue  # nor one the branch does not show
        await models.write_file(model_id, name, text, branch_id=branch_id if in_branch else None)
        if in_branch:
            overlay[name] = text
        elif text:
            base[name] = text
        else:
            base.pop(name)
        combined = {**base, **overlay}
        expected = {n: t for n, t in combined.items() if t}
        assert (await models.files(model_id)).files == base
        assert (await models.files(model_id, branch_id)).files == expected
    await models.merge_branch(model_id, "b")
    assert (await models.files(model_id)).files == expected
