"""Read-only connections to a model's database: DuckDB file, SQLite file or PostgreSQL URL.

Every query runs on a fresh connection opened read-only by the database itself, so even SQL that slipped
past `guard_sql` cannot write (defence in depth):

- DuckDB: `read_only=True`, no external access (files, network, extensions), configuration locked.
- SQLite: a `mode=ro` URI, `PRAGMA query_only`, and an authorizer that allows reads only (no ATTACH, PRAGMA,
  writes); a progress handler enforces the timeout.
- PostgreSQL (psycopg): a read-only transaction with `statement_timeout`, always rolled back, one prepared
  statement. A read-only transaction still lets a superuser read server files (`pg_read_file`): register a
  role with SELECT grants only; `check_against_database` warns about a role that can read files.

Queries run in a worker thread (`asyncio.to_thread`) so the event loop never blocks; on timeout the query is
interrupted (`interrupt()`, the progress handler, or a server-side cancel). `max_rows + 1` rows are fetched
to know whether the result was truncated; the rest are counted without being kept, up to `COUNT_CAP` rows
(past it `total_row_count` is `COUNT_CAP` and `count_capped` is true). Cells become JSON-friendly values.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

from conveyor.analytics.semantic import Problem, SemanticModel, field_columns, join_columns
from conveyor.errors import ValidationError

Kind = Literal["duckdb", "sqlite", "postgres"]
COUNT_CAP = 1_000_000
MAX_ROWS_LIMIT = 100_000
FETCH_BATCH = 1000
MAX_CELL_CHARS = 10_000
MAX_SQL_CHARS = 100_000
# Queries run inside the API/worker process: DuckDB's defaults (80% of RAM, every core) let one question starve
# the server. The limit bounds DuckDB's buffer manager (aggregates, joins, sorts); a single value's allocation
# (`repeat('a', 1500000000)`) is not counted by DuckDB, so the guard bounds such size arguments (guard.py).
DUCKDB_MEMORY_LIMIT = "512MB"
DUCKDB_THREADS = 2
# SQLite's limits are per connection: the longest string or blob a query may build (zeroblob, printf width).
SQLITE_MAX_LENGTH = 50_000_000


class QueryFailedError(ValidationError):
    """The database refused or failed a query (bad column, type error); the message is the database's own."""

    code = "query_failed"


class ConnectionFailedError(QueryFailedError):
    """The database could not be opened (missing file, refused connection); says nothing secret about the target."""

    code = "connection_failed"


class QueryTimeoutError(QueryFailedError):
    """A query ran past its timeout and was interrupted."""

    code = "query_timeout"


@dataclass(frozen=True)
class ConnectionSpec:
    """Where a model's data lives: a DuckDB or SQLite file path, or a PostgreSQL URL (a secret: never log it)."""

    kind: Kind
    target: str

    def __repr__(self) -> str:
        shown = self.target if self.kind != "postgres" else "postgresql://***"
        return f"ConnectionSpec(kind={self.kind!r}, target={shown!r})"

    @property
    def dialect(self) -> str:
        """The sqlglot dialect name for this database."""
        return self.kind


