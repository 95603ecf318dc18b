"""Structured queries: the JSON schema a model fills, and SQL compiled through the semantic layer, run for real."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.analytics.connect import ConnectionSpec, QueryRows, duckdb_read_only, run_read_only
from conveyor.analytics.demo import build_demo_database, demo_model_files
from conveyor.analytics.guard import guard_sql
from conveyor.analytics.query import StructuredQuery, compile_query, query_json_schema
from conveyor.analytics.semantic import SemanticModel, load_model, topic_fields, topic_tables
from conveyor.errors import ValidationError


@pytest.fixture(scope="module")
def model() -> SemanticModel:
    loaded, problems = load_model(demo_model_files())
    assert problems == []
    return loaded


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> ConnectionSpec:
    path = tmp_path_factory.mktemp("duck") / "demo.duckdb"
    build_demo_database(path)
    return ConnectionSpec("duckdb", str(path))


@pytest.fixture(scope="module")
def lite(duck: ConnectionSpec, tmp_path_factory: pytest.TempPathFactory) -> ConnectionSpec:
    """The same demo data copied into SQLite (dates as ISO text, money as REAL), to compare dialects."""

    path = tmp_path_factory.mktemp("lite") / "demo.sqlite"
    target = sqlite3.connect(path)
    with duckdb_read_only(duck.target) as source:
        for table in ("regions", "customers", "products", "orders"):
            cursor = source.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cursor.description]
            rows = [tuple(v.isoformat() if isinstance(v, dt.date) else v for v in r) for r in cursor.fetchall()]
            rows = [tuple(float(v) if type(v).__name__ == "Decimal" else v for v in r) for r in rows]
            target.execute(f"CREATE TABLE {table} ({', '.join(names)})")
            target.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(names))})", rows)
    target.commit()
    target.close()
    return ConnectionSpec("sqlite", str(path))


async def run(model: SemanticModel, spec: ConnectionSpec, **query: Any) -> QueryRows:
    sql = compile_query(model, StructuredQuery(**query), dialect=spec.dialect)
    return await run_read_only(spec, sql, timeout_s=20, max_rows=1000)


def rounded(rows: QueryRows) -> list[tuple[Any, ...]]:
    return [tuple(round(v, 2) if isinstance(v, float) else v for v in r) for r in rows.rows]


def test_the_schema_names_only_the_topics_fields(model: SemanticModel) -> None:
    schema = query_json_schema(model, "sales")
    jsonschema.Draft202012Validator.check_schema(schema)
    names = list(topic_fields(model, "sales"))
    assert schema["properties"]["fields"]["items"]["enum"] == names
    assert "orders.revenue" in names and "regions.name" in names
    assert list(schema["properties"]["filters"]["properties"]) == names
    validator = jsonschema.Draft202012Validator(schema)
    good = {"fields": ["regions.name", "orders.order_date", "orders.revenue"], "time_grain": "month",
            "filters": {"orders.order_date": {"from": "2025-01-01", "to": "2025-12-31"}, "regions.name": ["Europe"]},
            "sorts": [{"column_name": "orders.revenue", "sort_descending": True}], "limit": 100}  # fmt: skip
    assert list(validator.iter_errors(good)) == []
    StructuredQuery(topic="sales", **good)
    for bad in (
        {"fields": ["orders.made_up"]},
        {"fields": []},
        {"fields": ["orders.revenue"], "filters": {"orders.made_up": 1}},
        {"fields": ["orders.revenue"], "filters": {"orders.order_date": "yesterday"}},
        {"fields": ["orders.revenue"], "time_grain": "decade"},
        {"fields": ["orders.revenue"] * 11},
        {"fields": ["orders.revenue"], "sql": "DROP TABLE orders"},
    ):
        assert list(validator.iter_errors(bad)), bad
    customers = query_json_schema(model, "customers")["properties"]["fields"]["items"]["enum"]
    assert "orders.revenue" not in customers and "regions.name" in customers


def test_structured_queries_are_bounded_and_strict() -> None:
    for bad in (
        {"topic": "sales", "fields": []},
        {"topic": "sales", "fields": ["revenue"]},
        {"topic": "sales", "fields": ["orders.revenue; DROP TABLE x"]},
        {"topic": "sales", "fields": ["orders.revenue"], "limit": 0},
        {"topic": "sales", "fields": ["orders.revenue"], "limit": 10**9},
        {"topic": "sales", "fields": ["orders.revenue"], "extra": 1},
        {"topic": "sales", "fields": ["orders.revenue"], "filters": {"orders.status": {"between": 1}}},
        {"topic": "sales", "fields": ["orders.revenue"], "filters": {"orders.status": {}}},
        {"topic": "sales", "fields": [f"v.f{i}" for i in range(21)]},
    ):
        with pytest.raises(pydantic.ValidationError):
            StructuredQuery.model_validate(bad)
    q = StructuredQuery.model_validate({"topic": "sales", "fields": ["orders.revenue"],
                                        "sorts": [{"field": "orders.revenue", "desc": True}]})  # fmt: skip
    assert q.to_omni()["sorts"] == [{"column_name": "orders.revenue", "sort_descending": True}]
    assert q.to_omni()["table"] == "sales"


def test_unknown_topics_fields_and_sorts_are_clear_errors(model: SemanticModel) -> None:
    with pytest.raises(ValidationError, match="unknown topic 'nope'"):
        compile_query(model, StructuredQuery(topic="nope", fields=["orders.revenue"]), dialect="duckdb")
    with pytest.raises(ValidationError, match=r"not in topic 'customers': orders.revenue"):
        compile_query(model, StructuredQuery(topic="customers", fields=["orders.revenue"]), dialect="duckdb")
    with pytest.raises(ValidationError, match="not among the query's fields"):
        q = StructuredQuery(topic="sales", fields=["regions.name"], sorts=[{"column_name": "orders.revenue"}])
        compile_query(model, q, dialect="duckdb")
    with pytest.raises(ValidationError, match="expects a number"):
        q = StructuredQuery(topic="sales", fields=["orders.revenue"], filters={"orders.quantity": "many"})
        compile_query(model, q, dialect="duckdb")
    with pytest.raises(ValidationError, match="expects a date"):
        q = StructuredQuery(topic="sales", fields=["orders.revenue"], filters={"orders.order_date": "last year"})
        compile_query(model, q, dialect="duckdb")
    with pytest.raises(ValidationError, match="unknown dialect"):
        compile_query(model, StructuredQuery(topic="sales", fields=["orders.revenue"]), dialect="oracle")


def test_values_are_quoted_by_sqlglot_never_pasted(model: SemanticModel) -> None:
    evil = "x' OR '1'='1'; DROP TABLE orders; --"
    q = StructuredQuery(topic="sales", fields=["regions.name", "orders.revenue"], filters={"regions.name": evil})
    for dialect in ("duckdb", "sqlite", "postgres"):
        sql = compile_query(model, q, dialect=dialect)
        assert "'x'' OR ''1''=''1''; DROP TABLE orders; --'" in sql
        guard_sql(sql, dialect=dialect, allowed_tables=topic_tables(model, "sales"), max_rows=10)


@pytest.mark.parametrize("dialect", ["duckdb", "sqlite", "postgres"])
def test_compiled_sql_passes_the_guard_and_joins_only_what_it_needs(model: SemanticModel, dialect: str) -> None:
    q = StructuredQuery(topic="sales", fields=["products.category", "orders.revenue"])
    sql = compile_query(model, q, dialect=dialect)
    assert '"products"' in sql and '"customers"' not in sql and '"regions"' not in sql
    assert guard_sql(sql, dialect=dialect, allowed_tables=topic_tables(model, "sales"), max_rows=50).endswith("50")
    # regions are reached through customers: both are joined
    sql = compile_query(model, StructuredQuery(topic="sales", fields=["regions.name", "orders.revenue"]),
                        dialect=dialect)  # fmt: skip
    assert '"customers"' in sql and '"regions"' in sql and '"products"' not in sql
    assert "GROUP BY" in sql and "'completed'" in sql  # the topic's default filter


async def test_revenue_by_region_by_month_for_the_past_year(
    model: SemanticModel, duck: ConnectionSpec, lite: ConnectionSpec
) -> None:
    past_year = {"from": "2025-11-01", "to": "2026-10-31"}
    query = {"topic": "sales", "fields": ["regions.name", "orders.order_date", "orders.revenue"],
             "filters": {"orders.order_date": past_year}, "time_grain": "month"}  # fmt: skip
    on_duck = await run(model, duck, **query)
    on_lite = await run(model, lite, **query)
    assert on_duck.columns == ["regions.name", "orders.order_date[month]", "orders.revenue"]
    assert len(on_duck.rows) == 6 * 12 and not on_duck.truncated
    assert rounded(on_duck) == rounded(on_lite)
    months = sorted({r[1] for r in on_duck.rows})
    assert months[0] == "2025-11-01" and months[-1] == "2026-10-01" and len(months) == 12
    assert on_duck.rows == sorted(on_duck.rows, key=lambda r: (r[1], r[0]))  # dates first, then the region

    with duckdb_read_only(duck.target) as conn:
        expected = conn.execute(
            "SELECT sum(o.amount) FROM orders o JOIN customers c USING (customer_id) JOIN regions r USING (region_id)"
            " WHERE r.name = 'Europe' AND o.status = 'completed' AND o.order_date BETWEEN '2026-03-01' AND '2026-03-31'"
        ).fetchone()
    assert expected is not None
    europe_march = [r[2] for r in on_duck.rows if r[0] == "Europe" and r[1] == "2026-03-01"]
    assert europe_march == [pytest.approx(float(expected[0]))]


@pytest.mark.parametrize("grain", ["day", "week", "month", "quarter", "year"])
async def test_time_grains_agree_across_dialects(
    model: SemanticModel, duck: ConnectionSpec, lite: ConnectionSpec, grain: str
) -> None:
    query = {"topic": "sales", "fields": ["orders.order_date", "orders.order_count"], "time_grain": grain,
             "filters": {"orders.order_date": {"from": "2024-02-20", "to": "2024-04-10"}}}  # fmt: skip
    on_duck, on_lite = await run(model, duck, **query), await run(model, lite, **query)
    assert on_duck.rows == on_lite.rows
    starts = [dt.date.fromisoformat(r[0]) for r in on_duck.rows]
    if grain == "week":
        assert all(d.weekday() == 0 for d in starts)
        assert starts[0] == dt.date(2024, 2, 19)
    if grain == "quarter":
        assert starts == [dt.date(2024, 1, 1), dt.date(2024, 4, 1)]
    if grain == "year":
        assert starts == [dt.date(2024, 1, 1)]
    if grain == "month":
        assert starts == [dt.date(2024, 2, 1), dt.date(2024, 3, 1), dt.date(2024, 4, 1)]
    if grain == "day":
        assert starts[0] >= dt.date(2024, 2, 20) and starts[-1] <= dt.date(2024, 4, 10)


@pytest.mark.parametrize(
    ("filters", "check"),
    [
        ({"regions.name": "Europe"}, lambda rows: [r[0] for r in rows] == ["Europe"]),
        ({"regions.name": ["Europe", "Asia Pacific"]}, lambda rows: [r[0] for r in rows] == ["Asia Pacific", "Europe"]),
        ({"orders.revenue": {"gt": 4_000_000}}, lambda rows: all(r[1] > 4_000_000 for r in rows) and rows),
        ({"orders.order_date": "2025"}, lambda rows: len(rows) == 6),
        ({"orders.status": "cancelled"}, lambda rows: sum(r[2] for r in rows) < 3000),  # replaces the default
        ({"orders.quantity": {"from": 10}}, lambda rows: sum(r[2] for r in rows) < 2500),
        ({"orders.order_date": {"to": "2022-12-31"}}, lambda rows: rows == []),
    ],
)
async def test_filters_behave_the_same_on_duckdb_and_sqlite(
    model: SemanticModel, duck: ConnectionSpec, lite: ConnectionSpec, filters: dict[str, Any], check: Any
) -> None:
    query = {"topic": "sales", "fields": ["regions.name", "orders.revenue", "orders.order_count"], "filters": filters}
    on_duck, on_lite = await run(model, duck, **query), await run(model, lite, **query)
    assert rounded(on_duck) == rounded(on_lite)
    assert check(on_duck.rows), on_duck.rows


async def test_sorts_and_limit(model: SemanticModel, duck: ConnectionSpec, lite: ConnectionSpec) -> None:
    query = {"topic": "sales", "fields": ["customers.name", "customers.customer_id", "orders.revenue"],
             "sorts": [{"column_name": "orders.revenue", "sort_descending": True}], "limit": 10}  # fmt: skip
    on_duck, on_lite = await run(model, duck, **query), await run(model, lite, **query)
    assert len(on_duck.rows) == 10
    revenues = [r[2] for r in on_duck.rows]
    assert revenues == sorted(revenues, reverse=True)
    assert rounded(on_duck) == rounded(on_lite)


async def test_dimensions_only_lists_distinct_values(model: SemanticModel, duck: ConnectionSpec) -> None:
    rows = await run(model, duck, topic="customers", fields=["regions.name"])
    assert len(rows.rows) == 6
    segments = await run(model, duck, topic="customers", fields=["customers.segment", "customers.customer_count"])
    assert sum(r[1] for r in segments.rows) == 2000


async def test_topic_default_date_filter(tmp_path: Path, duck: ConnectionSpec) -> None:
    files = demo_model_files()
    files["sales.topic"] = files["sales.topic"].replace(
        "  orders.status: completed", '  orders.status: completed\n  orders.order_date: {from: "2026"}'
    )
    changed, problems = load_model(files)
    assert problems == []
    rows = await run(changed, duck, topic="sales", fields=["orders.first_order_date"])
    assert rows.rows == [("2026-01-01",)]


def approx_rows(rows: QueryRows) -> list[tuple[Any, ...]]:
    return [tuple(pytest.approx(v, rel=1e-9, abs=1e-6) if isinstance(v, float) else v for v in r) for r in rows.rows]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_query_from_the_schema_compiles_passes_the_guard_and_agrees_across_dialects(
    model: SemanticModel, duck: ConnectionSpec, lite: ConnectionSpec, data: st.DataObject
) -> None:
    topic = data.draw(st.sampled_from(["sales", "customers"]))
    names = list(topic_fields(model, topic))
    fields = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
    grain = data.draw(st.sampled_from([None, "day", "week", "month", "quarter", "year"]))
    query = StructuredQuery(topic=topic, fields=fields, time_grain=grain)
    for dialect in ("duckdb", "sqlite", "postgres"):
        sql = compile_query(model, query, dialect=dialect)
        assert guard_sql(sql, dialect=dialect, allowed_tables=topic_tables(model, topic), max_rows=10) != sql
    on_duck = await run_read_only(duck, compile_query(model, query, dialect="duckdb"), timeout_s=20, max_rows=5000)
    on_lite = await run_read_only(lite, compile_query(model, query, dialect="sqlite"), timeout_s=20, max_rows=5000)
    assert on_duck.columns == on_lite.columns
    assert on_duck.total_row_count == on_lite.total_row_count
    assert on_lite.rows == approx_rows(on_duck)


@pytest.fixture
def pg_demo(pg_url: str, duck: ConnectionSpec) -> ConnectionSpec:
    """The demo data copied into PostgreSQL with the same column types."""
    import psycopg

    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    ddl = {
        "regions": "region_id INT, name TEXT, country TEXT",
        "customers": "customer_id INT, name TEXT, segment TEXT, region_id INT, signup_date DATE",
        "products": "product_id INT, name TEXT, category TEXT, unit_price NUMERIC(10, 2), unit_cost NUMERIC(10, 2)",
        "orders": "order_id INT, customer_id INT, product_id INT, order_date DATE, quantity INT,"
        " unit_price NUMERIC(10, 2), discount NUMERIC(4, 2), amount NUMERIC(12, 2), status TEXT",
    }
    with duckdb_read_only(duck.target) as source, psycopg.connect(url, autocommit=True) as target:
        for table, columns in ddl.items():
            target.execute(f"CREATE TABLE {table} ({columns})")
            with target.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                for row in source.execute(f"SELECT * FROM {table}").fetchall():
                    copy.write_row(row)
    return ConnectionSpec("postgres", url)


@pytest.mark.postgres
@pytest.mark.parametrize("grain", [None, "week", "quarter"])
async def test_compiled_sql_runs_on_postgres_like_duckdb(
    model: SemanticModel, duck: ConnectionSpec, pg_demo: ConnectionSpec, grain: str | None
) -> None:
    query = {"topic": "sales", "fields": ["regions.name", "orders.order_date", "orders.revenue", "orders.buyer_count"],
             "filters": {"orders.order_date": {"from": "2025-06", "to": "2025-09"}, "regions.name": ["Europe"]},
             "time_grain": grain, "sorts": [{"column_name": "orders.order_date", "sort_descending": True}]}  # fmt: skip
    on_duck, on_pg = await run(model, duck, **query), await run(model, pg_demo, **query)
    assert on_duck.total_row_count > 0
    assert on_pg.rows == approx_rows(on_duck)
