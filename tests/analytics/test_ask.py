"""The question pipeline end to end over the demo DuckDB database, with the scripted OpenAI-compatible server.

Each test scripts the model's replies in order, runs `ask` with a real `OpenAICompatModel` on loopback, and checks
what the model was sent, the SQL that ran, the rows (against DuckDB queried directly), actions and usage.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.llm.scripted_openai import MODEL, ScriptedOpenAI, completion, failure

from conveyor.analytics.ask import ask, generate_query, pick_topic
from conveyor.analytics.attempts import AnswerFailedError
from conveyor.analytics.connect import ConnectionSpec, duckdb_read_only
from conveyor.analytics.demo import build_demo_database, demo_model_files
from conveyor.analytics.hints import field_relevance, resolve_hints
from conveyor.analytics.markdown import format_value, markdown_table
from conveyor.analytics.semantic import SemanticModel, load_model, topic_fields
from conveyor.analytics.values import named_values
from conveyor.errors import NotFoundError, ValidationError
from conveyor.llm.openai_compat import OpenAICompatModel
from conveyor.net import GuardedClient
from conveyor.settings import NetSettings

NOW = dt.date(2026, 11, 23)
PRICES = {MODEL: (1.0, 2.0)}  # USD per million prompt / completion tokens


@dataclass(frozen=True)
class DemoModel:
    """A resolved model as the pipeline needs it: the parsed semantic layer and its connection."""

    semantic: SemanticModel
    spec: ConnectionSpec


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    build_demo_database(path)
    return path


def demo_model(path: Path, **replace_files: str) -> DemoModel:
    semantic, problems = load_model({**demo_model_files(), **replace_files})
    assert problems == []
    return DemoModel(semantic, ConnectionSpec("duckdb", str(path)))


@pytest.fixture
def model(demo_path: Path) -> DemoModel:
    return demo_model(demo_path)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedOpenAI]:
    async with ScriptedOpenAI() as scripted:
        yield scripted


@pytest.fixture
async def llm(server: ScriptedOpenAI) -> AsyncIterator[OpenAICompatModel]:
    async with GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as http:
        yield OpenAICompatModel(http, server.base_url, None, MODEL, backoff_s=0.01, max_retries=0, prices=PRICES)


Direct = Callable[[str], list[tuple[Any, ...]]]


@pytest.fixture
def direct(demo_path: Path) -> Direct:
    """Queries the demo database directly (a connection per query: DuckDB refuses a second open of the same file
    with another configuration while one is open, and the pipeline opens it its own way)."""

    def query(sql: str) -> list[tuple[Any, ...]]:
        conn = duckdb_read_only(str(demo_path))
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    return query


def reply(value: Any, usage: tuple[int, int] = (10, 5)) -> Any:
    return completion(orjson.dumps(value).decode(), usage=usage)


def messages(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"]]


REVENUE_BY_REGION = """
    SELECT r.name, SUM(o.amount) FROM orders o
    LEFT JOIN customers c ON o.customer_id = c.customer_id LEFT JOIN regions r ON c.region_id = r.region_id
    WHERE o.status = 'completed' AND o.order_date >= DATE '2025-11-23' AND o.order_date < DATE '2026-11-23'
    GROUP BY 1 ORDER BY 1
