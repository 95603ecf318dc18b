"""The semantic layer's YAML: parsing, bounds, and validation that lists every problem with its place."""

from __future__ import annotations

import sys

import pytest

from conveyor.analytics.semantic import (
    MAX_FILE_BYTES,
    MAX_FILES,
    Problem,
    Range,
    load_model,
    topic_fields,
    topic_tables,
)

ORDERS = """\
table: orders
description: Orders.
dimensions:
  order_id: {type: number}
  order_date: {type: date}
  status: {}
measures:
  revenue: {aggregate: sum, sql: amount}
  order_count: {aggregate: count}
"""
CUSTOMERS = """\
dimensions:
  customer_id: {type: number}
  name: {sql: full_name}
"""
SALES = """\
base_view: orders
description: Sales.
joins:
  customers: {sql_on: "orders.customer_id = customers.customer_id"}
default_filters:
  orders.status: completed
  orders.order_date: {from: "2024-01-01"}
sample_questions: [Revenue by month]
"""


def good_files() -> dict[str, str]:
    return {"orders.view": ORDERS, "customers.view": CUSTOMERS, "sales.topic": SALES, "model": "ai_context: USD"}


def messages(problems: list[Problem]) -> list[str]:
    return [p.message for p in problems]


def test_a_sound_model_loads_without_problems() -> None:
    model, problems = load_model(good_files())
    assert problems == []
    assert set(model.views) == {"orders", "customers"}
    orders = model.views["orders"]
    assert orders.table == "orders"
    assert model.views["customers"].table == "customers"  # defaults to the view's name
    assert orders.dimensions["status"].type == "string" and orders.dimensions["status"].sql == "status"
    assert orders.measures["revenue"].aggregate == "sum" and orders.measures["revenue"].type == "number"
    assert orders.measures["order_count"].sql == "*"
    assert model.views["customers"].dimensions["name"].sql == "full_name"
    sales = model.topics["sales"]
    assert sales.base_view == "orders" and sales.joins["customers"].relationship == "many_to_one"
    assert sales.default_filters["orders.status"] == "completed"
    assert sales.default_filters["orders.order_date"] == Range.model_validate({"from": "2024-01-01"})
    assert sales.sample_questions == ["Revenue by month"]
    assert model.ai_context == "USD"
    assert list(topic_fields(model, "sales")) == [
        "orders.order_id", "orders.order_date", "orders.status", "orders.revenue", "orders.order_count",
        "customers.customer_id", "customers.name",
    ]  # fmt: skip
    assert topic_tables(model, "sales") == {"orders", "customers"}


def test_every_problem_is_listed_with_its_place() -> None:
    files = good_files()
    extra_measures = "  status: {aggregate: count}\n  bad: {aggregate: sum}\n  nested: {aggregate: sum, sql: sum(x)}\n"
    files["orders.view"] = ORDERS + extra_measures
    files["customers.view"] = CUSTOMERS + "  other: {sql: orders.amount}\n  broken: {sql: 'a +* ('}\nsize: 3\n"
    files["returns.topic"] = "base_view: nowhere\njoins:\n  ghosts: {sql_on: 'nowhere.id = ghosts.id'}\n"
    files["sales.topic"] = SALES.replace("orders.status: completed", "orders.missing: 1")
    files["bad.yaml"] = "x: 1"
    files["broken.view"] = "dimensions: [unclosed"
    _, problems = load_model(files)
    places = {(p.file, p.view, p.field) for p in problems}
    assert ("orders.view", "orders", "status") in places  # a measure named like a dimension
    assert ("orders.view", "orders", "bad") in places  # sum without sql
    assert ("orders.view", "orders", "nested") in places  # aggregate inside a measure's sql
    assert ("customers.view", "customers", "other") in places  # another view's column
    assert ("customers.view", "customers", "broken") in places  # sql that does not parse
    assert any(p.file == "customers.view" and "unknown key 'size'" in p.message for p in problems)
    assert any(p.file == "returns.topic" and "unknown base view 'nowhere'" in p.message for p in problems)
    assert any(p.file == "returns.topic" and "unknown view 'ghosts'" in p.message for p in problems)
    assert any(p.file == "sales.topic" and p.field == "orders.missing" for p in problems)
    assert any(p.file == "bad.yaml" for p in problems)
    assert any(p.file == "broken.view" and p.message.startswith("bad YAML at line") for p in problems)
    assert all(p.severity == "error" for p in problems)


