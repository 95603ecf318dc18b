"""`LanguageModels`: which provider a name picks, the errors for unknown or unconfigured ones, and a real call
through the OpenAI-compatible provider to the scripted server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.llm.scripted_openai import MODEL, ScriptedOpenAI, completion

from conveyor.errors import ValidationError
from conveyor.llm import ChatMessage, ChatRequest, LanguageModels
from conveyor.llm.local import LocalModel
from conveyor.llm.openai_compat import OpenAICompatModel
from conveyor.net import GuardedClient
from conveyor.settings import LlmSettings, NetSettings, Settings


@pytest.fixture
async def http() -> AsyncIterator[GuardedClient]:
    async with GuardedClient(NetSettings(allow_cidrs=["127.0.0.0/8"])) as client:
        yield client


async def test_the_default_is_the_local_model_made_once(http: GuardedClient) -> None:
    models = LanguageModels(LlmSettings(), http)
    model = models.get()
    assert isinstance(model, LocalModel)
    assert models.get("default") is model and models.get("local") is model and models.get("") is model
    assert model.loads == 0  # made, not loaded: the weights load on the first call


async def test_local_settings_reach_the_local_model(http: GuardedClient) -> None:
    settings = LlmSettings(
        local_model_path="/models/other.gguf", local_context_tokens=4096, local_max_tokens=64, local_threads=1
    )
    model = LanguageModels(settings, http).get("local")
    assert isinstance(model, LocalModel)
    assert (model.model_path, model.context_tokens, model.max_tokens, model.threads) == (
        "/models/other.gguf",
        4096,
        64,
        1,
    )


async def test_openai_without_a_base_url_names_the_setting(http: GuardedClient) -> None:
    models = LanguageModels(LlmSettings(), http)
    with pytest.raises(ValidationError, match="CONVEYOR_LLM__BASE_URL") as info:
        models.get("openai")
    assert info.value.status == 422


@pytest.mark.parametrize("name", ["anthropic", "LOCAL", "openai "])
async def test_an_unknown_provider_is_refused_listing_the_known_ones(http: GuardedClient, name: str) -> None:
    with pytest.raises(ValidationError, match=r"unknown language model provider .*known: default, local, openai"):
        LanguageModels(LlmSettings(), http).get(name)


async def test_the_configured_default_and_a_per_block_choice(http: GuardedClient) -> None:
    async with ScriptedOpenAI() as server:
        settings = LlmSettings(provider="openai", base_url=server.base_url, model=MODEL, prices={MODEL: (1.0, 2.0)})
        models = LanguageModels(settings, http)
        default = models.get()
        assert isinstance(default, OpenAICompatModel) and models.get("openai") is default
        assert isinstance(models.get("local"), LocalModel)  # a block may still ask for the local one

        server.script(completion("Hi there.", usage=(100, 20)))
        result = await default.chat(ChatRequest((ChatMessage("user", "Hello"),), model="picked-by-block"))
        assert result.text == "Hi there." and result.usage.total_tokens == 120
        assert server.bodies()[0]["model"] == "picked-by-block"
        await models.aclose()
        assert models.get() is not default  # closed: made again on the next use


def test_settings_take_the_local_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_LLM__LOCAL_MODEL_PATH", "/srv/models/x.gguf")
    monkeypatch.setenv("CONVEYOR_LLM__LOCAL_CONTEXT_TOKENS", "1024")
    llm = Settings().llm
    assert (llm.local_model_path, llm.local_context_tokens, llm.local_max_tokens) == ("/srv/models/x.gguf", 1024, 512)
    monkeypatch.setenv("CONVEYOR_LLM__LOCAL_CONTEXT_TOKENS", "10")
    with pytest.raises(ValueError, match="local_context_tokens"):
        Settings()