@dataclass
class QueryRows:
    """A bounded result: at most `max_rows` rows, and how many the query had in all."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    total_row_count: int
    count_capped: bool = False
    elapsed_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class _Cursor(Protocol):
    @property
    def description(self) -> Any: ...

    def fetchmany(self, size: int = ...) -> list[Any]: ...


async def run_read_only(spec: ConnectionSpec, sql: str, *, timeout_s: float, max_rows: int) -> QueryRows:
    """Runs one query on a fresh read-only connection in a thread; raises QueryFailedError/QueryTimeoutError."""
    if not 0 < timeout_s <= 600:
        raise ValidationError("timeout_s must be in (0, 600]")
    if not 0 < max_rows <= MAX_ROWS_LIMIT:
        raise ValidationError(f"max_rows must be in [1, {MAX_ROWS_LIMIT}]")
    if not sql.strip():
        raise QueryFailedError("the SQL is empty")
    if len(sql) > MAX_SQL_CHARS:
        raise QueryFailedError(f"the SQL is over {MAX_SQL_CHARS} characters")
    runner = {"duckdb": _run_duckdb, "sqlite": _run_sqlite, "postgres": _run_postgres}.get(spec.kind)
    if runner is None:
        raise ValidationError(f"unknown connection kind {spec.kind!r}")
    return await asyncio.to_thread(runner, spec.target, sql, timeout_s, max_rows)


def _collect(cursor: _Cursor | None, max_rows: int, deadline: float) -> QueryRows:
    if cursor is None or not cursor.description:
        raise QueryFailedError("the statement is not a query: it returned no rows")
    columns = [str(d[0]) for d in cursor.description]
    kept: list[tuple[Any, ...]] = []
    total = 0
    while True:
        batch = cursor.fetchmany(FETCH_BATCH)
        if not batch:
            break
        room = max_rows - len(kept)
        if room > 0:
            kept.extend(tuple(_cell(v) for v in row) for row in batch[:room])
        total += len(batch)
        if total >= COUNT_CAP:
            total = COUNT_CAP
            break
        if time.monotonic() > deadline:
            raise QueryTimeoutError("the query ran past its timeout while its rows were counted")
    capped = total >= COUNT_CAP
    return QueryRows(columns, kept, total > max_rows, total, capped)


def _cell(value: Any) -> Any:
    """One cell as a JSON-friendly value: ISO strings for times, float for decimals, text for the rest."""
    if value is None or isinstance(value, bool | int | str):
        return value[:MAX_CELL_CHARS] if isinstance(value, str) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)[: MAX_CELL_CHARS // 2].hex()
    if isinstance(value, list | tuple):
        return [_cell(v) for v in value[:1000]]
    if isinstance(value, dict):
        return {str(k): _cell(v) for k, v in list(value.items())[:1000]}
    return str(value)[:MAX_CELL_CHARS]


@contextmanager
def _interrupt_after(timeout_s: float, interrupt: Callable[[], object]) -> Iterator[threading.Event]:
    """Calls `interrupt` once if the block is still running after `timeout_s`; yields an event set if it fired."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        try:
            interrupt()
        except Exception:  # the query ended and its connection closed meanwhile: nothing left to interrupt
            pass

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:500]


_QUOTED_PATH = re.compile(r"\"[^\"]*[/\\][^\"]*\"|'[^']*[/\\][^']*'")
_BARE_PATH = re.compile(r"(?<![\w.:])(?:[A-Za-z]:)?[/\\][^\s\"',;:]+")


def _without_paths(message: str) -> str:
    """`message` with file paths taken out: the server's directory layout is not the client's business."""
    return _BARE_PATH.sub("<path>", _QUOTED_PATH.sub('"<path>"', message))


# --- DuckDB --------------------------------------------------------------------------------------------


def duckdb_read_only(path: str) -> Any:
    """Opens a DuckDB file read-only with no external access and its configuration locked."""
    import duckdb

    if not Path(path).is_file():
        raise ConnectionFailedError("the DuckDB database file does not exist")
    config: dict[str, str | bool | int | float | list[str]] = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "memory_limit": DUCKDB_MEMORY_LIMIT,
        "threads": DUCKDB_THREADS,
    }
    try:
        conn = duckdb.connect(path, read_only=True, config=config)
    except duckdb.Error as err:
        raise ConnectionFailedError(f"cannot open the DuckDB database: {_without_paths(_first_line(err))}") from None
    try:
        conn.execute("SET lock_configuration = true")
    except duckdb.Error:  # pragma: no cover - older DuckDB without the setting: external access stays off
        pass
    return conn


