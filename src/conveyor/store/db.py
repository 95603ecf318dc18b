"""The database access layer for every path: SQLite through one stdlib connection, PostgreSQL through asyncpg.

Why not SQLAlchemy's async layer: measured here it costs 0.5-0.9 ms of CPU per transaction and caps
create+finish at ~325 jobs/s on SQLite (`PERFORMANCE.md`). So statements go straight to the drivers, whose
statement caches prepare each SQL text once. SQLAlchemy still owns the schema and migrations, and cold paths
may build their statements with SQLAlchemy Core: `Database` compiles them for its dialect.

Writes are group-committed: every `write()` made in the same event-loop tick joins one transaction, each
caller's statements inside its own savepoint so one caller's failure rolls back only its own work. SQLite
keeps exactly one writer connection per process, used inline on the event loop (a WAL commit with
synchronous=NORMAL costs ~45 µs, less than a hop to a thread).

SQL texts are written once with `$1, $2, …` placeholders (asyncpg's style); SQLite runs them as `?1, ?2, …`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

Row = Mapping[str, Any]
Statement = str | ClauseElement


@dataclass(slots=True)
class Op:
    """One statement of a write: `many` runs it once per argument tuple; `returning` collects its rows.

    `if_changed` runs it only when the op before it in the same write changed (or returned) rows, e.g. the
    events of a state move that may be refused; a skipped op's result is 0 (or no rows).

    `lock_key` marks an op that takes a lock (a PostgreSQL advisory lock) and must open its write: the writes
    holding such ops go first in their group commit, in key order, so two concurrent group commits always
    take their locks in one order, before any row lock, and cannot deadlock on them.
    """

    sql: Statement
    args: Sequence[Any] = ()
    many: bool = False
    returning: bool = False
    if_changed: bool = False
    lock_key: str | None = None


@dataclass(slots=True)
class _Group:
    ops: Sequence[Op]
    future: asyncio.Future[list[Any]] = field(repr=False)


_PLACEHOLDER = re.compile(r"\$(\d+)")


class Database(ABC):
    """Reads and group-committed writes against one database."""

    dialect: str

    def __init__(self) -> None:
        self._pending: list[_Group] = []
        self._flush_scheduled = False
        self._compiled: dict[str, str] = {}

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def sa_dialect(self) -> Dialect: ...

    @abstractmethod
    async def fetch_all(self, sql: Statement, *args: Any) -> list[Row]: ...

    async def fetch_one(self, sql: Statement, *args: Any) -> Row | None:
        rows = await self.fetch_all(sql, *args)
        return rows[0] if rows else None

    async def fetch_val(self, sql: Statement, *args: Any) -> Any:
        row = await self.fetch_one(sql, *args)
        return None if row is None else next(iter(row.values()))

    def outside_writes(self) -> int | None:
        """A number that changes whenever another connection (another process) commits, or None when the back
        end has no cheap way to tell: caches of rows other processes may change are safe while it stays put."""
        return None

    async def write(self, *ops: Op) -> list[Any]:
        """Runs `ops` in one savepoint of the next group commit; returns each op's rows or row count."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append(_Group(ops, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return await future

    async def execute(self, sql: Statement, *args: Any) -> int:
        """Runs one statement in the next group commit; returns the row count."""
        (count,) = await self.write(Op(sql, args))
        return int(count)

    async def execute_returning(self, sql: Statement, *args: Any) -> list[Row]:
        (rows,) = await self.write(Op(sql, args, returning=True))
        return list(rows)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        groups, self._pending = self._pending, []
        if groups:
            self._flush(groups)

    @abstractmethod
    def _flush(self, groups: list[_Group]) -> None: ...

    def compile(self, stmt: Statement, args: Sequence[Any]) -> tuple[str, Sequence[Any]]:
        """Turns our `$n` SQL or a SQLAlchemy Core statement into the driver's SQL text and arguments."""
        if isinstance(stmt, str):
            return self._native_sql(stmt), args
        compiled = stmt.compile(dialect=self.sa_dialect(), compile_kwargs={"render_postcompile": True})
        params = compiled.params
        names = getattr(compiled, "positiontup", None) or []
        return str(compiled), [params[name] for name in names]

    @abstractmethod
    def _native_sql(self, sql: str) -> str: ...


