"""The demo model: deterministic data, a model with no problems, and the sample question answerable."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from conveyor.analytics.connect import ConnectionSpec, check_against_database, duckdb_read_only, run_read_only
from conveyor.analytics.demo import FIRST_DAY, LAST_DAY, N_ORDERS, build_demo_database, demo_model_files
from conveyor.analytics.query import StructuredQuery, compile_query
from conveyor.analytics.semantic import load_model, topic_fields

TABLES = ("regions", "customers", "products", "orders")


def table_contents(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with duckdb_read_only(str(path)) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}


def test_two_builds_hold_the_same_data(tmp_path: Path) -> None:
    first, second = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    build_demo_database(first)
    build_demo_database(second)
    a, b = table_contents(first), table_contents(second)
    assert a == b
    assert [len(a[t]) for t in TABLES] == [6, 2000, 66, N_ORDERS]
    build_demo_database(first)  # rebuilding in place replaces the file
    assert table_contents(first) == a


async def test_the_demo_model_is_sound_against_its_database(tmp_path: Path) -> None:
    path = tmp_path / "demo.duckdb"
    build_demo_database(path)
    model, problems = load_model(demo_model_files())
    assert problems == []
    assert set(model.views) == {"orders", "customers", "products", "regions"}
    assert set(model.topics) == {"sales", "customers"}
    assert await check_against_database(model, ConnectionSpec("duckdb", str(path))) == []
    for topic in model.topics.values():
        assert topic.description and topic.ai_context and topic.sample_questions
    assert "Analyze sales trends by region for the past year" in model.topics["sales"].sample_questions
    assert all(f.description or f.label or f.type != "string" for f in topic_fields(model, "sales").values())


async def test_sales_trends_by_region_for_the_past_year_has_data(tmp_path: Path) -> None:
    path = tmp_path / "demo.duckdb"
    build_demo_database(path)
    model, _ = load_model(demo_model_files())
    spec = ConnectionSpec("duckdb", str(path))
    with duckdb_read_only(str(path)) as conn:
        span = conn.execute("SELECT min(order_date), max(order_date) FROM orders").fetchone()
    assert span == (FIRST_DAY, LAST_DAY)
    past_year = {"from": "2025-11-01", "to": "2026-10-31"}  # the twelve months before November 2026
    for filters in ({"orders.order_date": past_year}, {"orders.order_date": "2025"}):
        query = StructuredQuery(topic="sales", fields=["regions.name", "orders.order_date", "orders.revenue"],
                                filters=filters, time_grain="month")  # fmt: skip
        rows = await run_read_only(spec, compile_query(model, query, dialect="duckdb"), timeout_s=20, max_rows=500)
        assert len(rows.rows) == 6 * 12
        assert all(isinstance(r[2], float) and r[2] > 0 for r in rows.rows)
    # The data has trends to find: every region grows from 2023 to 2025, and December beats March.
    by_year = StructuredQuery(topic="sales", fields=["regions.name", "orders.order_date", "orders.revenue"],
                              time_grain="year", filters={"orders.order_date": {"to": "2025"}})  # fmt: skip
    rows = await run_read_only(spec, compile_query(model, by_year, dialect="duckdb"), timeout_s=20, max_rows=100)
    revenue = {(r[0], r[1]): r[2] for r in rows.rows}
    for region in {r[0] for r in rows.rows}:
        assert revenue[(region, "2025-01-01")] > revenue[(region, "2023-01-01")] * 0.95, region
    months = StructuredQuery(topic="sales", fields=["orders.order_date", "orders.revenue"], time_grain="month",
                             filters={"orders.order_date": "2025"})  # fmt: skip
    rows = await run_read_only(spec, compile_query(model, months, dialect="duckdb"), timeout_s=20, max_rows=100)
    by_month = {dt.date.fromisoformat(r[0]).month: r[1] for r in rows.rows}
    assert by_month[12] > by_month[3]


@pytest.mark.parametrize("name", sorted(demo_model_files()))
def test_each_demo_file_loads_on_its_own_terms(name: str) -> None:
    files = demo_model_files()
    if name.endswith(".topic"):  # a topic needs its views
        files = {k: v for k, v in files.items() if k.endswith(".view") or k == name}
    else:
        files = {name: files[name]}
    _, problems = load_model(files)
    assert problems == []