def test_sound_parts_of_a_broken_view_are_kept() -> None:
    files = good_files()
    files["orders.view"] = ORDERS + "  bad: {aggregate: sum, colour: red}\nsize: 3\n"
    model, problems = load_model(files)
    assert messages(problems) == ["unknown key 'measures.bad.colour'", "unknown key 'size'"]
    assert set(model.views["orders"].measures) == {"revenue", "order_count"}
    assert "sales" in model.topics


def test_extra_keys_are_refused_naming_file_and_key() -> None:
    files = good_files()
    files["orders.view"] = ORDERS.replace("  order_id: {type: number}", "  order_id: {type: number, colour: red}")
    files["sales.topic"] = SALES + "fields_all: true\n"
    _, problems = load_model(files)
    assert Problem("unknown key 'dimensions.order_id.colour'", "error", "orders", "order_id", "orders.view") in problems
    assert Problem("unknown key 'fields_all'", "error", None, None, "sales.topic") in problems


@pytest.mark.parametrize(
    ("sql_on", "expected"),
    [
        ("customer_id = customers.customer_id", "without its view"),
        ("orders.customer_id = regions.customer_id", "not the base view or joined before it"),
        ("orders.customer_id = orders.id", "does not use any of its columns"),
        ("orders.customer_id = (SELECT 1)", "without subqueries"),
        ("orders.customer_id = = customers.id", "does not parse"),
    ],
)
def test_broken_joins_are_reported(sql_on: str, expected: str) -> None:
    files = good_files()
    files["sales.topic"] = SALES.replace("orders.customer_id = customers.customer_id", sql_on)
    model, problems = load_model(files)
    assert any(expected in m for m in messages(problems)), problems
    assert all(p.view == "customers" and p.file == "sales.topic" for p in problems)
    assert "sales" not in model.topics  # a broken topic is left out; its views stay
    assert set(model.views) == {"orders", "customers"}


def test_a_join_may_use_views_joined_before_it_only() -> None:
    regions = "dimensions:\n  region_id: {type: number}\n"
    topic = (
        "base_view: orders\njoins:\n"
        "  regions: {sql_on: 'customers.region_id = regions.region_id'}\n"
        "  customers: {sql_on: 'orders.customer_id = customers.customer_id'}\n"
    )
    files = {**good_files(), "regions.view": regions, "sales.topic": topic}
    _, problems = load_model(files)
    assert any("'customers', which is not the base view or joined before it" in m for m in messages(problems))


@pytest.mark.parametrize(
    ("file_name", "text", "expected"),
    [
        ("1orders.view", ORDERS, "is not an identifier"),
        ("x" * 65 + ".view", ORDERS, "is not an identifier"),
        ("orders.views", ORDERS, "file names are"),
        ("orders.view", "- a\n- b\n", "must hold a YAML mapping"),
        ("orders.view", "a: [", "bad YAML"),
        ("orders.view", "dimensions:\n  bad-name: {}\n", "dimensions.bad-name"),
        ("orders.view", "dimensions:\n  x: {type: money}\n", "dimensions.x.type"),
        ("orders.view", "table: 'orders; DROP TABLE x'\n", "table"),
        ("orders.view", "measures:\n  x: {aggregate: median, sql: a}\n", "measures.x.aggregate"),
        ("orders.view", "x: " + "a" * MAX_FILE_BYTES, "over"),
        ("orders.view", "!!python/object:os.system {}", "bad YAML"),
    ],
)
def test_bad_files_are_problems_not_exceptions(file_name: str, text: str, expected: str) -> None:
    _, problems = load_model({file_name: text})
    assert problems and any(expected in m for m in messages(problems)), problems
    assert problems[0].file == file_name[:200]