def _run_group(ops: Sequence[Op], run: Any) -> list[Any]:
    """Runs one caller's ops in order, skipping an `if_changed` op whose predecessor changed nothing."""
    results: list[Any] = []
    for op in ops:
        if op.if_changed and results and not results[-1]:
            results.append([] if op.returning else 0)
        else:
            results.append(run(op))
    return results


async def _run_group_async(ops: Sequence[Op], run: Any) -> list[Any]:
    results: list[Any] = []
    for op in ops:
        if op.if_changed and results and not results[-1]:
            results.append([] if op.returning else 0)
        else:
            results.append(await run(op))
    return results


def _settle(groups: list[_Group], results: list[list[Any] | BaseException]) -> None:
    for group, result in zip(groups, results, strict=True):
        if group.future.done():
            continue
        if isinstance(result, BaseException):
            group.future.set_exception(result)
        else:
            group.future.set_result(result)


class SqliteDatabase(Database):
    """SQLite in WAL mode through one stdlib connection, used inline on the event loop."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        super().__init__()
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._writes_held = False  # while the checkpointer catches up; writes wait in `_pending`
        self._version_cursor: sqlite3.Cursor | None = None

    async def connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=512, timeout=0
        )
        conn.row_factory = _dict_row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        # The commit that crosses the WAL's size threshold would run the checkpoint on the event loop (8 ms
        # p99 commits measured under load); a thread with its own connection does it instead.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        # A WAL that was reset is reused from its start; this truncates the file after a burst that grew it.
        conn.execute(f"PRAGMA journal_size_limit = {_Checkpointer.CATCH_UP_FRAMES * 4096 * 4}")
        self._conn = conn
        self._checkpointer = _Checkpointer(self.path, self.busy_timeout_ms, self, asyncio.get_running_loop())
        self._checkpointer.start()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self._writes_held = False
        if self._pending:
            self._start_flush()
        if self._version_cursor is not None:
            self._version_cursor.close()
            self._version_cursor = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def sa_dialect(self) -> Dialect:
        from sqlalchemy.dialects import sqlite

        return sqlite.dialect(paramstyle="qmark")

    def _native_sql(self, sql: str) -> str:
        native = self._compiled.get(sql)
        if native is None:
            native = self._compiled[sql] = _PLACEHOLDER.sub(r"?\1", sql)
        return native

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("database is not connected")
        return self._conn

    async def fetch_all(self, sql: Statement, *args: Any) -> list[Row]:
        text, params = self.compile(sql, args)
        return self.conn.execute(text, params).fetchall()

    def outside_writes(self) -> int | None:
        # SQLite's data_version changes on every commit of another connection, never on this one's (~3 µs).
        # A cursor of its own, without the dict row factory: this runs on every authenticated request.
        if self._version_cursor is None:
            self._version_cursor = self.conn.cursor()
            self._version_cursor.row_factory = None
        return int(self._version_cursor.execute("PRAGMA data_version").fetchone()[0])

    def _run_op(self, op: Op) -> Any:
        text, params = self.compile(op.sql, () if op.many else op.args)
        if op.many:
            return self.conn.executemany(text, op.args).rowcount
        cursor = self.conn.execute(text, params)
        return cursor.fetchall() if op.returning else cursor.rowcount

    def _start_flush(self) -> None:
        if self._writes_held:
            self._flush_scheduled = False  # `release_writes` flushes what waits
            return
        super()._start_flush()

    def hold_writes(self, quiet: threading.Event) -> None:
        """Called on the loop: no transaction is open between callbacks, so writes stop here until released."""
        self._writes_held = True
        quiet.set()

    def release_writes(self) -> None:
        self._writes_held = False
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _flush(self, groups: list[_Group]) -> None:
        try:
            results: list[list[Any] | BaseException] = list(self._transaction(groups))
        except Exception:
            # Some caller's statement failed: run each caller alone, so only that caller gets the error.
            results = []
            for group in groups:
                try:
                    results.extend(self._transaction([group]))
                except Exception as exc:
                    results.append(exc)
        _settle(groups, results)

    def _transaction(self, groups: list[_Group]) -> list[list[Any]]:
        """Runs every group's statements in one transaction, all or nothing.

        No savepoint per caller: they cost two statements each, and a failure is rare enough to pay for a
        second pass instead (see `_flush`).
        """
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [_run_group(group.ops, self._run_op) for group in groups]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results


class _Checkpointer(threading.Thread):
    """Checkpoints the WAL into the database file off the event loop, on its own connection.

    A PASSIVE checkpoint never blocks the writer, but under steady writes the WAL is never started over: that
    happens only when a write transaction begins with every frame already copied, and frames committed while
    the checkpoint copies are always left. The WAL then grows without end (hundreds of MB in seconds under
    `make bench`) and every page read searches a longer WAL index (per-job CPU rose ~15% round after round).
    So when the WAL is long and still growing, the writer is held for one more checkpoint, which copies only
    what came in meanwhile; the next write starts the WAL over. Writes wait in the group-commit queue for
    those few milliseconds; reads go on.
    """

    INTERVAL_S = 0.5
    CATCH_UP_FRAMES = 2000  # 8 MB of 4 KiB pages
    QUIET_WAIT_S = 1.0

    def __init__(self, path: Path, busy_timeout_ms: int, db: SqliteDatabase, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="sqlite-checkpoint", daemon=True)
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.db = db
        self.loop = loop
        self._halt = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            last_frames = 0
            while not self._halt.wait(self.INTERVAL_S):
                try:
                    wal_frames = self._checkpoint(conn)
                    # Still long and still growing: the writer never found the WAL fully copied at its BEGIN.
                    if wal_frames > self.CATCH_UP_FRAMES and wal_frames != last_frames:
                        self._catch_up(conn)
                    last_frames = wal_frames
                except sqlite3.Error:
                    continue  # busy or locked: the next round catches up
            with contextlib.suppress(sqlite3.Error):
                self._checkpoint(conn)
        finally:
            conn.close()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> int:
        """A PASSIVE checkpoint (it never blocks writers); returns the WAL's length in frames.

        fetchall() runs the statement to its end: a statement left open would keep a read lock on the WAL
        that stops the writer from ever starting it over.
        """
        ((_busy, wal_frames, _copied),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return int(wal_frames)

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        quiet = threading.Event()
        try:
            self.loop.call_soon_threadsafe(self.db.hold_writes, quiet)
        except RuntimeError:
            return  # the loop is closed: the server is stopping
        try:
            if quiet.wait(self.QUIET_WAIT_S):
                self._checkpoint(conn)
        finally:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.db.release_writes)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


class PostgresDatabase(Database):
    """PostgreSQL through an asyncpg pool; asyncpg prepares and caches each statement per connection."""

    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        super().__init__()
        self.url = url
        self.pool_size = pool_size
        self._pool: Any = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        import asyncpg

        class Connection(asyncpg.Connection):  # type: ignore[misc]
            """Releases to the pool without the reset query (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
            RESET ALL`): one more round trip per read, and the PostgreSQL CPU that goes with it. Nothing here leaves
            session state behind: advisory locks are transaction-scoped, and nothing LISTENs, SETs or opens
            cursors. An open transaction is still rolled back by asyncpg on release."""

            def get_reset_query(self) -> str:
                return ""

        self._pool = await asyncpg.create_pool(
            asyncpg_url(self.url),
            min_size=1,
            max_size=self.pool_size,
            statement_cache_size=512,
            connection_class=Connection,
        )

    async def close(self) -> None:
        if self._pending:
            self._start_flush()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def sa_dialect(self) -> Dialect:
        from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

        return pg_asyncpg.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]

    def _native_sql(self, sql: str) -> str:
        return sql

    async def fetch_all(self, sql: Statement, *args: Any) -> list[Row]:
        text, params = self.compile(sql, args)
        async with self._pool.acquire() as conn:
            records = await conn.fetch(text, *params)
        return [dict(record) for record in records]

    def _flush(self, groups: list[_Group]) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_async(groups))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _run_op(self, conn: Any, op: Op) -> Any:
        text, params = self.compile(op.sql, () if op.many else op.args)
        if op.many:
            await conn.executemany(text, op.args)
            return len(op.args)
        if op.returning:
            return [dict(record) for record in await conn.fetch(text, *params)]
        status = await conn.execute(text, *params)
        return int(status.rsplit(" ", 1)[-1]) if status and status[-1].isdigit() else 0

    async def _flush_async(self, groups: list[_Group]) -> None:
        # As on SQLite: one transaction for all callers, and only when a statement fails, one per caller
        # (a savepoint per caller would cost two more round trips each).
        groups = sorted(groups, key=_lock_order)
        results: list[list[Any] | BaseException] = []
        try:
            async with self._pool.acquire() as conn:
                try:
                    results = list(await self._transaction(conn, groups))
                except Exception:
                    results = []
                    for group in groups:
                        try:
                            results.extend(await self._transaction(conn, [group]))
                        except Exception as exc:
                            results.append(exc)
        except Exception as exc:  # no connection
            results = [exc] * len(groups)
        _settle(groups, results)

    async def _transaction(self, conn: Any, groups: list[_Group]) -> list[list[Any]]:
        if len(groups) == 1 and _one_statement(groups[0].ops):
            # One statement is atomic by itself (asyncpg's executemany too): BEGIN and COMMIT would be two more
            # round trips, measured at ~110 µs of CPU per write between asyncpg and the backend.
            return [[await self._run_op(conn, groups[0].ops[0])]]
        async with conn.transaction():
            return [await _run_group_async(group.ops, functools.partial(self._run_op, conn)) for group in groups]


def _one_statement(ops: Sequence[Op]) -> bool:
    """Whether a write is a single statement that needs no transaction around it. A lock op does (a transaction
    lock taken alone would be released at once)."""
    return len(ops) == 1 and ops[0].lock_key is None


def _lock_order(group: _Group) -> tuple[int, str]:
    """Writes that open with a lock first, in key order; the rest after them, as they came (the sort is stable)."""
    key = group.ops[0].lock_key if group.ops else None
    return (0, key) if key is not None else (1, "")


def asyncpg_url(url: str) -> str:
    """The URL asyncpg accepts: plain `postgresql://`, whatever driver suffix SQLAlchemy style added."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def sqlalchemy_url(url: str) -> str:
    """The URL SQLAlchemy's sync engine uses for migrations (psycopg 3 for PostgreSQL)."""
    scheme, rest = url.split("://", 1)
    if scheme.startswith("postgres"):
        return "postgresql+psycopg://" + rest
    return url


def open_database(url: str, *, busy_timeout_ms: int = 5000, pool_size: int = 8) -> Database:
    """Builds the `Database` for a URL (not yet connected)."""
    scheme = urlsplit(url).scheme
    if scheme.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if not path:
            raise ValueError(f"SQLite URL needs a file path: {url!r}")
        return SqliteDatabase(Path(path), busy_timeout_ms=busy_timeout_ms)
    if scheme.startswith("postgres"):
        return PostgresDatabase(url, pool_size=pool_size)
    raise ValueError(f"unsupported database URL scheme {scheme!r}; use sqlite:/// or postgresql://")
