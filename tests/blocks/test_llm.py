"""`llm_chat` and `llm_structured`: configuration checked at save time, prompts rendered from inputs, usage metered,
errors as block errors; on the engine with the scripted OpenAI-compatible server, then through a real server
where the usage lands on the job, in GPTBots' `totalTokens`/`totalCost`, and a `progress` event is recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from pydantic import ValidationError as ConfigError
from tests.api.test_gptbots import INVOKE, _key, _keyed, _recipe
from tests.api.test_jobs import wait_result
from tests.conftest import LiveServer
from tests.llm.scripted_openai import MODEL, ScriptedOpenAI, completion, failure

from conveyor.blocks import default_registry
from conveyor.blocks.base import PortType, UsageMeter
from conveyor.blocks.llm import LlmChat, LlmStructured
from conveyor.engine.runner import Engine, NodeFailedError
from conveyor.errors import RecipeInvalidError
from conveyor.llm import LanguageModels
from conveyor.net import GuardedClient
from conveyor.recipes.graph import compile_recipe
from conveyor.settings import LimitsSettings, LlmSettings, NetSettings

ANSWER: dict[str, Any] = {
    "type": "object",
    "properties": {"mood": {"enum": ["happy", "sad"]}, "tags": {"type": "array", "maxItems": 2}},
    "required": ["mood"],
}
FIELDS = {"text": {"type": "text", "required": True}}


def recipe(block: str = "llm_chat", **config: Any) -> dict[str, Any]:
    """chat_input's text feeds the block's `question` variable; its text (or JSON) is the recipe's output."""
    output = {"objects": "ask.json"} if block == "llm_structured" else {"text": "ask.text"}
    config.setdefault("prompt", "{{ question }}")
    return {
        "name": "Ask",
        "nodes": {
            "start": {"block": "chat_input", "config": {"fields": FIELDS}},
            "ask": {"block": block, "config": config, "inputs": {"question": "start.text"}},
            "out": {"block": "recipe_output", "inputs": output},
        },
    }


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedOpenAI]:
    async with ScriptedOpenAI() as server:
        yield server


@pytest.fixture
async def engine(scripted: ScriptedOpenAI) -> AsyncIterator[Engine]:
    settings = LlmSettings(
        provider="openai", base_url=scripted.base_url, model=MODEL, max_retries=0, prices={MODEL: (3.0, 6.0)}
    )
    async with GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as http:
        yield Engine(
            files=None, http=http, limits=LimitsSettings(block_timeout_s=10), llm=LanguageModels(settings, http)
        )  # type: ignore[arg-type]


async def run(
    engine: Engine, doc: dict[str, Any], text: str, events: list[Any] | None = None
) -> tuple[dict[str, Any], UsageMeter, list[Any]]:
    usage, events = UsageMeter(), [] if events is None else events
    outputs = await engine.run(
        compile_recipe(doc, default_registry()),
        {"text": text},
        job_id="llm-test",
        usage=usage,
        emit=lambda kind, node, data: events.append((kind, node, data)),
    )
    return outputs, usage, events