def test_the_file_count_is_bounded() -> None:
    files = {f"v{i}.view": "dimensions: {}" for i in range(MAX_FILES + 1)}
    model, problems = load_model(files)
    assert model.views == {} and "at most" in problems[0].message


def test_default_filters_must_be_valid_values() -> None:
    files = good_files()
    files["sales.topic"] = SALES.replace("orders.status: completed", "orders.status: {between: 1}")
    model, problems = load_model(files)
    assert [(p.field, p.file) for p in problems] == [("orders.status", "sales.topic")]
    assert "sales" not in model.topics


def test_problems_serialize() -> None:
    p = Problem("m", "warning", "v", "f", "v.view")
    assert p.to_dict() == {"message": "m", "severity": "warning", "view": "v", "field": "f", "file": "v.view"}


def test_field_and_join_sql_may_not_read_files_or_call_unknown_functions() -> None:
    files = good_files()
    files["orders.view"] = ORDERS + "  leak: {aggregate: max, sql: \"read_text('/etc/passwd')\"}\n"
    files["sales.topic"] = SALES.replace(
        "orders.customer_id = customers.customer_id", "orders.customer_id = customers.customer_id AND getenv('x') = 1"
    )
    model, problems = load_model(files)
    assert [(p.view, p.field, p.message) for p in problems] == [
        ("orders", "leak", "sql is not allowed: function read_text() is not allowed"),
        ("customers", None, "topic 'sales': join sql_on is not allowed: function getenv() is not allowed"),
    ]
    assert "leak" not in model.views["orders"].measures


def test_yaml_aliases_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n"
    _, problems = load_model({"orders.view": bomb})
    assert messages(problems) == ["YAML aliases (*name) are not allowed"]


def test_a_dimension_without_sql_is_its_column_quoted_when_needed() -> None:
    model, problems = load_model({"t.view": "dimensions:\n  status: {}\n  select: {}\n  order: {}\n"})
    assert problems == []
    dims = model.views["t"].dimensions
    assert (dims["status"].sql, dims["select"].sql) == ("status", '"select"')


def test_problems_are_bounded() -> None:
    view = "measures:\n" + "".join(f"  m{i}: {{aggregate: sum}}\n" for i in range(400))
    files = {f"v{i}.view": view for i in range(3)}
    _, problems = load_model(files)
    assert len(problems) == 1001 and problems[-1].message == "... and 200 more problems"


@pytest.mark.parametrize(
    "sql",
    ["(" * 300 + "amount" + ")" * 300, "(" * 13 + "amount" + ")" * 13, "NOT " * 400 + "is_paid"],
    ids=["parens-300", "parens-13", "not-400"],
)
@pytest.mark.parametrize("recursion_limit", [1000, 100_000])  # jsonata and hypothesis raise the process's limit
def test_deeply_nested_field_sql_is_a_problem_not_an_exception(sql: str, recursion_limit: int) -> None:
    files = good_files()
    files["orders.view"] = ORDERS + f"  deep: {{aggregate: sum, sql: '{sql}'}}\n"
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(recursion_limit)
    try:
        model, problems = load_model(files)
    finally:
        sys.setrecursionlimit(previous)
    assert any(p.field == "deep" and "nested too deeply" in p.message for p in problems), messages(problems)
    assert "deep" not in model.views["orders"].measures


def test_deeply_nested_join_sql_is_a_problem_not_an_exception() -> None:
    files = good_files()
    deep = "(" * 300 + "orders.customer_id = customers.customer_id" + ")" * 300
    files["sales.topic"] = SALES.replace('"orders.customer_id = customers.customer_id"', f'"{deep}"')
    _, problems = load_model(files)
    assert any("join sql_on is nested too deeply" in p.message for p in problems), messages(problems)


def test_deeply_nested_yaml_is_a_problem_not_an_exception() -> None:
    files = good_files()
    files["orders.view"] = "dimensions: " + "[" * 5000 + "]" * 5000 + "\n"
    _, problems = load_model(files)
    assert problems
