"""The model store: connections, data models, their branches and YAML files, and `ModelService.resolve`.

Every change of a model's files bumps its `version`, in the same transaction and first: the write updates the
model's row `WHERE version = <the version it read>`, and every later statement of the write runs only when that
one changed a row (`Op.if_changed`). So two writers of one model never interleave (the row update serializes
them on PostgreSQL; SQLite has one writer), a `previousChecksum` check is a real compare-and-swap, and a parsed
model cached under its version is never stale: `resolve` asks for the versions (one small SELECT) on every call.

A branch is a model row of kind BRANCH with `base_model_id`: its files overlay the base model's (a branch file
replaces the base's file of that name, an empty one deletes it). Merging applies the overlay to the base in one
transaction and bumps the base's version.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.analytics.checks import (
    branch_name,
    check_file_name,
    checked_yaml,
    connection_target,
    model_name,
    no_nul,
)
from conveyor.analytics.connect import ConnectionSpec, check_against_database
from conveyor.analytics.semantic import MAX_FILES, Problem, SemanticModel
from conveyor.analytics.semantic import load_model as parse_model
from conveyor.errors import BadRequestError, ConflictError, NotFoundError
from conveyor.store.db import Database, Op, Row
from conveyor.store.recipes import is_unique_violation

SHARED = "SHARED"
BRANCH = "BRANCH"
MAX_PAGE_SIZE = 100
MAX_OFFSET = 1_000_000
MAX_WRITE_ATTEMPTS = 5  # version races without a `previousChecksum` are retried, not shown to the client
CACHE_SIZE = 64
SORT_COLUMNS = {
    "name": "name",
    "modelKind": "kind",
    "connectionId": "connection_id",
    "baseModelId": "base_model_id",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
}
_MODEL_COLUMNS = "id, name, kind, connection_id, base_model_id, version, created_by, created_at, updated_at, deleted_at"
_UPSERT_FILE = (
    "INSERT INTO analytics_model_files (model_id, file_name, yaml, checksum, updated_at) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (model_id, file_name) DO UPDATE SET yaml = excluded.yaml, checksum = excluded.checksum,"
    " updated_at = excluded.updated_at"
)
_BUMP = "UPDATE analytics_models SET version = version + 1, updated_at = $1 WHERE id = $2 AND version = $3"


def now_ms() -> int:
    return int(time.time() * 1000)


def checksum(text: str) -> str:
    """A file's checksum as the YAML API shows it: SHA-256 of its UTF-8 text, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


class ModelNotFoundError(NotFoundError):
    """No live model has this id (or name, from the CLI); the API answers 404."""

    def __init__(self, ident: str) -> None:
        super().__init__("model", ident)
        self.message = f"Model {ident} not found"


class BranchNotFoundError(NotFoundError):
    """The model has no branch of this id or name; the API answers 404."""

    def __init__(self, ident: str) -> None:
        super().__init__("branch", ident)
        self.message = f"Branch {ident} not found"


class ChecksumMismatchError(ConflictError):
    """`previousChecksum` is not the file's checksum now: someone changed it since it was read; the API answers 409."""

    code = "checksum_mismatch"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model ready to query: its files overlaid by the branch's, parsed, and the connection to read it from."""

    model_id: str
    branch_id: str | None
    name: str
    semantic: SemanticModel
    spec: ConnectionSpec
    problems: list[Problem]
    version: int
    branch_version: int | None = None


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """A model's (or a branch's combined) files by name, their checksums, and the version they were read at."""

    files: dict[str, str]
    checksums: dict[str, str]
    version: int  # the branch's, for a branch's combined files
    base_version: int | None = None  # the base model's, read with its files (combined files only)


@dataclass(frozen=True, slots=True)
class ModelPage:
    """One page of `list_models`: its rows, how many match in all, and the cursor of the next page (None: last)."""

    rows: list[Row]
    total: int
    next_cursor: str | None