# ------------------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"json_schema": {"type": "nope"}}, "not a valid JSON Schema"),
        ({"json_schema": {"enum": ["x" * 1000] * 200}}, "larger than 100000 bytes"),
        ({"provider": "anthropic"}, "Input should be 'default', 'local' or 'openai'"),
        ({"temperature": 2.5}, "less than or equal to 2"),
        ({"max_tokens": 0}, "greater than or equal to 1"),
        ({"model": "m" * 300}, "at most 256 characters"),
        ({"promt": "typo"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_configuration_is_refused_when_the_recipe_is_saved(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(RecipeInvalidError) as info:
        compile_recipe(recipe(**config), default_registry())
    assert problem in str(info.value.details)


def test_llm_structured_needs_a_schema() -> None:
    with pytest.raises(ConfigError, match="json_schema"):
        LlmStructured.Config()


def test_ports_come_from_the_templates_and_the_schema() -> None:
    block = LlmChat()
    config = LlmChat.Config(system="You are {{ persona }}.", prompt="{{ question }} {{ extra | default('') }}")
    inputs, outputs = block.ports(config, ["wired"])
    assert set(inputs) == {"wired", "persona", "question", "extra"}
    assert all(port.type == PortType.ANY for port in inputs.values())
    assert set(outputs) == {"text"}
    _, outputs = block.ports(LlmChat.Config(json_schema=ANSWER), [])
    assert {name: port.type for name, port in outputs.items()} == {"text": PortType.TEXT, "json": PortType.JSON}
    _, outputs = LlmStructured().ports(LlmStructured.Config(json_schema=ANSWER), [])
    assert set(outputs) == {"json"}


def test_progress_events_are_bounded_and_cannot_shadow_event_fields(make_ctx: Any) -> None:
    events: list[tuple[str, str, dict[str, Any]]] = []
    ctx = make_ctx(emit=lambda kind, node, data: events.append((kind, node, data)))
    ctx.progress("x" * 5000, {"kind": "finished", "id": 1, "node": "other", "at": 0, "step": 1})
    assert events == [("progress", "node-test", {"step": 1, "message": "x" * 2000})]
    for step in range(300):
        ctx.progress("step", {"step": step})
    assert len(events) == 200
    make_ctx().progress("no sink: nothing happens")


# ------------------------------------------------------------------------------------------------ on the engine


async def test_llm_chat_renders_its_prompts_and_meters_usage(engine: Engine, scripted: ScriptedOpenAI) -> None:
    scripted.script(completion("Blue, mostly.", usage=(1000, 200)))
    doc = recipe(system="Answer as {{ 'a poet' }}.", prompt="Q: {{ question }}", temperature=0.1, max_tokens=50)
    outputs, usage, events = await run(engine, doc, "Why is the sky blue?")
    assert outputs == {"text": "Blue, mostly."}
    [body] = scripted.bodies()
    assert body["messages"] == [
        {"role": "system", "content": "Answer as a poet."},
        {"role": "user", "content": "Q: Why is the sky blue?"},
    ]
    assert (body["model"], body["temperature"], body["max_tokens"]) == (MODEL, 0.1, 50)
    assert usage.by_node == {"ask": {"prompt_tokens": 1000, "completion_tokens": 200, "cost": pytest.approx(0.0042)}}
    progress = [(node, data) for kind, node, data in events if kind == "progress"]
    assert progress == [("ask", {"provider": "openai", "message": "asking the openai language model"})]


async def test_a_block_names_its_own_model(engine: Engine, scripted: ScriptedOpenAI) -> None:
    scripted.script(completion("ok"))
    await run(engine, recipe(prompt="{{ question }}", model="gpt-4o-mini", provider="openai"), "hi")
    assert scripted.bodies()[0]["model"] == "gpt-4o-mini"


async def test_a_json_schema_gives_parsed_json_and_repairs_count(engine: Engine, scripted: ScriptedOpenAI) -> None:
    scripted.script(
        completion('{"mood": "angry"}', usage=(50, 5)),  # not in the enum: sent back once
        completion('{"mood": "happy", "tags": ["sun"]}', usage=(80, 9)),
    )
    outputs, usage, _ = await run(engine, recipe("llm_structured", json_schema=ANSWER), "Great day!")
    assert outputs == {"objects": {"mood": "happy", "tags": ["sun"]}}
    assert usage.totals()["total_tokens"] == 144  # both calls
    assert "angry" in scripted.bodies()[1]["messages"][-2]["content"]


@pytest.mark.parametrize(
    ("reply", "retried", "message"),
    [
        (failure(503, "overloaded"), True, "HTTP 503"),
        (failure(429, "slow down", {"Retry-After": "0"}), True, "HTTP 429"),
        (failure(401, "bad key"), False, "HTTP 401"),
        (completion('{"mood": 1}'), False, "does not match the JSON schema"),
    ],
)
async def test_provider_failures_are_retried_only_when_transient(
    engine: Engine, scripted: ScriptedOpenAI, reply: Any, retried: bool, message: str
) -> None:
    """The node may be tried twice: a busy provider is asked again, a refusal or a bad answer fails at once."""
    scripted.script(*[reply] * 6)  # a schema'd answer is repaired twice per try
    doc = recipe("llm_structured", json_schema=ANSWER)
    doc["nodes"]["ask"]["retry"] = {"attempts": 2}
    with pytest.raises(NodeFailedError) as info:
        await run(engine, doc, "x", events := [])
    assert info.value.node == "ask" and message in info.value.message
    kinds = [kind for kind, node, _ in events if node == "ask"]
    assert kinds.count("retried") == (1 if retried else 0) and kinds[-1] == "failed"


async def test_an_unconfigured_provider_or_an_empty_prompt_fails_for_good(scripted: ScriptedOpenAI) -> None:
    async with GuardedClient() as http:
        llm = LanguageModels(LlmSettings(), http)
        engine = Engine(files=None, http=http, limits=LimitsSettings(), llm=llm)  # type: ignore[arg-type]
        with pytest.raises(NodeFailedError, match="CONVEYOR_LLM__BASE_URL") as info:
            await run(engine, recipe(provider="openai"), "x")
        assert info.value.error_type == "BlockInputError"  # never retried
        with pytest.raises(NodeFailedError, match="both empty once rendered"):
            await run(engine, recipe(prompt="{{ question | trim }}"), "   ")
        without = Engine(files=None, http=http, limits=LimitsSettings())  # type: ignore[arg-type]
        with pytest.raises(NodeFailedError, match="no language models are available here"):
            await run(without, recipe(), "x")
    assert scripted.requests == []


# ------------------------------------------------------------------------------------------ through a real server


async def test_usage_reaches_the_job_and_gptbots_totals(server_settings: Any, scripted: ScriptedOpenAI) -> None:
    settings = server_settings(
        llm={"provider": "openai", "base_url": scripted.base_url, "model": MODEL, "prices": {MODEL: [2.0, 10.0]}},
        net={"allow_cidrs": ["127.0.0.0/8"]},
    )
    scripted.script(completion("Because of Rayleigh scattering.", usage=(1500, 300)))
    async with LiveServer(settings) as live, await live.authed_client() as client:
        await _recipe(client, "ask", recipe(prompt="{{ question }}"))
        key = await _key(client, "recipe", "ask")
        async with _keyed(live, key) as keyed:
            response = await keyed.post(INVOKE, json={"input": {"text": "Why is the sky blue?"}})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["status"] == "SUCCEED", result
        assert result["output"] == {"text": "Because of Rayleigh scattering."}
        assert result["totalTokens"] == 1800 and result["totalCost"] == pytest.approx(0.006)

        job_id = result["workflowRunId"]
        detail = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert detail["usage"] == {
            "prompt_tokens": 1500,
            "completion_tokens": 300,
            "total_tokens": 1800,
            "cost": pytest.approx(0.006),
        }
        assert detail["nodes"]["ask"]["state"] == "succeeded"
        assert detail["nodes"]["ask"]["usage"]["prompt_tokens"] == 1500
        kinds = [(row["kind"], row["node"]) for row in await live.runtime.jobs.events(job_id)]
        assert ("progress", "ask") in kinds
        assert kinds.index(("started", "ask")) < kinds.index(("progress", "ask")) < kinds.index(("finished", "ask"))
        [row] = [row for row in await live.runtime.jobs.events(job_id) if row["kind"] == "progress"]
        assert orjson.loads(row["data"])["message"] == "asking the openai language model"
        assert (await wait_result(client, job_id))["state"] == "succeeded"
    assert scripted.unanswered() == 0