# One open database per DuckDB file, kept while the file stays the same (inode, mtime, size); each query runs on a
# cursor of it. Opening a file costs 11-15 ms, a cursor well under 1 ms: most of an answer's own time, otherwise
# (bench/ai_jobs.py). Cursors share the database's configuration, so they are as read-only and locked as it is.
# A process must open a file with one configuration only (DuckDB refuses a second): always `duckdb_read_only`.
DUCKDB_OPEN_FILES = 8
_duckdb_files: OrderedDict[str, tuple[tuple[int, int, int], Any]] = OrderedDict()
_duckdb_files_lock = threading.Lock()


def _duckdb_cursor(path: str) -> Any:
    try:
        found = os.stat(path)
    except OSError:
        raise ConnectionFailedError("the DuckDB database file does not exist") from None
    stamp = (found.st_ino, found.st_mtime_ns, found.st_size)
    with _duckdb_files_lock:
        held = _duckdb_files.get(path)
        if held is not None and held[0] != stamp:  # replaced or rewritten: let go of the old one first
            del _duckdb_files[path]
            held[1].close()
            held = None
        if held is None:
            held = _duckdb_files[path] = (stamp, duckdb_read_only(path))
            while len(_duckdb_files) > DUCKDB_OPEN_FILES:
                _duckdb_files.popitem(last=False)[1][1].close()
        _duckdb_files.move_to_end(path)
        return held[1].cursor()


def _run_duckdb(path: str, sql: str, timeout_s: float, max_rows: int) -> QueryRows:
    import duckdb

    conn = _duckdb_cursor(path)
    start = time.monotonic()
    try:
        with _interrupt_after(timeout_s, conn.interrupt) as fired:
            try:
                cursor = conn.execute(sql)
                result = _collect(cursor, max_rows, start + timeout_s)
            except duckdb.InterruptException:
                raise QueryTimeoutError(f"the query ran past its {timeout_s:g} s timeout") from None
            except duckdb.Error as err:
                if fired.is_set():
                    raise QueryTimeoutError(f"the query ran past its {timeout_s:g} s timeout") from None
                raise QueryFailedError(_first_line(err)) from None
    finally:
        conn.close()
    result.elapsed_ms = (time.monotonic() - start) * 1000
    return result


# --- SQLite --------------------------------------------------------------------------------------------

_SQLITE_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_SQLITE_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "fts3_tokenizer", "edit"}


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action not in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _SQLITE_DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_READ and db not in (None, "main"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def sqlite_read_only(path: str) -> sqlite3.Connection:
    """Opens a SQLite file read-only (`mode=ro`, `query_only`, a reads-only authorizer)."""
    if not Path(path).is_file():
        raise ConnectionFailedError("the SQLite database file does not exist")
    try:
        conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as err:
        raise ConnectionFailedError(f"cannot open the SQLite database: {_without_paths(_first_line(err))}") from None
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH)
    conn.execute("PRAGMA query_only = ON")
    conn.set_authorizer(_sqlite_authorizer)
    return conn


def _run_sqlite(path: str, sql: str, timeout_s: float, max_rows: int) -> QueryRows:
    conn = sqlite_read_only(path)
    start = time.monotonic()
    deadline = start + timeout_s
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
    try:
        cursor = conn.execute(sql)
        result = _collect(cursor, max_rows, deadline)
    except sqlite3.Warning as err:  # e.g. "You can only execute one statement at a time."
        raise QueryFailedError(_first_line(err)) from None
    except sqlite3.Error as err:
        if time.monotonic() > deadline:
            raise QueryTimeoutError(f"the query ran past its {timeout_s:g} s timeout") from None
        raise QueryFailedError(_first_line(err)) from None
    finally:
        conn.close()
    result.elapsed_ms = (time.monotonic() - start) * 1000
    return result


# --- PostgreSQL ----------------------------------------------------------------------------------------