class ModelService:
    """Connections, models, branches and files in the store; `resolve` for the AI pipeline (cached by version)."""

    def __init__(
        self,
        db: Database,
        *,
        check_timeout_s: float = 30.0,
        cache_size: int = CACHE_SIZE,
        generated: Mapping[str, Callable[[Path], object]] | None = None,
    ) -> None:
        self.db = db
        self.check_timeout_s = check_timeout_s
        # Database files this server makes itself (the demo's), by path: built on the first use of their model
        # rather than at start, so a server that is never asked about them neither spends the build's CPU nor
        # loads DuckDB. Every build writes the same data, so each process (a worker on another machine too)
        # may make its own copy.
        self._generated = dict(generated or {})
        self._generating = asyncio.Lock()
        self._cache: OrderedDict[tuple[str, str | None], ResolvedModel] = OrderedDict()
        self._cache_size = cache_size

    # --- connections (operator only: CLI and seed) ------------------------------------------------------------

    async def add_connection(self, name: str, kind: str, target: str) -> Row:
        """Registers a database the models read; a file must exist (it is opened read-only). 409 on a taken name."""
        row = _connection_row(name, kind, target)
        try:
            await self.db.write(_insert_connection(row))
        except Exception as exc:
            if is_unique_violation(exc):
                raise ConflictError(f"a connection named {row['name']!r} exists") from None
            raise
        return row

    async def add_model(self, name: str, kind: str, target: str, *, files: Mapping[str, str] | None = None) -> Row:
        """A connection and a shared model on it, both named `name`, made together (or neither: 409 on a taken
        name, 400 on a bad file); the model's row."""
        connection = _connection_row(name, kind, target)
        model_id = str(uuid.uuid4())
        ops = model_ops(model_id, model_name(name, "model"), connection["id"], files or {}, None, now_ms())
        try:
            await self.db.write(_insert_connection(connection), *ops)
        except Exception as exc:
            if is_unique_violation(exc):
                raise ConflictError(f"a connection or model named {connection['name']!r} exists") from None
            raise
        return await self.model(model_id)

    async def connections(self) -> list[Row]:
        return await self.db.fetch_all(
            "SELECT id, name, kind, target, created_at FROM analytics_connections ORDER BY name LIMIT 1000"
        )

    async def connection(self, ref: str) -> Row:
        """A connection by id or name (404 otherwise)."""
        row = await self.db.fetch_one(
            "SELECT id, name, kind, target, created_at FROM analytics_connections WHERE id = $1 OR name = $1",
            no_nul(ref, "connection"),
        )
        if row is None:
            raise NotFoundError("connection", ref)
        return row

    # --- models and branches ---------------------------------------------------------------------------------

    async def create_model(
        self, name: str, connection_id: str, *, files: Mapping[str, str] | None = None, created_by: str | None = None
    ) -> Row:
        """A shared model on a connection, with its first files (checked as a YAML write is); 409 on a taken name."""
        name = model_name(name, "model")
        connection = await self.connection(connection_id)
        model_id = str(uuid.uuid4())
        ops = model_ops(model_id, name, connection["id"], files or {}, created_by, now_ms())
        try:
            await self.db.write(*ops)
        except Exception as exc:
            if is_unique_violation(exc):
                raise ConflictError(f"a model named {name!r} exists") from None
            raise
        return await self.model(model_id)

    async def create_branch(self, model_id: str, name: str, *, created_by: str | None = None) -> Row:
        """A new, empty branch of a shared model (its files are the base's until written); 409 on a taken name."""
        base = await self.model(model_id)
        if base["kind"] != SHARED:
            raise BadRequestError("a branch is made from a shared model, not from a branch")
        name = branch_name(name)
        at = now_ms()
        branch_id = str(uuid.uuid4())
        try:
            await self.db.write(
                Op(
                    f"INSERT INTO analytics_models ({_MODEL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $7, NULL)",
                    (branch_id, name, BRANCH, base["connection_id"], base["id"], created_by, at),
                )
            )
        except Exception as exc:
            if is_unique_violation(exc):
                raise ConflictError(f"model {base['id']} has a branch named {name!r}") from None
            raise
        return await self.model(branch_id)

    async def model(self, model_id: str) -> Row:
        """A live model or branch row by id (404 otherwise)."""
        row = await self.db.fetch_one(
            f"SELECT {_MODEL_COLUMNS} FROM analytics_models WHERE id = $1 AND deleted_at IS NULL",
            no_nul(model_id, "model"),
        )
        if row is None:
            raise ModelNotFoundError(model_id)
        return row

    async def find_model(self, ref: str) -> Row:
        """A live shared model by id or name (the CLI's way to name one)."""
        row = await self.db.fetch_one(
            f"SELECT {_MODEL_COLUMNS} FROM analytics_models"
            " WHERE (id = $1 OR name = $1) AND kind = 'SHARED' AND deleted_at IS NULL ORDER BY created_at LIMIT 1",
            no_nul(ref, "model"),
        )
        if row is None:
            raise ModelNotFoundError(ref)
        return row

    async def branch(self, model_id: str, branch_id: str) -> Row:
        """The branch `branch_id` of model `model_id` (404 for an unknown model, or a branch not of that model)."""
        await self.model(model_id)
        row = await self.db.fetch_one(
            f"SELECT {_MODEL_COLUMNS} FROM analytics_models WHERE id = $1 AND base_model_id = $2 AND kind = 'BRANCH'",
            no_nul(branch_id, "branch"),
            model_id,
        )
        if row is None:
            raise BranchNotFoundError(branch_id)
        return row

    async def branch_by_name(self, model_id: str, name: str) -> Row:
        await self.model(model_id)
        row = await self.db.fetch_one(
            f"SELECT {_MODEL_COLUMNS} FROM analytics_models WHERE base_model_id = $1 AND name = $2 AND kind = 'BRANCH'",
            model_id,
            no_nul(name, "branch"),
        )
        if row is None:
            raise BranchNotFoundError(name)
        return row

    async def branches(self, model_ids: list[str]) -> dict[str, list[Row]]:
        """The branches of each model, by model id, oldest first."""
        found: dict[str, list[Row]] = {model_id: [] for model_id in model_ids}
        if not model_ids:
            return found
        marks = ", ".join(f"${i + 1}" for i in range(len(model_ids)))
        rows = await self.db.fetch_all(
            f"SELECT {_MODEL_COLUMNS} FROM analytics_models WHERE base_model_id IN ({marks}) AND kind = 'BRANCH'"
            " ORDER BY created_at, id",
            *model_ids,
        )
        for row in rows:
            found[row["base_model_id"]].append(row)
        return found

    async def list_models(
        self,
        *,
        filters: Mapping[str, str | None] | None = None,
        include_deleted: bool = False,
        sort_field: str = "createdAt",
        descending: bool = False,
        offset: int = 0,
        page_size: int = 20,
    ) -> ModelPage:
        """A page of models and branches. `filters` by `modelId`, `baseModelId`, `connectionId`, `modelKind`,
        `name` (exact); sorted by an Omni sort field, then id; the cursor is the next offset."""
        if sort_field not in SORT_COLUMNS:
            raise BadRequestError(f"sortField is one of {', '.join(SORT_COLUMNS)}")
        columns = {"modelId": "id", "baseModelId": "base_model_id", "connectionId": "connection_id",
                   "modelKind": "kind", "name": "name"}  # fmt: skip
        where, args = ([] if include_deleted else ["deleted_at IS NULL"]), []
        for key, value in (filters or {}).items():
            if value is not None:
                args.append(no_nul(value, key))
                where.append(f"{columns[key]} = ${len(args)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = int(await self.db.fetch_val(f"SELECT COUNT(*) FROM analytics_models{clause}", *args))
        order = "DESC" if descending else "ASC"
        page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        rows = await self.db.fetch_all(
            f"SELECT {_MODEL_COLUMNS} FROM analytics_models{clause}"
            f" ORDER BY {SORT_COLUMNS[sort_field]} {order}, id {order} LIMIT {page_size} OFFSET {int(offset)}",
            *args,
        )
        following = offset + len(rows)
        return ModelPage(rows, total, str(following) if following < total and rows else None)

    # --- files -----------------------------------------------------------------------------------------------

    async def files(self, model_id: str, branch_id: str | None = None) -> ModelFiles:
        """The model's files, or the branch's combined files (the base's overlaid by the branch's)."""
        model = await self.model(model_id)
        base_id, branch = await self._base_and_branch(model, branch_id)
        return await self._combined(base_id, branch)

    async def write_file(
        self,
        model_id: str,
        file_name: str,
        text: str,
        *,
        branch_id: str | None = None,
        previous_checksum: str | None = None,
    ) -> ModelFiles:
        """Writes one file of the model or of its branch; empty YAML deletes it (in a branch: hides the base's).

        With `previous_checksum`, the file (as the caller sees it: combined, in a branch) must still have it,
        else `ChecksumMismatchError` (409). Returns the combined files after the write.
        """
        if text.strip():
            text = checked_yaml(file_name, text)
        else:
            check_file_name(file_name)
            text = ""
        model = await self.model(model_id)
        base_id, branch = await self._base_and_branch(model, branch_id)
        target_id = branch["id"] if branch is not None else base_id
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            current = await self._combined(base_id, branch)
            seen = current.checksums.get(file_name)
            if previous_checksum is not None and previous_checksum != seen:
                raise ChecksumMismatchError(f"file {file_name!r} changed since it was read (checksum mismatch)")
            if not text and seen is None:
                raise NotFoundError("file", file_name)
            if text and file_name not in current.files and len(current.files) >= MAX_FILES:
                raise BadRequestError(f"a model has at most {MAX_FILES} files")
            at = now_ms()
            ops = [Op(_BUMP, (at, target_id, current.version))]
            if text or branch is not None:  # in a branch, empty YAML is kept: it hides the base's file
                ops.append(Op(_UPSERT_FILE, (target_id, file_name, text, checksum(text), at), if_changed=True))
            else:
                ops.append(
                    Op(
                        "DELETE FROM analytics_model_files WHERE model_id = $1 AND file_name = $2",
                        (target_id, file_name),
                        if_changed=True,
                    )
                )
            bumped, _ = await self.db.write(*ops)
            if bumped:
                return await self._combined(base_id, branch)
        raise ConflictError(f"model {model_id} is changing too often to write {file_name!r}; try again")

    async def delete_branch(self, model_id: str, name: str) -> None:
        branch = await self.branch_by_name(model_id, name)
        await self.db.write(
            Op("DELETE FROM analytics_model_files WHERE model_id = $1", (branch["id"],)),
            Op("DELETE FROM analytics_models WHERE id = $1 AND kind = 'BRANCH'", (branch["id"],)),
        )

    async def merge_branch(self, model_id: str, name: str, *, delete_branch: bool = True) -> int:
        """Applies the branch's files to its model in one transaction (bumping the model's version); then deletes
        the branch, or with `delete_branch=False` keeps it, emptied (its changes are the model's now). Returns the
        model's new version."""
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            branch = await self.branch_by_name(model_id, name)
            base = await self._own(model_id)
            overlay = await self._own(branch["id"])
            at = now_ms()
            # Both guards first: every later op runs only if the one before it changed rows, and each of them does
            # when the versions are the ones read (ops that would change nothing are left out).
            ops = [
                Op(_BUMP, (at, branch["id"], overlay.version)),
                Op(_BUMP, (at, model_id, base.version), if_changed=True),
            ]
            upserts = [(model_id, n, text, checksum(text), at) for n, text in sorted(overlay.files.items()) if text]
            removals = [(model_id, n) for n, text in sorted(overlay.files.items()) if not text and n in base.files]
            if len((set(base.files) | {u[1] for u in upserts}) - {r[1] for r in removals}) > MAX_FILES:
                raise BadRequestError(f"the merged model would have over {MAX_FILES} files")
            if upserts:
                ops.append(Op(_UPSERT_FILE, upserts, many=True, if_changed=True))
            if removals:
                ops.append(
                    Op(
                        "DELETE FROM analytics_model_files WHERE model_id = $1 AND file_name = $2",
                        removals,
                        many=True,
                        if_changed=True,
                    )
                )
            if overlay.files:
                ops.append(
                    Op("DELETE FROM analytics_model_files WHERE model_id = $1", (branch["id"],), if_changed=True)
                )
            if delete_branch:
                ops.append(Op("DELETE FROM analytics_models WHERE id = $1", (branch["id"],), if_changed=True))
            results = await self.db.write(*ops)
            if results[1]:
                return int(base.version) + 1
        raise ConflictError(f"model {model_id} is changing too often to merge branch {name!r}; try again")

    # --- resolving and validating ----------------------------------------------------------------------------

    async def resolve(self, model_id: str, branch_id: str | None = None) -> ResolvedModel:
        """The model (overlaid by the branch) parsed, with its connection; cached while neither version changes.

        404 (`NotFoundError`) for an unknown model, or a branch not of that model. A branch's own id given as the
        model id, without `branch_id`, resolves that branch of its base model.
        """
        no_nul(model_id, "model")
        if branch_id is not None:
            no_nul(branch_id, "branch")
        rows = await self.db.fetch_all(
            "SELECT id, kind, base_model_id, version FROM analytics_models WHERE id IN ($1, $2) AND deleted_at IS NULL",
            model_id,
            branch_id or model_id,
        )
        by_id = {row["id"]: row for row in rows}
        model = by_id.get(model_id)
        if model is None:
            raise ModelNotFoundError(model_id)
        if model["kind"] == BRANCH and branch_id is None:
            return await self.resolve(model["base_model_id"], model_id)
        if model["kind"] != SHARED:
            raise ModelNotFoundError(model_id)
        branch = by_id.get(branch_id) if branch_id is not None else None
        if branch_id is not None and (branch is None or branch["base_model_id"] != model_id):
            raise BranchNotFoundError(branch_id)
        key = (model_id, branch_id)
        cached = self._cache.get(key)
        branch_version = branch["version"] if branch is not None else None
        if cached is not None and cached.version == model["version"] and cached.branch_version == branch_version:
            self._cache.move_to_end(key)
            return cached
        resolved = await self._load(model_id, branch_id)
        self._cache[key] = resolved
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return resolved

    async def validate(
        self, model_id: str, branch_id: str | None = None, *, check_database: bool = True
    ) -> list[Problem]:
        """Every problem of the model (or branch): its structure, and unknown tables or columns in its database."""
        resolved = await self.resolve(model_id, branch_id)
        problems = list(resolved.problems)
        if check_database:
            try:
                problems += await asyncio.wait_for(
                    check_against_database(resolved.semantic, resolved.spec), self.check_timeout_s
                )
            except TimeoutError:
                problems.append(Problem(f"checking the model against its database took over {self.check_timeout_s} s"))
        return problems

    async def _load(self, model_id: str, branch_id: str | None) -> ResolvedModel:
        row = await self.db.fetch_one(
            "SELECT m.name, c.kind, c.target FROM analytics_models m"
            " JOIN analytics_connections c ON c.id = m.connection_id WHERE m.id = $1",
            model_id,
        )
        if row is None:
            raise ModelNotFoundError(model_id)
        branch = None
        if branch_id is not None:
            branch = await self.db.fetch_one(f"SELECT {_MODEL_COLUMNS} FROM analytics_models WHERE id = $1", branch_id)
            if branch is None:
                raise BranchNotFoundError(branch_id)
        combined = await self._combined(model_id, branch)
        await self._ensure_generated(row["kind"], row["target"])
        # Parsing a large model takes a while: off the event loop.
        semantic, problems = await asyncio.to_thread(parse_model, combined.files)
        return ResolvedModel(
            model_id=model_id,
            branch_id=branch_id,
            name=row["name"],
            semantic=semantic,
            spec=ConnectionSpec(kind=row["kind"], target=row["target"]),
            problems=problems,
            # The versions read with the files: a change after this read is seen by the next `resolve`.
            version=combined.base_version if combined.base_version is not None else combined.version,
            branch_version=combined.version if branch is not None else None,
        )

    async def _ensure_generated(self, kind: str, target: str) -> None:
        build = self._generated.get(target) if kind == "duckdb" else None
        if build is None or Path(target).is_file():
            return
        async with self._generating:
            await asyncio.to_thread(build, Path(target))

    # --- reading files ---------------------------------------------------------------------------------------

    async def _base_and_branch(self, model: Row, branch_id: str | None) -> tuple[str, Row | None]:
        """The base model's id and the branch row: from `branch_id`, or from the model itself when it is a branch."""
        if model["kind"] == BRANCH:
            if branch_id is not None and branch_id != model["id"]:
                raise BranchNotFoundError(branch_id)
            return str(model["base_model_id"]), model
        if branch_id is None:
            return str(model["id"]), None
        return str(model["id"]), await self.branch(model["id"], branch_id)

    async def _own(self, model_id: str) -> ModelFiles:
        """One model row's own files (a branch's: its overlay, tombstones included) and its version, read together.

        The version is read in the same statement as the files (a LEFT JOIN), so the pair is consistent.
        """
        rows = await self.db.fetch_all(
            "SELECT m.version, f.file_name, f.yaml, f.checksum FROM analytics_models m"
            " LEFT JOIN analytics_model_files f ON f.model_id = m.id WHERE m.id = $1 ORDER BY f.file_name",
            model_id,
        )
        if not rows:
            raise ModelNotFoundError(model_id)
        files = {r["file_name"]: r["yaml"] for r in rows if r["file_name"] is not None}
        sums = {r["file_name"]: r["checksum"] for r in rows if r["file_name"] is not None}
        return ModelFiles(files, sums, int(rows[0]["version"]))

    async def _combined(self, base_id: str, branch: Row | None) -> ModelFiles:
        base = await self._own(base_id)
        if branch is None:
            return ModelFiles(base.files, base.checksums, base.version, base.version)
        overlay = await self._own(branch["id"])
        files, sums = dict(base.files), dict(base.checksums)
        for name, text in overlay.files.items():
            if text:
                files[name], sums[name] = text, overlay.checksums[name]
            else:
                files.pop(name, None)
                sums.pop(name, None)
        return ModelFiles(dict(sorted(files.items())), dict(sorted(sums.items())), overlay.version, base.version)


def model_ops(
    model_id: str, name: str, connection_id: str, files: Mapping[str, str], created_by: str | None, at: int
) -> list[Op]:
    """The statements that make a shared model with its first files (each checked as a YAML write is)."""
    checked = {file_name: checked_yaml(file_name, text) for file_name, text in files.items()}
    if len(checked) > MAX_FILES:
        raise BadRequestError(f"a model has at most {MAX_FILES} files")
    ops = [
        Op(
            f"INSERT INTO analytics_models ({_MODEL_COLUMNS}) VALUES ($1, $2, $3, $4, NULL, 1, $5, $6, $6, NULL)",
            (model_id, name, SHARED, connection_id, created_by, at),
        )
    ]
    if checked:
        args = [(model_id, n, text, checksum(text), at) for n, text in sorted(checked.items())]
        ops.append(Op(_UPSERT_FILE, args, many=True))
    return ops


def _connection_row(name: str, kind: str, target: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "name": model_name(name, "connection"),
        "kind": kind,
        "target": connection_target(kind, target),
        "created_at": now_ms(),
    }


def _insert_connection(row: Mapping[str, Any]) -> Op:
    return Op(
        "INSERT INTO analytics_connections (id, name, kind, target, created_at) VALUES ($1, $2, $3, $4, $5)",
        (row["id"], row["name"], row["kind"], row["target"], row["created_at"]),
    )
