"""The OpenAI-compatible provider against a scripted server on loopback: answers, usage, retries, repairs, streams."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr
from pydantic import ValidationError as SettingsError
from tests.llm.scripted_openai import MODEL, ScriptedOpenAI, completion, failure, sse
from tests.receiver import Reply

from conveyor.blocks.base import UsageMeter
from conveyor.errors import ModelError, OutboundBlockedError, ValidationError
from conveyor.llm import ChatMessage, ChatRequest
from conveyor.llm.openai_compat import OpenAICompatModel
from conveyor.net import GuardedClient
from conveyor.settings import LlmSettings, NetSettings, Settings

KEY = "sk-test-0123456789abcdef"
ASK = ChatRequest(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Say hello.")), temperature=0.2)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture
async def server() -> AsyncIterator[ScriptedOpenAI]:
    async with ScriptedOpenAI() as scripted:
        yield scripted


@pytest.fixture
async def http() -> AsyncIterator[GuardedClient]:
    async with GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as client:
        yield client


def make_model(server: ScriptedOpenAI, http: GuardedClient, **options: Any) -> OpenAICompatModel:
    options.setdefault("backoff_s", 0.01)  # keeps retry tests short; Retry-After still sets its own floor
    return OpenAICompatModel(http, server.base_url, SecretStr(KEY), MODEL, **options)


async def test_chat_returns_text_usage_and_cost_onto_the_job_meter(server: ScriptedOpenAI, http: GuardedClient) -> None:
    server.script(completion("Hello!", usage=(1200, 300)))
    model = make_model(server, http, prices={MODEL: (2.0, 8.0)})

    result = await model.chat(ASK)

    assert (result.text, result.finish_reason, result.model, result.parsed) == ("Hello!", "stop", MODEL, None)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.reported) == (1200, 300, True)
    assert result.usage.cost == pytest.approx((1200 * 2.0 + 300 * 8.0) / 1_000_000)
    [seen] = server.requests
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert server.bodies() == [
        {
            "model": MODEL,
            "temperature": 0.2,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        }
    ]
    meter = UsageMeter()
    meter.add("node-1", **{k: getattr(result.usage, k) for k in ("prompt_tokens", "completion_tokens", "cost")})
    assert meter.totals()["total_tokens"] == 1500
    assert meter.totals()["cost"] == pytest.approx(0.0048)


@pytest.mark.parametrize(
    ("usage", "prices", "expected"),
    [
        pytest.param(None, {MODEL: (2.0, 8.0)}, (0, 0, 0.0, False), id="no-usage-reported"),
        pytest.param((100, 50), {"another-model": (2.0, 8.0)}, (100, 50, 0.0, True), id="unpriced-model"),
    ],
)
async def test_missing_usage_or_price_counts_zero(
    server: ScriptedOpenAI,
    http: GuardedClient,
    usage: tuple[int, int] | None,
    prices: dict[str, tuple[float, float]],
    expected: tuple[int, int, float, bool],
) -> None:
    server.script(completion("ok", usage=usage))
    got = (await make_model(server, http, prices=prices).chat(ASK)).usage
    assert (got.prompt_tokens, got.completion_tokens, got.cost, got.reported) == expected


async def test_bearer_key_is_sent_but_never_in_errors_or_logs(
    server: ScriptedOpenAI, http: GuardedClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Providers quote the key they were given, as OpenAI's "Incorrect API key provided: sk-…" does.
    server.script(completion("ok"), failure(401, f"Incorrect API key provided: {KEY}"))
    model = make_model(server, http)

    await model.chat(ASK)
    with pytest.raises(ModelError) as caught:
        await model.chat(ASK)

    assert [seen.headers["authorization"] for seen in server.requests] == [f"Bearer {KEY}"] * 2
    assert "HTTP 401" in caught.value.message and "Incorrect API key provided: ***" in caught.value.message
    assert caught.value.details == {"status": 401, "attempts": 1}  # a 401 is not retried
    assert KEY not in f"{caught.value} {caught.value.message} {caught.value.details!r}"
    assert KEY not in caplog.text


async def test_429_waits_for_retry_after_then_succeeds(server: ScriptedOpenAI, http: GuardedClient) -> None:
    server.script(failure(429, "slow down", {"Retry-After": "1"}), completion("second time lucky"))

    result = await make_model(server, http).chat(ASK)

    assert result.text == "second time lucky"
    assert len(server.requests) == 2
    assert server.bodies()[0] == server.bodies()[1]  # the same request sent again


async def test_500s_give_up_after_max_retries_plus_one_attempts(server: ScriptedOpenAI, http: GuardedClient) -> None:
    server.script(*[failure(500, "boom")] * 4)

    with pytest.raises(ModelError) as caught:
        await make_model(server, http, max_retries=2).chat(ASK)

    assert len(server.requests) == 3
    assert server.unanswered() == 1
    assert caught.value.details == {"status": 500, "attempts": 3}
    assert "HTTP 500: boom (after 3 attempts)" in caught.value.message


async def test_failed_connections_are_retried_then_a_model_error(http: GuardedClient) -> None:
    with socket.socket() as probe:  # a port nothing listens on: every connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = OpenAICompatModel(http, f"http://127.0.0.1:{port}/v1", None, MODEL, max_retries=2, backoff_s=0.01)

    with pytest.raises(ModelError) as caught:
        await model.chat(ASK)

    assert caught.value.details == {"attempts": 3}
    assert caught.value.message.startswith("127.0.0.1: ConnectError")
    assert caught.value.message.endswith("(after 3 attempts)")


async def test_invalid_json_is_repaired_once_naming_the_problem(server: ScriptedOpenAI, http: GuardedClient) -> None:
    server.script(completion('{"answer": 4', usage=(20, 4)), completion('{"answer": 42}', usage=(40, 5)))
    request = ChatRequest(messages=(ChatMessage("user", "The answer?"),), json_schema=SCHEMA)

    result = await make_model(server, http, prices={MODEL: (1.0, 1.0)}).chat(request)

    assert result.parsed == {"answer": 42}
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (60, 9)  # both calls count
    assert result.usage.cost == pytest.approx(69 / 1_000_000)
    first, second = server.bodies()
    expected_format = {"type": "json_schema", "json_schema": {"name": "result", "schema": SCHEMA, "strict": True}}
    assert first["response_format"] == second["response_format"] == expected_format
    assert second["messages"][:2] == [
        {"role": "user", "content": "The answer?"},
        {"role": "assistant", "content": '{"answer": 4'},
    ]
    assert len(second["messages"]) == 3
    assert second["messages"][2]["role"] == "user"
    assert "not valid JSON" in second["messages"][2]["content"]


async def test_output_still_off_schema_after_repairs_is_a_model_error(
    server: ScriptedOpenAI, http: GuardedClient
) -> None:
    server.script(completion('{"answer": "x"}'), completion('{"answer": "still x"}'))
    request = ChatRequest(messages=(ChatMessage("user", "The answer?"),), json_schema=SCHEMA)

    with pytest.raises(ModelError) as caught:
        await make_model(server, http, max_repairs=1).chat(request)

    assert len(server.requests) == 2
    assert "at ['answer']" in caught.value.message and "is not of type 'integer'" in caught.value.message
    assert "after 1 repairs" in caught.value.message
    assert "at ['answer']" in server.bodies()[1]["messages"][-1]["content"]


async def test_without_native_schema_support_the_schema_goes_in_a_system_message(
    server: ScriptedOpenAI, http: GuardedClient
) -> None:
    server.script(completion('{"answer": 1}'))
    request = ChatRequest(messages=(ChatMessage("user", "?"),), json_schema=SCHEMA)

    result = await make_model(server, http, native_schema=False).chat(request)

    assert result.parsed == {"answer": 1}
    [body] = server.bodies()
    assert "response_format" not in body
    assert body["messages"][0]["role"] == "system"
    assert '"required":["answer"]' in body["messages"][0]["content"]


async def test_a_schema_that_is_not_json_schema_is_refused_before_any_call(
    server: ScriptedOpenAI, http: GuardedClient
) -> None:
    request = ChatRequest(messages=(ChatMessage("user", "?"),), json_schema={"type": "no-such-type"})
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        await make_model(server, http).chat(request)
    assert server.requests == []


async def test_stream_yields_deltas_then_usage_from_the_last_chunk(server: ScriptedOpenAI, http: GuardedClient) -> None:
    server.script(failure(503, "warming up"), sse(["Hel", "lo", ", world"], usage=(7, 3)))

    async with make_model(server, http, prices={MODEL: (1.0, 2.0)}).stream(ASK) as deltas:
        received = [delta async for delta in deltas]

    assert received == ["Hel", "lo", ", world"]
    assert deltas.result is not None
    assert (deltas.result.text, deltas.result.finish_reason) == ("Hello, world", "stop")
    usage = deltas.result.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reported) == (7, 3, True)
    assert usage.cost == pytest.approx((7 * 1.0 + 3 * 2.0) / 1_000_000)
    assert len(server.requests) == 2  # the 503 came before any delta, so it was retried
    body = server.bodies()[1]
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})


async def test_stream_with_a_schema_parses_the_whole_answer(server: ScriptedOpenAI, http: GuardedClient) -> None:
    server.script(sse(['{"ans', 'wer": 7}']))
    request = ChatRequest(messages=(ChatMessage("user", "?"),), json_schema=SCHEMA)

    async with make_model(server, http).stream(request) as deltas:
        assert [delta async for delta in deltas] == ['{"ans', 'wer": 7}']

    assert deltas.result is not None and deltas.result.parsed == {"answer": 7}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        pytest.param(b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n', "ended before", id="cut-short"),
        pytest.param(b'data: {"error": {"message": "overloaded"}}\n\n', "mid-answer: overloaded", id="error-event"),
        pytest.param(b'data: {"choices": [7]}\n\ndata: [DONE]\n\n', "not a chat completion chunk", id="bad-chunk"),
    ],
)
async def test_a_broken_stream_is_a_model_error(
    server: ScriptedOpenAI, http: GuardedClient, body: bytes, problem: str
) -> None:
    server.script(Reply(body=body, content_type="text/event-stream"))

    with pytest.raises(ModelError, match=problem):
        async with make_model(server, http).stream(ASK) as deltas:
            async for _ in deltas:
                pass
    assert len(server.requests) == 1


@pytest.mark.parametrize("streamed", [False, True], ids=["chat", "stream"])
async def test_an_answer_over_the_size_limit_is_a_model_error_not_retried(
    server: ScriptedOpenAI, http: GuardedClient, streamed: bool
) -> None:
    server.script(sse(["x" * 5000]) if streamed else completion("x" * 5000))
    model = make_model(server, http, max_response_bytes=1024)

    with pytest.raises(ModelError, match="over 1024 bytes"):
        if streamed:
            async with model.stream(ASK) as deltas:
                async for _ in deltas:
                    pass
        else:
            await model.chat(ASK)
    assert len(server.requests) == 1


async def test_a_loopback_base_url_is_refused_without_allow_cidrs(server: ScriptedOpenAI) -> None:
    server.script(completion("never sent"))
    async with GuardedClient(NetSettings()) as guarded:
        model = make_model(server, guarded)
        with pytest.raises(OutboundBlockedError, match="loopback"):
            await model.chat(ASK)
    assert server.requests == []


async def test_built_from_settings_read_from_the_environment(
    server: ScriptedOpenAI, http: GuardedClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_LLM__PROVIDER", "openai")
    monkeypatch.setenv("CONVEYOR_LLM__BASE_URL", server.base_url + "/")
    monkeypatch.setenv("CONVEYOR_LLM__API_KEY", KEY)
    monkeypatch.setenv("CONVEYOR_LLM__MODEL", MODEL)
    monkeypatch.setenv("CONVEYOR_LLM__PRICES", '{"scripted-model": [3, 15]}')
    settings = Settings().llm
    assert settings.prices == {MODEL: (3.0, 15.0)}
    assert KEY not in repr(settings)
    server.script(completion("configured", usage=(1_000_000, 0)))

    result = await OpenAICompatModel.from_settings(http, settings).chat(ASK)

    assert result.text == "configured"
    assert result.usage.cost == pytest.approx(3.0)
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_openai_provider_needs_a_base_url_and_model() -> None:
    with pytest.raises(SettingsError, match="CONVEYOR_LLM__BASE_URL"):
        LlmSettings(provider="openai")
    with pytest.raises(SettingsError, match="http:// or https://"):
        LlmSettings(base_url="ftp://example.com/v1")
