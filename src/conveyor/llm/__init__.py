"""Language models behind one interface (`ChatModel`): an OpenAI-compatible HTTP provider, the bundled local model
(`conveyor.llm.local`, imported where used: llama-cpp-python is optional), usage and cost; `LanguageModels` picks
a provider by name."""

from conveyor.llm.base import ChatMessage, ChatModel, ChatRequest, ChatResult, ChatStream, Usage
from conveyor.llm.models import LanguageModels

__all__ = ["ChatMessage", "ChatModel", "ChatRequest", "ChatResult", "ChatStream", "LanguageModels", "Usage"]
