"""The `ask_data` block: a real model store (SQLite) holding the demo model, the scripted OpenAI-compatible server
behind `LanguageModels`, outputs, metering, progress events and how failures fail the node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.llm.scripted_openai import MODEL, ScriptedOpenAI, completion, failure

from conveyor.analytics.demo import build_demo_database, demo_model_files
from conveyor.analytics.store import ModelService
from conveyor.blocks import default_registry
from conveyor.blocks.ask_data import AskData, AskDataConfig
from conveyor.blocks.base import BlockContext, BlockError, BlockInputError
from conveyor.llm.models import LanguageModels
from conveyor.net import GuardedClient
from conveyor.settings import LlmSettings, NetSettings
from conveyor.store.db import Database, open_database
from conveyor.store.migrate import upgrade

BLOCK = AskData()
OUTPUTS = {"markdown", "sql", "rows", "columns", "topic", "actions", "query", "result_summary"}


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    build_demo_database(path)
    return path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    upgrade(url)
    db = open_database(url)
    await db.connect()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def models(store: Database, demo_path: Path) -> ModelService:
    return ModelService(store)


@pytest.fixture
async def model_id(models: ModelService, demo_path: Path) -> str:
    connection = await models.add_connection("demo-db", "duckdb", str(demo_path))
    row = await models.create_model("demo", connection["id"], files=demo_model_files())
    return str(row["id"])


@pytest.fixture
async def server() -> AsyncIterator[ScriptedOpenAI]:
    async with ScriptedOpenAI() as scripted:
        yield scripted


@pytest.fixture
async def llm(server: ScriptedOpenAI) -> AsyncIterator[LanguageModels]:
    settings = LlmSettings(
        provider="openai", base_url=server.base_url, model=MODEL, max_retries=0, prices={MODEL: (1.0, 2.0)}
    )
    async with GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as http:
        models = LanguageModels(settings, http)
        yield models
        await models.aclose()


@pytest.fixture
def events() -> list[tuple[str, str, dict[str, Any]]]:
    return []


@pytest.fixture
def ctx(
    make_ctx: Callable[..., BlockContext],
    models: ModelService,
    llm: LanguageModels,
    events: list[tuple[str, str, dict[str, Any]]],
) -> BlockContext:
    return make_ctx(llm=llm, analytics=models, emit=lambda *event: events.append(event))


def reply(value: Any, usage: tuple[int, int] = (10, 5)) -> Any:
    return completion(orjson.dumps(value).decode(), usage=usage)


def test_ports_and_registration() -> None:
    inputs, outputs = BLOCK.ports(AskDataConfig(), [])

    assert {name for name, port in inputs.items() if port.required} == {"model_id", "question"}
    assert set(inputs) == {"model_id", "branch_id", "topic_name", "question", "history"}
    assert set(outputs) == OUTPUTS
    assert "ask_data" in default_registry()


async def test_answers_meters_and_reports_progress(
    ctx: BlockContext,
    server: ScriptedOpenAI,
    model_id: str,
    events: list[tuple[str, str, dict[str, Any]]],
) -> None:
    server.script(
        reply({"topic": "sales"}, usage=(100, 2)),  # "How did we do" names no field: the model picks the topic
        reply({"fields": ["orders.order_count"]}, usage=(500, 20)),
        completion("There were orders in 2025.", usage=(200, 10)),
    )
    history = orjson.dumps([{"role": "user", "text": "Hello"}, {"role": "assistant", "text": "Hi"}]).decode()

    outputs = await BLOCK.run(
        ctx, AskDataConfig(), {"model_id": model_id, "question": "How did we do in 2025?", "history": history}
    )

    assert set(outputs) == OUTPUTS
    assert outputs["topic"] == "sales"
    assert outputs["columns"] == ["orders.order_count"]
    assert outputs["result_summary"] == "There were orders in 2025."
    assert outputs["markdown"].startswith("There were orders in 2025.\n\n- Orders: ")
    assert outputs["query"]["sql"] == outputs["sql"] and "2025-01-01" in outputs["sql"]
    assert [action["type"] for action in outputs["actions"]] == ["generate_query", "summarize"]
    [[count]] = outputs["rows"]
    assert isinstance(count, int) and count > 0
    orjson.dumps(outputs)  # every output is JSON
    assert ctx.usage.totals() == {
        "prompt_tokens": 800,
        "completion_tokens": 32,
        "total_tokens": 832,
        "cost": pytest.approx((800 + 2 * 32) / 1_000_000),
    }
    assert [m["content"] for m in server.bodies()[1]["messages"][1:]] == ["Hello", "Hi", "How did we do in 2025?"]
    progress = [data for kind, node, data in events if kind == "progress" and node == "node-test"]
    assert [data["step"] for data in progress] == ["pick_topic", "generate_query", "generate_query", "summarize"]
    assert progress[0]["message"] == "Using topic sales (chosen by the model)"


async def test_sql_mode_and_a_given_topic(ctx: BlockContext, server: ScriptedOpenAI, model_id: str) -> None:
    server.script(
        reply({"sql": "DROP TABLE orders"}),
        reply({"sql": "SELECT COUNT(*) AS n FROM orders"}),
        completion("40,000 orders."),
    )

    outputs = await BLOCK.run(
        ctx,
        AskDataConfig(sql_mode="sql", max_repairs=1),
        {"model_id": model_id, "topic_name": "sales", "question": "How many orders, all statuses?"},
    )

    assert outputs["rows"] == [[40_000]]
    assert [a["result"]["status"] for a in outputs["actions"][:2]] == ["error", "success"]
    assert ctx.usage.totals()["prompt_tokens"] == 30  # the failed attempt is metered too


async def test_usage_is_metered_even_when_no_query_runs(
    ctx: BlockContext, server: ScriptedOpenAI, model_id: str
) -> None:
    server.script(reply({"sql": "DELETE FROM orders"}, usage=(7, 1)))

    with pytest.raises(
        BlockInputError, match="no query ran after 0 repairs: only a SELECT is allowed, not DELETE"
    ) as caught:
        await BLOCK.run(
            ctx,
            AskDataConfig(sql_mode="sql", max_repairs=0),
            {"model_id": model_id, "topic_name": "sales", "question": "Remove every order"},
        )

    assert caught.value.retryable is False
    assert ctx.usage.totals()["prompt_tokens"] == 7


@pytest.mark.parametrize(
    ("inputs", "problem"),
    [
        ({"question": "revenue?"}, "needs input 'model_id'"),
        ({"model_id": "m"}, "needs input 'question'"),
        ({"model_id": "m", "question": 5}, "'question' must be text"),
        ({"model_id": "m", "question": "q", "history": "{"}, "history is not JSON"),
        ({"model_id": "m", "question": "q", "history": {"role": "user"}}, "history must be a list"),
        ({"model_id": "x" * 300, "question": "q"}, "longer than 256"),
    ],
)
async def test_bad_inputs_fail_without_retry(ctx: BlockContext, inputs: dict[str, Any], problem: str) -> None:
    with pytest.raises(BlockInputError, match=problem):
        await BLOCK.run(ctx, AskDataConfig(), inputs)


async def test_unknown_model_and_topic_fail_without_retry(ctx: BlockContext, model_id: str) -> None:
    with pytest.raises(BlockInputError, match="not found"):
        await BLOCK.run(ctx, AskDataConfig(), {"model_id": "0" * 8 + "-0000-0000-0000-" + "0" * 12, "question": "q"})
    with pytest.raises(BlockInputError, match="topic 'nope' not found"):
        await BLOCK.run(ctx, AskDataConfig(), {"model_id": model_id, "topic_name": "nope", "question": "q"})


async def test_a_busy_provider_fails_the_node_as_retryable(
    ctx: BlockContext, server: ScriptedOpenAI, model_id: str
) -> None:
    server.script(failure(503, "overloaded"))

    with pytest.raises(BlockError, match="HTTP 503") as caught:
        await BLOCK.run(ctx, AskDataConfig(), {"model_id": model_id, "topic_name": "sales", "question": "revenue?"})

    assert caught.value.retryable is True


async def test_without_models_or_language_models_the_node_fails(make_ctx: Callable[..., BlockContext]) -> None:
    with pytest.raises(BlockError, match="not available here") as caught:
        await BLOCK.run(make_ctx(), AskDataConfig(), {"model_id": "m", "question": "q"})

    assert caught.value.retryable is False


def test_config_is_bounded() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        AskDataConfig(max_rows=10_001)
    with pytest.raises(ValueError, match="max_repairs"):
        AskDataConfig(max_repairs=6)
    with pytest.raises(ValueError, match="sql_mode"):
        AskDataConfig.model_validate({"sql_mode": "raw"})
