"""Read-only connections on real DuckDB, SQLite and PostgreSQL databases: bounds, timeouts, refusals, checks."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.analytics.connect import (
    DUCKDB_THREADS,
    ConnectionFailedError,
    ConnectionSpec,
    QueryFailedError,
    QueryTimeoutError,
    _cell,
    check_against_database,
    run_read_only,
)
from conveyor.analytics.demo import build_demo_database, demo_model_files
from conveyor.analytics.semantic import load_model
from conveyor.errors import ValidationError


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> ConnectionSpec:
    path = tmp_path_factory.mktemp("duck") / "demo.duckdb"
    build_demo_database(path)
    return ConnectionSpec("duckdb", str(path))


@pytest.fixture
def lite(tmp_path: Path) -> ConnectionSpec:
    path = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (order_id INTEGER PRIMARY KEY, order_date TEXT, amount NUMERIC, status TEXT)")
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, ?, ?)",
        [(i, f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}", i * 1.5, "completed") for i in range(1, 501)],
    )
    conn.commit()
    conn.close()
    return ConnectionSpec("sqlite", str(path))


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def test_duckdb_rows_are_bounded_and_counted(duck: ConnectionSpec) -> None:
    rows = await run_read_only(duck, "SELECT order_id, order_date, amount FROM orders ORDER BY order_id",
                               timeout_s=10, max_rows=5)  # fmt: skip
    assert rows.columns == ["order_id", "order_date", "amount"]
    assert len(rows.rows) == 5 and rows.truncated and rows.total_row_count == 40_000 and not rows.count_capped
    order_id, order_date, amount = rows.rows[0]
    assert order_id == 1 and isinstance(order_date, str) and dt.date.fromisoformat(order_date)
    assert isinstance(amount, float)
    whole = await run_read_only(duck, "SELECT * FROM regions", timeout_s=10, max_rows=100)
    assert not whole.truncated and whole.total_row_count == len(whole.rows) == 6


async def test_sqlite_rows_are_bounded_and_counted(lite: ConnectionSpec) -> None:
    rows = await run_read_only(lite, "SELECT * FROM orders WHERE amount > 600", timeout_s=10, max_rows=10)
    assert len(rows.rows) == 10 and rows.truncated and rows.total_row_count == 100
    exact = await run_read_only(lite, "SELECT count(*) AS n FROM orders", timeout_s=10, max_rows=10)
    assert exact.rows == [(500,)] and not exact.truncated and exact.total_row_count == 1


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE x (a INT)",
        "INSERT INTO orders (order_id, customer_id, product_id, order_date, quantity, unit_price, discount, amount, "
        "status) VALUES (0, 1, 1, DATE '2025-01-01', 1, 1, 0, 1, 'completed')",
        "UPDATE orders SET amount = 0",
        "DELETE FROM orders",
        "DROP TABLE orders",
        "ATTACH '{dir}/other.duckdb' AS other",
        "COPY orders TO '{dir}/out.csv'",
        "SELECT * FROM read_csv('{dir}/../../etc/passwd')",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
    ],
)
async def test_duckdb_connection_refuses_writes_and_outside_access(duck: ConnectionSpec, sql: str) -> None:
    before = digest(duck.target)
    folder = str(Path(duck.target).parent)
    with pytest.raises(QueryFailedError):
        await run_read_only(duck, sql.format(dir=folder), timeout_s=10, max_rows=10)
    assert digest(duck.target) == before
    assert sorted(p.name for p in Path(folder).iterdir()) == ["demo.duckdb"]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE x (a INT)",
        "INSERT INTO orders VALUES (9999, '2025-01-01', 1, 'x')",
        "UPDATE orders SET amount = 0",
        "DELETE FROM orders",
        "DROP TABLE orders",
        "ATTACH DATABASE '{dir}/other.sqlite' AS other",
        "PRAGMA query_only = OFF",
        "PRAGMA journal_mode = DELETE",
        "SELECT load_extension('x')",
        "SELECT 1; DELETE FROM orders",
        "VACUUM",
        "WITH d AS (SELECT 1) INSERT INTO orders SELECT 10000, '2025-01-01', 1, 'x' FROM d",
    ],
)
async def test_sqlite_connection_refuses_writes(lite: ConnectionSpec, sql: str) -> None:
    before = digest(lite.target)
    folder = str(Path(lite.target).parent)
    with pytest.raises(QueryFailedError):
        await run_read_only(lite, sql.format(dir=folder), timeout_s=10, max_rows=10)
    assert digest(lite.target) == before
    assert sorted(p.name for p in Path(folder).iterdir()) == ["shop.sqlite"]


async def test_duckdb_query_is_interrupted_on_timeout(duck: ConnectionSpec) -> None:
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        await run_read_only(duck, "SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b",
                            timeout_s=0.5, max_rows=10)  # fmt: skip
    assert time.monotonic() - start < 10


async def test_sqlite_query_is_interrupted_on_timeout(lite: ConnectionSpec) -> None:
    start = time.monotonic()
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
    with pytest.raises(QueryTimeoutError):
        await run_read_only(lite, sql, timeout_s=0.3, max_rows=10)
    assert time.monotonic() - start < 10


async def test_a_failing_query_reports_the_database_message(duck: ConnectionSpec, lite: ConnectionSpec) -> None:
    with pytest.raises(QueryFailedError, match="nope"):
        await run_read_only(duck, "SELECT nope FROM orders", timeout_s=5, max_rows=1)
    with pytest.raises(QueryFailedError, match="nope"):
        await run_read_only(lite, "SELECT nope FROM orders", timeout_s=5, max_rows=1)


async def test_missing_files_and_bad_bounds_are_errors(tmp_path: Path) -> None:
    for kind in ("duckdb", "sqlite"):
        with pytest.raises(ConnectionFailedError, match="does not exist"):
            await run_read_only(ConnectionSpec(kind, str(tmp_path / "none")), "SELECT 1", timeout_s=1, max_rows=1)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # nothing was created
    spec = ConnectionSpec("sqlite", str(tmp_path / "none"))
    for timeout_s, max_rows in ((0, 1), (1, 0), (1, 10**9)):
        with pytest.raises(ValidationError):
            await run_read_only(spec, "SELECT 1", timeout_s=timeout_s, max_rows=max_rows)


def test_cells_become_json_friendly() -> None:
    u = uuid.uuid4()
    assert _cell(dt.date(2025, 1, 2)) == "2025-01-02"
    assert _cell(dt.datetime(2025, 1, 2, 3, 4, 5)) == "2025-01-02T03:04:05"
    assert _cell(decimal.Decimal("12.50")) == 12.5
    assert _cell(decimal.Decimal("NaN")) == "NaN"
    assert _cell(float("inf")) == "inf"
    assert _cell(u) == str(u)
    assert _cell(b"\x01\x02") == "0102"
    assert _cell([dt.date(2025, 1, 1), {"a": decimal.Decimal(1)}]) == ["2025-01-01", {"a": 1.0}]
    assert _cell(dt.timedelta(minutes=1)) == 60.0


def test_the_postgres_url_is_not_in_the_repr() -> None:
    spec = ConnectionSpec("postgres", "postgresql://user:secret@localhost/db")
    assert "secret" not in repr(spec)


async def test_check_against_database_finds_missing_tables_and_columns(duck: ConnectionSpec) -> None:
    files = demo_model_files()
    model, problems = load_model(files)
    assert problems == []
    assert await check_against_database(model, duck) == []
    files["orders.view"] = files["orders.view"].replace("sql: amount", "sql: amout")
    files["regions.view"] = files["regions.view"].replace("table: regions", "table: areas")
    files["sales.topic"] = files["sales.topic"].replace("orders.product_id = products.product_id",
                                                        "orders.product_id = products.sku")  # fmt: skip
    model, problems = load_model(files)
    assert problems == []
    found = await check_against_database(model, duck)
    places = sorted((p.view or "", p.field or "", p.message) for p in found)
    assert [(v, f) for v, f, _ in places] == [("orders", "average_order_value"), ("orders", "revenue"),
                                              ("products", ""), ("regions", "")]  # fmt: skip
    assert "table 'areas' not found" in places[3][2]
    assert "products.sku" in places[2][2]


async def test_check_against_a_missing_database_is_one_problem(tmp_path: Path) -> None:
    model, _ = load_model(demo_model_files())
    found = await check_against_database(model, ConnectionSpec("duckdb", str(tmp_path / "gone.duckdb")))
    assert [p.message for p in found] == ["cannot use the database: the DuckDB database file does not exist"]


@pytest.fixture
def pg_shop(pg_url: str) -> Iterator[ConnectionSpec]:
    import psycopg

    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE shop_orders (order_id INT PRIMARY KEY, order_date DATE, amount NUMERIC(10, 2))")
        conn.execute("CREATE SEQUENCE shop_seq")
        conn.execute("INSERT INTO shop_orders SELECT i, DATE '2025-01-01' + i, i * 1.25 FROM generate_series(1, 300) i")
    yield ConnectionSpec("postgres", url)


@pytest.mark.postgres
async def test_postgres_reads_bounded_and_refuses_writes(pg_shop: ConnectionSpec) -> None:
    import psycopg

    rows = await run_read_only(pg_shop, "SELECT * FROM shop_orders ORDER BY order_id", timeout_s=10, max_rows=3)
    assert rows.rows[0] == (1, "2025-01-02", 1.25) and rows.truncated and rows.total_row_count == 300
    for sql in ("DELETE FROM shop_orders", "CREATE TABLE x (a INT)", "SELECT 1; DELETE FROM shop_orders",
                "SET TRANSACTION READ WRITE; DELETE FROM shop_orders", "SELECT nextval('shop_seq')",
                "WITH d AS (DELETE FROM shop_orders RETURNING *) SELECT count(*) FROM d"):  # fmt: skip
        with pytest.raises(QueryFailedError):
            await run_read_only(pg_shop, sql, timeout_s=10, max_rows=3)
    with psycopg.connect(pg_shop.target) as conn:
        assert conn.execute("SELECT count(*) FROM shop_orders").fetchone() == (300,)
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        await run_read_only(pg_shop, "SELECT pg_sleep(5)", timeout_s=0.3, max_rows=1)
    assert time.monotonic() - start < 4


@pytest.mark.postgres
async def test_postgres_superuser_role_gets_a_warning(pg_shop: ConnectionSpec) -> None:
    model, _ = load_model({"shop_orders.view": "dimensions:\n  order_id: {type: number}\n  nope: {}\n"})
    found = await check_against_database(model, pg_shop)  # the test server's role is a superuser
    assert [p.severity for p in found] == ["warning", "error"]
    assert "read server files" in found[0].message and found[1].field == "nope"


async def test_a_postgres_connection_failure_does_not_leak_the_url() -> None:
    spec = ConnectionSpec("postgres", "postgresql://reader:s3cret-pw@127.0.0.1:1/shop")
    with pytest.raises(ConnectionFailedError) as failed:
        await run_read_only(spec, "SELECT 1", timeout_s=2, max_rows=1)
    assert "s3cret" not in str(failed.value) and "127.0.0.1" not in str(failed.value)


async def test_duckdb_runs_with_bounded_memory_and_threads(duck: ConnectionSpec) -> None:
    rows = await run_read_only(duck, "SELECT current_setting('memory_limit'), current_setting('threads')",
                               timeout_s=10, max_rows=1)  # fmt: skip
    assert rows.rows[0][1] == DUCKDB_THREADS
    assert rows.rows[0][0].replace(" ", "").upper().startswith(("488.2MIB", "512.0MB", "512MB"))
    # ~1 GB built in DuckDB's buffers fails at the limit, quickly and cleanly, instead of taking the server's RAM.
    start = time.monotonic()
    with pytest.raises(QueryFailedError, match=r"(?i)out of memory"):
        await run_read_only(duck, "SELECT length(string_agg(repeat('a', 1000000), '')) FROM range(1000)",
                            timeout_s=60, max_rows=1)  # fmt: skip
    assert time.monotonic() - start < 30


async def test_sqlite_refuses_huge_values(lite: ConnectionSpec) -> None:
    with pytest.raises(QueryFailedError, match="too big"):
        await run_read_only(lite, "SELECT length(zeroblob(1000000000)) FROM orders", timeout_s=30, max_rows=1)


async def test_connection_failures_do_not_name_the_server_path(tmp_path: Path) -> None:
    secret_dir = tmp_path / "srv-private-layout"
    secret_dir.mkdir()
    path = secret_dir / "bad.duckdb"
    path.write_bytes(b"this is not a database file at all " * 100)
    with pytest.raises(ConnectionFailedError) as failed:
        await run_read_only(ConnectionSpec("duckdb", str(path)), "SELECT 1", timeout_s=10, max_rows=1)
    message = failed.value.message
    assert "srv-private-layout" not in message and str(tmp_path) not in message
    assert message.startswith("cannot open the DuckDB database: ") and "not a valid DuckDB database" in message


def _small_duckdb(path: Path, rows: int) -> None:
    import duckdb

    scratch = path.with_name(path.name + ".new")
    with duckdb.connect(str(scratch)) as conn:
        conn.execute(f"CREATE TABLE t AS SELECT range AS n FROM range({rows})")
    os.replace(scratch, path)


async def test_an_open_duckdb_file_is_reused_until_it_is_replaced(tmp_path: Path) -> None:
    """Queries share one open database per file (opening costs ~15 ms); a file replaced on disk is opened again,
    and a query's cursor is as locked down as the database it comes from."""
    path = tmp_path / "small.duckdb"
    _small_duckdb(path, 3)
    spec = ConnectionSpec("duckdb", str(path))
    assert (await run_read_only(spec, "SELECT count(*) FROM t", timeout_s=5, max_rows=1)).rows == [(3,)]
    _small_duckdb(path, 5)  # a rebuild: a new file under the same name
    assert (await run_read_only(spec, "SELECT count(*) FROM t", timeout_s=5, max_rows=1)).rows == [(5,)]
    for sql in ("SET enable_external_access = true", "SET lock_configuration = false"):
        with pytest.raises(ValidationError):
            await run_read_only(spec, sql, timeout_s=5, max_rows=1)
    settings = await run_read_only(
        spec,
        "SELECT current_setting('enable_external_access'), current_setting('lock_configuration')",
        timeout_s=5,
        max_rows=1,
    )
    assert settings.rows == [(False, True)]
