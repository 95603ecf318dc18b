"""The language models a process offers, by provider: built once by the runtime from `settings.llm`.

Blocks ask for a provider by name (`default`, `local`, `openai`) and get a `ChatModel`. Providers are made on
first use: the local model's weights load on its first call, not here, so an idle server stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.errors import ValidationError
from conveyor.llm.base import ChatModel

if TYPE_CHECKING:
    from conveyor.net import GuardedClient
    from conveyor.settings import LlmSettings

PROVIDERS = ("local", "openai")


class LanguageModels:
    """Every provider of this process; `get(provider)` picks one (see the module docstring)."""

    def __init__(self, settings: LlmSettings, http: GuardedClient) -> None:
        self.settings = settings
        self.http = http
        self._models: dict[str, ChatModel] = {}

    @property
    def default_provider(self) -> str:
        return self.settings.provider

    def get(self, provider: str | None = None) -> ChatModel:
        """The model of `provider` (None or `default`: the configured one); `ValidationError` when it is unknown or
        not configured."""
        name: str = self.settings.provider if provider is None or provider in ("", "default") else provider
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = self._make(name)
        return model

    def _make(self, name: str) -> ChatModel:
        if name == "local":
            from conveyor.llm.local import LocalModel

            return LocalModel.from_settings(self.settings)
        if name == "openai":
            if not self.settings.base_url:
                raise ValidationError(
                    "the openai provider is not configured: set CONVEYOR_LLM__BASE_URL (settings llm.base_url) to "
                    "an OpenAI-compatible API's base URL, e.g. https://api.openai.com/v1"
                )
            from conveyor.llm.openai_compat import OpenAICompatModel

            return OpenAICompatModel.from_settings(self.http, self.settings)
        raise ValidationError(f"unknown language model provider {name!r}; known: default, {', '.join(PROVIDERS)}")

    async def aclose(self) -> None:
        """Forgets the providers. The HTTP client is the runtime's (closed there); the local model's weights stay
        loaded for the process (another runtime of it may use them)."""
        self._models.clear()