"""


async def test_topic_chosen_then_query_rows_summary_and_usage(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel, direct: Direct
) -> None:
    server.script(
        # "region" is a field of both topics: code cannot tell them apart, so the model picks.
        reply({"topic": "sales"}, usage=(100, 3)),
        # The model's own date range is wrong ("past year" read as 30 days): code's range wins.
        reply(
            {"fields": ["orders.revenue"], "filters": {"orders.order_date": {"from": "2026-10-24"}}}, usage=(900, 40)
        ),
        completion("North America had the most revenue over the past year.", usage=(300, 15)),
    )
    progress: list[tuple[str, dict[str, Any]]] = []

    answer = await ask(
        "How did each region do over the past year?",
        model=model,
        llm=llm,
        now=NOW,
        progress=lambda message, data: progress.append((message, dict(data))),
    )

    expected = direct(REVENUE_BY_REGION)
    assert answer.topic == "sales"
    assert answer.columns == ["regions.name", "orders.revenue"]
    assert answer.headers == ["Region", "Revenue"]
    assert [(name, pytest.approx(float(total))) for name, total in expected] == [tuple(row) for row in answer.rows]
    assert (answer.total_row_count, answer.truncated) == (6, False)
    assert "'2025-11-23'" in answer.sql and "'2026-11-23'" in answer.sql and "2026-10-24" not in answer.sql
    assert answer.query["filters"] == {"orders.order_date": {"from": "2025-11-23", "lt": "2026-11-23"}}
    assert answer.query["sql"] == answer.sql and answer.query["topic"] == "sales"

    # The headline is the model's; the facts and the table under it are code's, with the database's numbers.
    assert answer.result_summary == "North America had the most revenue over the past year."
    headline, facts, table = answer.markdown.split("\n\n")
    assert headline == answer.result_summary
    total = sum(float(value) for _, value in expected)
    top = max(expected, key=lambda row: row[1])
    low = min(expected, key=lambda row: row[1])
    assert facts.splitlines() == [
        f"- Total Revenue: {format_value(total)}.",
        f"- Highest Revenue: {format_value(float(top[1]))} ({top[0]}); lowest: {format_value(float(low[1]))} "
        f"({low[0]}).",
    ]
    assert table == markdown_table(answer.headers, answer.rows, max_rows=100)
    for name, value in expected:
        assert f"| {name} | {format_value(float(value))} |" in table

    # The topic was chosen from an enum of the visible topics, described for the model.
    topic_body, query_body, summary_body = server.bodies()
    schema = topic_body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["topic"]["enum"] == ["customers", "sales"]
    system = topic_body["messages"][0]["content"]
    assert "Examples: Analyze sales trends by region for the past year" in system and "count customers" in system

    # The query request: the topic's fields (most relevant first), its AI context, and what code resolved.
    query_system = query_body["messages"][0]["content"]
    assert "- orders.revenue (number measure) Revenue: Net sales amount (after discount)." in query_system
    assert query_system.split("Fields:\n")[1].startswith("- regions.name (string dimension) Region")
    assert "Only completed orders count" in query_system
    assert 'time range on orders.order_date: 2025-11-23 to 2026-11-22 ("past year")' in query_system
    assert "fields named in the question: regions.name" in query_system
    fields_schema = query_body["response_format"]["json_schema"]["schema"]["properties"]["fields"]
    assert fields_schema["items"]["enum"][0] == "regions.name" and fields_schema["maxItems"] == 6
    # The summary prompt is bounded and carries code's facts.
    summary_user = summary_body["messages"][1]["content"]
    assert "Facts computed from all rows" in summary_user and "Period: 2025-11-23 to 2026-11-22" in summary_user

    assert [a["type"] for a in answer.actions] == ["generate_query", "summarize"]
    result = answer.actions[0]["result"]
    assert result["status"] == "success" and result["hasResults"] and result["totalRowCount"] == 6
    assert result["queryName"] == "Revenue by Region"
    assert result["csvResult"].splitlines()[0] == "regions.name,orders.revenue"
    assert len(result["csvResult"].splitlines()) == 7 and not result["csvResultWasTruncated"]
    assert result["sql"] == answer.sql and result["query"] == answer.query
    assert answer.actions[0]["timestamp"].endswith("Z")

    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (1300, 58)
    assert answer.usage.cost == pytest.approx((1300 * 1.0 + 58 * 2.0) / 1_000_000)
    steps = [data["step"] for _, data in progress]
    assert steps == ["pick_topic", "generate_query", "generate_query", "summarize"]
    assert progress[0][0] == "Using topic sales (chosen by the model)"
    assert [data["iteration"] for _, data in progress] == [1, 2, 3, 4]
    assert server.unanswered() == 0


@pytest.mark.parametrize(
    ("question", "topic"),
    [
        ("Analyze sales trends by region for the past year", "sales"),  # "sales" names the topic
        ("Top 5 customers by revenue", "sales"),  # revenue is only in sales
        ("How many customers signed up each month in 2025?", "customers"),  # a sample question
        ("How many customers per segment?", "customers"),  # a tie on fields; the topic is named
        ("Which categories sell the most units?", "sales"),
    ],
)
async def test_code_picks_a_topic_that_is_clearly_ahead(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel, question: str, topic: str
) -> None:
    picked, usage = await pick_topic(question, model.semantic, llm)

    assert (picked, usage.total_tokens, len(server.requests)) == (topic, 0, 0)


async def test_code_fills_in_a_measure_and_drops_unrelated_dimensions(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    # What SmolLM2-135M answered here: dimensions only, most unrelated to the question.
    weak = ["orders.order_date", "orders.status", "orders.quantity", "orders.customer_id"]
    server.script(reply({"fields": [*weak, "regions.name", "regions.name"]}), completion("Revenue grew."))

    answer = await ask("Analyze sales trends by region for the past year", model=model, llm=llm, now=NOW)

    assert answer.topic == "sales" and len(server.requests) == 2
    assert answer.columns == ["orders.order_date[month]", "regions.name", "orders.revenue"]
    assert answer.headers == ["Order date (month)", "Region", "Revenue"]
    months = sorted({row[0] for row in answer.rows})
    assert months[0] == "2025-11-01" and months[-1] == "2026-10-01"  # the demo data ends on 2026-10-31
    assert answer.total_row_count == 12 * 6 and answer.query["time_grain"] == "month"


async def test_a_failing_query_is_repaired_with_the_error_fed_back(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel, direct: Direct
) -> None:
    bad = {"fields": ["products.category", "orders.units_sold"], "filters": {"orders.order_date": {"from": "2025-13"}}}
    sorts = [{"column_name": "orders.units_sold", "sort_descending": True}]
    good = {"fields": ["products.category", "orders.units_sold"], "sorts": sorts}
    server.script(reply(bad), reply(good), completion("Office Supplies sells the most units."))

    answer = await ask(
        "Which product categories sell the most units?", model=model, llm=llm, topic_name="sales", now=NOW
    )

    first, repair, _summary = server.bodies()
    assert messages(repair)[: len(messages(first))] == messages(first)
    assistant, user = messages(repair)[len(messages(first)) :]
    assert assistant == ("assistant", orjson.dumps(bad).decode())
    assert user[0] == "user" and "'2025-13' is not a real date" in user[1]
    assert [a["result"]["status"] for a in answer.actions if a["type"] == "generate_query"] == ["error", "success"]
    failed = answer.actions[0]["result"]
    assert "'2025-13' is not a real date" in failed["error"] and failed["totalRowCount"] == 0
    assert (failed["hasResults"], failed["csvResult"]) == (False, "")
    expected = direct(
        "SELECT p.category, SUM(o.quantity) FROM orders o LEFT JOIN products p ON o.product_id = p.product_id "
        "WHERE o.status = 'completed' GROUP BY 1 ORDER BY 2 DESC"
    )
    assert [tuple(row) for row in answer.rows] == [tuple(row) for row in expected]
    assert answer.usage.prompt_tokens == 30  # three calls of 10


async def test_no_query_after_the_repairs_allowed_fails_with_the_last_error(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    bad = {"fields": ["orders.revenue"], "filters": {"orders.order_date": {"to": "2025-02-30"}}}
    server.script(reply(bad), reply(bad))

    with pytest.raises(AnswerFailedError, match=r"no query ran after 1 repair: .*not a real date") as caught:
        await ask("revenue", model=model, llm=llm, topic_name="sales", max_repairs=1, now=NOW)

    assert len(server.requests) == 2
    assert [a["result"]["status"] for a in caught.value.details["actions"]] == ["error", "error"]


ATTACKS = [
    pytest.param("DROP TABLE orders", "DROP", id="drop"),
    pytest.param("DELETE FROM orders", "DELETE", id="delete"),
    pytest.param("INSERT INTO orders SELECT * FROM orders", "INSERT", id="insert"),
    pytest.param("UPDATE orders SET amount = 0", "UPDATE", id="update"),
    pytest.param("SELECT 1 FROM orders; DROP TABLE orders", "exactly one statement", id="two-statements"),
    pytest.param("SELECT * FROM read_csv('/etc/passwd')", "not allowed", id="read-file"),
    pytest.param("ATTACH '/tmp/x.db' AS x", "not ATTACH", id="attach"),
    pytest.param("COPY orders TO '/tmp/out.csv'", "not COPY", id="copy"),
    pytest.param("SELECT * FROM duckdb_settings()", "not allowed", id="catalog-function"),
    pytest.param("SELECT * FROM information_schema.tables", "not one of this topic's tables", id="catalog"),
    pytest.param("SELECT nosuch FROM orders", "nosuch", id="execution-error"),
]


@pytest.mark.parametrize(("attack", "reason"), ATTACKS)
async def test_sql_mode_refuses_attacks_and_repairs(
    model: DemoModel,
    server: ScriptedOpenAI,
    llm: OpenAICompatModel,
    direct: Direct,
    attack: str,
    reason: str,
) -> None:
    orders_before = direct("SELECT COUNT(*), SUM(amount) FROM orders")
    good = "SELECT status, COUNT(*) AS orders FROM orders GROUP BY status ORDER BY status"
    server.script(reply({"sql": attack}), reply({"sql": good}), completion("Most orders are completed."))

    answer = await ask("How many orders per status?", model=model, llm=llm, topic_name="sales", sql_mode="sql", now=NOW)

    system = server.bodies()[0]["messages"][0]["content"]
    assert "orders: orders" in system and "revenue = sum(amount)" in system and "Join regions ON" in system
    repair = server.bodies()[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": orjson.dumps({"sql": attack}).decode()}
    assert repair[-1]["role"] == "user" and reason in repair[-1]["content"]
    statuses = [a["result"]["status"] for a in answer.actions if a["type"] == "generate_query"]
    assert statuses == ["error", "success"]
    assert reason in answer.actions[0]["result"]["error"]
    assert answer.sql.startswith("SELECT status, COUNT(*) AS orders FROM orders")
    assert "LIMIT" in answer.sql  # the guard's row limit
    assert answer.rows == [list(row) for row in direct(good)]
    assert answer.query == {"topic": "sales", "table": "sales", "fields": [], "sql": answer.sql}
    assert direct("SELECT COUNT(*), SUM(amount) FROM orders") == orders_before


async def test_rows_past_max_rows_are_counted_and_noted(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    server.script(reply({"fields": ["customers.name", "orders.revenue"]}), completion("Many customers bought."))

    answer = await ask("Revenue per customer", model=model, llm=llm, topic_name="sales", max_rows=5, now=NOW)

    assert len(answer.rows) == 5 and answer.truncated
    assert answer.total_row_count > 5
    assert answer.markdown.endswith(f"_Showing the first 5 of {answer.total_row_count:,} rows._")
    assert answer.actions[0]["result"]["csvResultWasTruncated"] is True


async def test_conversation_history_is_in_the_prompt(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    history = [
        {"role": "user", "text": "What was revenue in 2024?"},
        {"role": "assistant", "text": "Revenue in 2024 was 1.2 million dollars."},
    ]
    server.script(reply({"fields": ["orders.revenue"]}), completion("Revenue in 2025 was higher."))

    await ask("And in 2025?", model=model, llm=llm, topic_name="sales", history=history, now=NOW)

    sent = messages(server.bodies()[0])
    assert sent[1:] == [
        ("user", "What was revenue in 2024?"),
        ("assistant", "Revenue in 2024 was 1.2 million dollars."),
        ("user", "And in 2025?"),
    ]
    assert "2025-01-01 to 2025-12-31" in sent[0][1]


async def test_earlier_questions_help_pick_the_topic(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    server.script(reply({"topic": "customers"}))

    topic, usage = await pick_topic(
        "and by segment?", model.semantic, llm, history=[{"role": "user", "text": "How many customers per region?"}]
    )

    assert (topic, usage.prompt_tokens) == ("customers", 10)
    user = server.bodies()[0]["messages"][1]["content"]
    assert user == "Earlier question: How many customers per region?\nQuestion: and by segment?"


async def test_the_only_visible_topic_needs_no_model_call(
    demo_path: Path, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    hidden = demo_model_files()["customers.topic"] + "hidden: true\n"
    model = demo_model(demo_path, **{"customers.topic": hidden})
    server.script(reply({"fields": ["orders.order_count"]}), completion("There were orders."))

    answer = await ask("How many orders?", model=model, llm=llm, now=NOW)

    assert answer.topic == "sales" and len(server.requests) == 2


async def test_an_unknown_topic_is_not_found(model: DemoModel, llm: OpenAICompatModel) -> None:
    with pytest.raises(NotFoundError, match="topic 'nope' not found"):
        await ask("revenue", model=model, llm=llm, topic_name="nope", now=NOW)


async def test_a_failed_headline_falls_back_to_code(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel, direct: Direct
) -> None:
    server.script(reply({"fields": ["orders.revenue"]}), failure(400, "context length exceeded"))

    answer = await ask("Total revenue in 2025", model=model, llm=llm, topic_name="sales", now=NOW)

    [(total,)] = direct("SELECT SUM(amount) FROM orders WHERE status = 'completed' AND year(order_date) = 2025")
    assert answer.result_summary == f"The query returned 1 row. Revenue: {format_value(float(total))}."
    assert answer.markdown.startswith(answer.result_summary + "\n\n| Revenue |")
    last = answer.actions[-1]
    assert last == {"type": "summarize", "message": answer.result_summary, "timestamp": last["timestamp"]}


async def test_a_time_grain_brings_its_date_field(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    server.script(reply({"fields": ["orders.revenue"]}), completion("Revenue rose."))

    answer = await ask("Monthly revenue in 2025", model=model, llm=llm, topic_name="sales", now=NOW)

    assert answer.columns == ["orders.order_date[month]", "orders.revenue"]
    assert [row[0] for row in answer.rows] == [f"2025-{month:02d}-01" for month in range(1, 13)]


async def test_a_headline_with_invented_figures_or_loops_is_replaced_by_code(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    server.script(
        reply({"fields": ["regions.name", "orders.order_count"]}),
        completion("North America placed 123,456 orders."),
        reply({"fields": ["regions.name", "orders.order_count"]}),
        completion("Europe: 12 Asia: 46 Europe: 12 Asia: 46 Europe: 12 Asia: 46 Europe: 12 Asia: 46"),
    )

    for _ in range(2):
        answer = await ask("Orders per region in 2025", model=model, llm=llm, topic_name="sales", now=NOW)
        assert answer.result_summary.startswith("The query returned 6 rows. Total Orders: ")


def test_relevance_ranks_fields_by_the_question_words(model: DemoModel) -> None:
    fields = topic_fields(model.semantic, "sales")

    relevance = field_relevance("Which product categories sell the most units?", fields)

    ranked = sorted(fields, key=lambda key: -relevance[key])
    assert {"orders.units_sold", "products.category"} <= set(ranked[:4])
    assert relevance["orders.revenue"] == 0
    assert relevance["orders.product_id"] == 0  # keys count only when the question says "id"
    assert field_relevance("revenue by product id", fields)["orders.product_id"] > 0


@pytest.mark.parametrize(
    ("history", "problem"),
    [
        ("not a list", "history must be a list"),
        ([{"role": "system", "text": "x"}], "history turn 0 needs role"),
        ([{"role": "user"}], "history turn 0 needs role"),
        (["text"], "history turn 0 is not an object"),
    ],
)
async def test_bad_history_is_refused(model: DemoModel, llm: OpenAICompatModel, history: Any, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        await ask("revenue", model=model, llm=llm, topic_name="sales", history=history)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"max_rows": 0}, "max_rows"),
        ({"max_rows": 10_001}, "max_rows"),
        ({"max_repairs": 6}, "max_repairs"),
    ],
)
async def test_bounds_are_checked(model: DemoModel, llm: OpenAICompatModel, options: Any, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        await ask("revenue", model=model, llm=llm, topic_name="sales", **options)
    with pytest.raises(ValidationError, match="empty"):
        await ask("  ", model=model, llm=llm)
    with pytest.raises(ValidationError, match="over 10000 characters"):
        await ask("x" * 10_001, model=model, llm=llm)


async def test_generate_query_without_running_it(
    demo_path: Path, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    # The connection names a file that is not there: a query that ran would fail.
    model = DemoModel(demo_model(demo_path).semantic, ConnectionSpec("duckdb", str(demo_path) + ".missing"))
    server.script(
        reply({"fields": ["orders.revenue"], "filters": {"orders.order_date": {"from": "2025-00"}}}),
        reply({"fields": ["orders.revenue"], "filters": {"orders.order_date": {"from": "2025-06"}}}),
    )

    generated = await generate_query("Revenue by segment", model=model, llm=llm, topic_name="sales", run_query=False)

    assert generated.query["fields"] == ["customers.segment", "orders.revenue"]
    assert generated.query["filters"] == {"orders.order_date": {"from": "2025-06"}}
    assert "'2025-06-01'" in generated.sql and generated.query["sql"] == generated.sql
    assert (generated.rows, generated.columns, generated.total_row_count) == ([], [], 0)
    assert [a["result"]["status"] for a in generated.actions] == ["error", "success"]
    assert generated.actions[1]["message"] == "Wrote the query Revenue by Segment (repair 1 of 2)."
    assert generated.usage.prompt_tokens == 20


async def test_generate_query_runs_it_by_default(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel
) -> None:
    server.script(reply({"fields": ["customers.segment", "customers.customer_count"]}))

    generated = await generate_query("Customers by segment", model=model, llm=llm, topic_name="customers")

    assert generated.columns == ["customers.segment", "customers.customer_count"]
    assert sum(row[1] for row in generated.rows) == 2000 and generated.total_row_count == 3


@pytest.mark.parametrize(
    ("question", "carried"),
    [
        ("Which region had the most revenue?", True),
        ("Which region had the most revenue in 2024?", False),  # its own range wins
        ("Which region had the most revenue of all time?", False),
    ],
)
def test_a_follow_up_keeps_the_earlier_time_range_unless_it_names_one(
    model: DemoModel, question: str, carried: bool
) -> None:
    topic = model.semantic.topics["sales"]
    earlier = ["Analyze sales trends by region for the past year"]
    hints = resolve_hints(model.semantic, topic, question, NOW, earlier)
    past_year = (dt.date(2025, 11, 23), dt.date(2026, 11, 23))
    found = (hints.date_range.start, hints.date_range.end) if hints.date_range else None
    assert (found == past_year) is carried, found
    assert resolve_hints(model.semantic, topic, question, NOW).date_range is None or not carried


def test_values_the_question_names_are_found_as_whole_words_longest_first() -> None:
    index = {
        "regions.name": ["Europe", "North America", "Latin America", "Asia Pacific"],
        "orders.status": ["completed", "returned"],
    }
    assert named_values("And only for europe?", index) == {"regions.name": ("Europe",)}
    assert named_values("North America against Latin America, returned orders", index) == {
        "regions.name": ("North America", "Latin America"),
        "orders.status": ("returned",),
    }
    assert named_values("Europeans and America", index) == {}  # whole words only, no part of a longer value


async def test_a_follow_up_naming_a_value_filters_on_it_with_the_earlier_period(
    model: DemoModel, server: ScriptedOpenAI, llm: OpenAICompatModel, direct: Direct
) -> None:
    """After "sales by region for the past year", "And only for Europe?" means Europe over that year, whatever a
    weak model fills in: code reads the topic's values and the earlier question."""
    server.script(reply({"fields": ["regions.name"]}), completion("Europe sold steadily."))
    history = [
        {"role": "user", "text": "Analyze sales trends by region for the past year"},
        {"role": "assistant", "text": "North America led."},
    ]

    answer = await ask("And only for Europe?", model=model, llm=llm, topic_name="sales", history=history, now=NOW)

    assert answer.query["filters"]["regions.name"] == "Europe"
    assert answer.query["time_grain"] == "month"  # "trends" asked before: the same analysis, narrowed
    assert {row[1] for row in answer.rows} == {"Europe"} and len(answer.rows) == 12
    expected = [row for row in direct(REVENUE_BY_REGION) if row[0] == "Europe"]
    assert sum(row[-1] for row in answer.rows) == pytest.approx(float(expected[0][1]))
