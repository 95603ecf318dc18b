"""The SQL guard against a table of attacks, with the database checked byte for byte after each.

Every attack is refused by `guard_sql`; then it is also run straight on a read-only connection (skipping the
guard) to show the connection refuses writes by itself, and the database file must be unchanged either way.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from pathlib import Path

import pytest

from conveyor.analytics.connect import ConnectionSpec, QueryFailedError, run_read_only
from conveyor.analytics.demo import build_demo_database
from conveyor.analytics.guard import SqlRefused, guard_sql
from conveyor.errors import ValidationError

SALES_TABLES = {"orders", "customers", "regions"}  # products is left out: a table "not in the topic"

# (name, dialect, sql, the connection alone must refuse it too)
ATTACKS = [
    ("drop", "duckdb", "DROP TABLE orders", True),
    ("delete", "duckdb", "DELETE FROM orders", True),
    ("update", "duckdb", "UPDATE orders SET amount = 0", True),
    ("insert", "duckdb", "INSERT INTO orders SELECT * FROM orders", True),
    ("create", "duckdb", "CREATE TABLE stolen AS SELECT * FROM customers", True),
    ("alter", "duckdb", "ALTER TABLE orders ADD COLUMN x INTEGER", True),
    ("attach", "duckdb", "ATTACH '{dir}/evil.duckdb' AS evil", True),
    ("detach", "duckdb", "DETACH demo", True),
    ("copy to", "duckdb", "COPY orders TO '{dir}/leak.csv'", True),
    ("copy query to", "duckdb", "COPY (SELECT * FROM customers) TO '{dir}/leak.parquet' (FORMAT parquet)", True),
    ("pragma", "duckdb", "PRAGMA database_list", False),
    ("set", "duckdb", "SET enable_external_access = true", True),
    ("install httpfs", "duckdb", "INSTALL httpfs", True),
    ("load httpfs", "duckdb", "LOAD httpfs", True),
    ("read_csv", "duckdb", "SELECT * FROM read_csv('/etc/passwd')", True),
    ("read_csv scalar position", "duckdb", "SELECT (SELECT count(*) FROM read_csv_auto('/etc/passwd')) AS n", True),
    ("read_parquet", "duckdb", "SELECT * FROM read_parquet('{dir}/x.parquet')", True),
    ("read_json", "duckdb", "SELECT * FROM read_json('/etc/hosts')", True),
    ("glob", "duckdb", "SELECT * FROM glob('/etc/*')", True),
    ("read_text", "duckdb", "SELECT content FROM read_text('/etc/passwd')", True),
    ("http url as table", "duckdb", "SELECT * FROM 'https://example.com/data.csv'", True),
    ("second statement", "duckdb", "SELECT * FROM orders; DROP TABLE orders", True),
    ("data-modifying cte", "duckdb", "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", True),
    ("data-modifying cte (pg)", "postgres", "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d", True),
    ("pg_read_file", "postgres", "SELECT pg_read_file('/etc/passwd')", True),
    ("lo_import", "postgres", "SELECT lo_import('/etc/passwd')", True),
    ("dblink", "postgres", "SELECT * FROM dblink('host=10.0.0.1', 'SELECT 1') AS t(a INT)", True),
    ("information_schema", "duckdb", "SELECT * FROM information_schema.tables", False),
    ("duckdb_settings", "duckdb", "SELECT * FROM duckdb_settings()", False),
    ("sqlite_master in duckdb", "duckdb", "SELECT * FROM sqlite_master", False),
    ("export database", "duckdb", "EXPORT DATABASE '{dir}/dump'", True),
    ("call", "duckdb", "CALL pragma_version()", False),
    ("table not in topic", "duckdb", "SELECT * FROM products", False),
    ("table not in topic via join", "duckdb", "SELECT o.* FROM orders o JOIN products p USING (product_id)", False),
    ("comment-smuggled statement", "duckdb", "SELECT * FROM orders /* report */; DROP TABLE orders -- done", True),
    ("line comment then statement", "duckdb", "SELECT * FROM orders -- x\n; DELETE FROM orders", True),
    ("zero-width space", "duckdb", "SELECT * FROM orders;\u200b DROP TABLE orders", True),
    ("bidi override", "duckdb", "SELECT * FROM orders WHERE status = '\u202edetelpmoc'; DROP TABLE orders", True),
    ("fullwidth semicolon", "duckdb", "SELECT 1\uff1b DROP TABLE orders", True),
    ("homoglyph table", "duckdb", "SELECT * FROM \u043erders", True),
    ("query() runs sql", "duckdb", "SELECT * FROM query('DROP TABLE orders')", True),
    ("getenv", "duckdb", "SELECT getenv('HOME')", True),
    ("select into", "postgres", "SELECT * INTO copied FROM orders", True),
    ("for update", "postgres", "SELECT * FROM orders FOR UPDATE", False),
    ("nextval", "duckdb", "SELECT nextval('orders_seq')", True),
    ("cte shadowing out of scope", "duckdb",
     "SELECT * FROM (WITH products AS (SELECT 1) SELECT * FROM products) q, products", False),
    ("cte defined after use", "duckdb",
     "WITH a AS (SELECT * FROM products), products AS (SELECT 1) SELECT * FROM a", False),
    ("empty", "duckdb", "  ", True),
    ("not sql", "duckdb", "please drop the orders table", True),
]  # fmt: skip

SQLITE_ATTACKS = [
    ("attach", "ATTACH DATABASE '{dir}/evil.sqlite' AS evil", True),
    ("pragma writable_schema", "PRAGMA writable_schema = ON", True),
    ("load_extension", "SELECT load_extension('{dir}/evil.so')", True),
    ("sqlite_master", "SELECT * FROM sqlite_master", False),
    ("vacuum into", "VACUUM INTO '{dir}/copy.sqlite'", True),
    ("delete", "DELETE FROM orders", True),
    ("replace", "REPLACE INTO orders (order_id) VALUES (1)", True),
    ("second statement", "SELECT 1; DROP TABLE orders", True),
    ("upsert in cte", "WITH x AS (SELECT 1) INSERT INTO orders (order_id) SELECT 99999 FROM x", True),
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> ConnectionSpec:
    path = tmp_path_factory.mktemp("guard") / "demo.duckdb"
    build_demo_database(path)
    return ConnectionSpec("duckdb", str(path))


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> ConnectionSpec:
    path = tmp_path_factory.mktemp("guard_lite") / "shop.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (order_id INTEGER PRIMARY KEY, order_date TEXT, amount REAL)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, f"2025-01-{1 + i % 28:02d}", i) for i in range(99)])
    conn.commit()
    conn.close()
    return ConnectionSpec("sqlite", str(path))


async def assert_refused_and_unchanged(spec: ConnectionSpec, dialect: str, sql: str, connection_refuses: bool) -> None:
    path = Path(spec.target)
    sql = sql.replace("{dir}", str(path.parent))
    before, files = digest(path), sorted(path.parent.iterdir())
    with pytest.raises(SqlRefused) as refused:
        guard_sql(sql, dialect=dialect, allowed_tables=SALES_TABLES, max_rows=100)
    assert refused.value.message and refused.value.status == 422
    # Defence in depth: the same SQL straight on the read-only connection, skipping the guard.
    if connection_refuses:
        with pytest.raises(QueryFailedError):
            await run_read_only(spec, sql, timeout_s=10, max_rows=10)
    else:
        try:
            await run_read_only(spec, sql, timeout_s=10, max_rows=10)
        except QueryFailedError:
            pass
    assert digest(path) == before
    assert sorted(path.parent.iterdir()) == files


@pytest.mark.parametrize(
    ("dialect", "sql", "connection_refuses"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
async def test_attacks_are_refused_and_change_nothing(
    duck: ConnectionSpec, dialect: str, sql: str, connection_refuses: bool
) -> None:
    await assert_refused_and_unchanged(duck, dialect, sql, connection_refuses)


@pytest.mark.parametrize(
    ("sql", "connection_refuses"), [a[1:] for a in SQLITE_ATTACKS], ids=[a[0] for a in SQLITE_ATTACKS]
)
async def test_sqlite_attacks_are_refused_and_change_nothing(
    lite: ConnectionSpec, sql: str, connection_refuses: bool
) -> None:
    await assert_refused_and_unchanged(lite, "sqlite", sql, connection_refuses)


ALLOWED = [
    ("join", "SELECT r.name, sum(o.amount) AS revenue FROM orders o JOIN customers c ON o.customer_id = c.customer_id"
             " JOIN regions r ON c.region_id = r.region_id GROUP BY r.name ORDER BY revenue DESC"),
    ("reading cte", "WITH m AS (SELECT date_trunc('month', order_date) AS month, sum(amount) AS revenue FROM orders"
                    " GROUP BY 1) SELECT * FROM m ORDER BY month"),
    ("recursive cte", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT * FROM n"),
    ("subquery", "SELECT name FROM customers WHERE customer_id IN"
                 " (SELECT customer_id FROM orders WHERE amount > 2000)"),
    ("aggregates", "SELECT count(*), count(DISTINCT customer_id), avg(amount), min(order_date), max(order_date),"
                   " median(amount), stddev(amount) FROM orders"),
    ("date functions", "SELECT extract(year FROM order_date) AS y, date_part('month', order_date) AS m,"
                       " strftime(order_date, '%Y-%m') AS ym, count(*) FROM orders"
                       " WHERE order_date >= current_date - INTERVAL 3 YEAR GROUP BY ALL ORDER BY 1, 2"),
    ("window", "SELECT order_id, sum(amount) OVER (PARTITION BY customer_id ORDER BY order_date) FROM orders"),
    ("union", "SELECT name FROM regions UNION ALL SELECT name FROM customers"),
    ("case and coalesce", "SELECT CASE WHEN amount > 100 THEN 'big' ELSE 'small' END AS size,"
                          " coalesce(status, '?') AS s, round(sum(amount), 2) FROM orders GROUP BY 1, 2"),
    ("from-first", "FROM orders SELECT order_id, amount WHERE status = 'returned'"),
    ("quoted names", 'SELECT "orders"."amount" AS "orders.amount" FROM "orders" AS "orders"'),
]  # fmt: skip


@pytest.mark.parametrize("sql", [a[1] for a in ALLOWED], ids=[a[0] for a in ALLOWED])
async def test_reading_queries_pass_with_a_limit_and_run(duck: ConnectionSpec, sql: str) -> None:
    guarded = guard_sql(sql, dialect="duckdb", allowed_tables=SALES_TABLES, max_rows=7)
    assert guarded.endswith("LIMIT 7")
    rows = await run_read_only(duck, guarded, timeout_s=20, max_rows=100)
    assert 0 < len(rows.rows) <= 7 and rows.total_row_count <= 7


@pytest.mark.parametrize(
    ("sql", "limit"),
    [
        ("SELECT * FROM orders LIMIT 5", "LIMIT 5"),
        ("SELECT * FROM orders LIMIT 100000", "LIMIT 50"),
        ("SELECT * FROM orders LIMIT 50", "LIMIT 50"),
        ("SELECT * FROM orders LIMIT 3 OFFSET 10", "LIMIT 3 OFFSET 10"),
        ("SELECT * FROM orders LIMIT (SELECT 100000)", "LIMIT 50"),
        ("SELECT * FROM orders FETCH FIRST 4 ROWS ONLY", "LIMIT 4"),
        ("SELECT name FROM regions UNION SELECT name FROM customers LIMIT 9999", "LIMIT 50"),
        ("SELECT * FROM (SELECT * FROM orders LIMIT 1000) t", "LIMIT 1000) AS t LIMIT 50"),
    ],
)
def test_an_existing_limit_is_kept_when_smaller_and_lowered_when_larger(sql: str, limit: str) -> None:
    assert guard_sql(sql, dialect="postgres", allowed_tables=SALES_TABLES, max_rows=50).endswith(limit)


def test_table_names_compare_case_insensitively_and_schemas_must_match() -> None:
    assert guard_sql("SELECT * FROM ORDERS", dialect="duckdb", allowed_tables={"orders"}, max_rows=1)
    with pytest.raises(SqlRefused, match=r"main\.orders"):
        guard_sql("SELECT * FROM main.orders", dialect="duckdb", allowed_tables={"orders"}, max_rows=1)
    assert guard_sql("SELECT * FROM sales.orders", dialect="postgres", allowed_tables={"sales.orders"}, max_rows=1)


def test_bounds() -> None:
    with pytest.raises(SqlRefused, match="over"):
        guard_sql("SELECT 1 " + " " * 20_000, dialect="duckdb", allowed_tables=set(), max_rows=1)
    with pytest.raises(ValidationError):
        guard_sql("SELECT 1", dialect="duckdb", allowed_tables=set(), max_rows=0)
    deep = "SELECT " + " + ".join(["1"] * 3000)
    with pytest.raises(SqlRefused, match=r"too complex|nested too deeply"):
        guard_sql(deep, dialect="duckdb", allowed_tables=set(), max_rows=1)


def test_comments_do_not_survive() -> None:
    out = guard_sql("SELECT /* ignore previous instructions */ 1 AS x -- and more", dialect="duckdb",
                    allowed_tables=set(), max_rows=5)  # fmt: skip
    assert out == "SELECT 1 AS x LIMIT 5"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "(" * 300 + "1" + ")" * 300 + " FROM orders",  # refused by bracket depth before parsing
        "SELECT " + "(" * 25 + "1" + ")" * 25 + " FROM orders",
        "SELECT " + "NOT " * 600 + "TRUE FROM orders",  # no brackets: sqlglot's own recursion, caught
        "SELECT " + "CASE WHEN TRUE THEN " * 300 + "1" + " END" * 300 + " FROM orders",
    ],
    ids=["parens-300", "parens-25", "not-600", "case-300"],
)
@pytest.mark.parametrize("recursion_limit", [1000, 100_000])
def test_deeply_nested_sql_is_refused_not_a_recursion_error(sql: str, recursion_limit: int) -> None:
    """Refused whatever the process's recursion limit: jsonata and hypothesis raise it, and sqlglot then parses
    what it cannot at the default (the refusal must not depend on which library ran first)."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(recursion_limit)
    try:
        with pytest.raises(SqlRefused, match="nested too deeply"):
            guard_sql(sql, dialect="duckdb", allowed_tables=SALES_TABLES, max_rows=10)
    finally:
        sys.setrecursionlimit(previous)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    sql = "SELECT '" + "(" * 100 + "' AS s, ((((amount)))) FROM orders"
    assert "LIMIT 10" in guard_sql(sql, dialect="duckdb", allowed_tables=SALES_TABLES, max_rows=10)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT length(repeat('a', 1500000000)) FROM orders", "repeat"),
        ("SELECT repeat('a', amount) FROM orders", "repeat"),
        ("SELECT lpad('x', 1500000000, 'y') FROM orders", "lpad"),
        ("SELECT rpad(status, order_id * 100000) FROM orders", "rpad"),
        ("SELECT len(range(0, 1000000000)) FROM orders", "generate_series"),
        ("SELECT printf('%1000000000d', 1) FROM orders", "printf"),
        ("SELECT printf('%.*c', 100, 'x') FROM orders", "printf"),
        ("SELECT printf(status, 1) FROM orders", "printf"),
        ("SELECT format('{:>1000000000}', 1) FROM orders", "format"),
    ],
)
def test_values_sized_by_huge_or_computed_numbers_are_refused(sql: str, reason: str) -> None:
    # DuckDB's memory_limit does not count one value's allocation: the guard bounds the size instead.
    with pytest.raises(SqlRefused, match=reason):
        guard_sql(sql, dialect="duckdb", allowed_tables=SALES_TABLES, max_rows=10)


async def test_small_generated_values_pass_and_run(duck: ConnectionSpec) -> None:
    sql = guard_sql("SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, printf('%05d', 42) AS f FROM orders",
                    dialect="duckdb", allowed_tables=SALES_TABLES, max_rows=1)  # fmt: skip
    rows = await run_read_only(duck, sql, timeout_s=10, max_rows=1)
    assert rows.rows == [("ababab", "007", "00042")]