def _run_postgres(url: str, sql: str, timeout_s: float, max_rows: int) -> QueryRows:
    import psycopg

    start = time.monotonic()
    timeout_ms = max(1, int(timeout_s * 1000))
    try:
        conn = psycopg.connect(url, connect_timeout=max(1, math.ceil(timeout_s)), autocommit=False)
    except psycopg.Error as err:
        raise ConnectionFailedError(f"cannot connect to PostgreSQL: {type(err).__name__}") from None  # URL is secret
    try:
        conn.read_only = True
        with _interrupt_after(timeout_s + 1, conn.cancel) as fired, conn.cursor() as cur:
            try:
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                cur.execute(sql.encode(), prepare=True)  # the extended protocol: one statement only
                result = _collect(cur, max_rows, start + timeout_s)
            except psycopg.errors.QueryCanceled:
                raise QueryTimeoutError(f"the query ran past its {timeout_s:g} s timeout") from None
            except psycopg.Error as err:
                if fired.is_set():
                    raise QueryTimeoutError(f"the query ran past its {timeout_s:g} s timeout") from None
                raise QueryFailedError(_first_line(err)) from None
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()
    result.elapsed_ms = (time.monotonic() - start) * 1000
    return result


# --- checking a model against its database -------------------------------------------------------------


async def table_columns(spec: ConnectionSpec, table: str, *, timeout_s: float = 10.0) -> list[str] | None:
    """The columns of `table` (lower-cased), or None when the database has no such table."""
    parts = table.split(".")
    from sqlglot import exp  # imported here: servers import this module at start, sqlglot only when checking

    name = exp.to_identifier(parts[-1], quoted=True)
    db = exp.to_identifier(parts[0], quoted=True) if len(parts) == 2 else None
    sql = exp.select("*").from_(exp.Table(this=name, db=db)).limit(0).sql(dialect=spec.dialect)
    try:
        rows = await run_read_only(spec, sql, timeout_s=timeout_s, max_rows=1)
    except (QueryTimeoutError, ConnectionFailedError):
        raise
    except QueryFailedError:
        return None
    return [c.lower() for c in rows.columns]


async def check_against_database(model: SemanticModel, spec: ConnectionSpec) -> list[Problem]:
    """Every view whose table is missing, every field or join naming a column its table lacks."""
    problems: list[Problem] = []
    try:
        await run_read_only(spec, "SELECT 1", timeout_s=10, max_rows=1)
    except QueryFailedError as err:
        return [Problem(f"cannot use the database: {err.message}")]
    if spec.kind == "postgres":
        problems.extend(await _postgres_role_warnings(spec))
    columns: dict[str, list[str] | None] = {}
    for view in model.views.values():
        try:
            columns[view.name] = await table_columns(spec, view.table)
        except QueryTimeoutError:
            problems.append(Problem(f"timed out reading table {view.table!r}", view=view.name))
            columns[view.name] = None
            continue
        known = columns[view.name]
        if known is None:
            problems.append(Problem(f"table {view.table!r} not found in the database", view=view.name))
            continue
        for f in view.fields().values():
            for col in field_columns(f):
                if col.lower() not in known:
                    problems.append(Problem(f"column {col!r} not found in table {view.table!r}", view=view.name,
                                            field=f.name))  # fmt: skip
    for topic in model.topics.values():
        for view_name, join in topic.joins.items():
            for join_view, col in join_columns(join):
                known = columns.get(join_view)
                if known is not None and col.lower() not in known:
                    problems.append(Problem(f"topic {topic.name!r}: join to {view_name!r} names column "
                                            f"{join_view}.{col}, which its table lacks", view=view_name))  # fmt: skip
    return problems


_ROLE_SQL = (
    "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_server_files', 'MEMBER') "
    "FROM pg_roles WHERE rolname = current_user"
)


async def _postgres_role_warnings(spec: ConnectionSpec) -> list[Problem]:
    try:
        rows = await run_read_only(spec, _ROLE_SQL, timeout_s=10, max_rows=1)
    except QueryFailedError as err:
        return [Problem(f"cannot check the PostgreSQL role: {err.message}", "warning")]
    if rows.rows and rows.rows[0][0]:
        return [Problem("the PostgreSQL role can read server files (superuser or pg_read_server_files): "
                        "use a role with SELECT grants only", "warning")]  # fmt: skip
    return []
