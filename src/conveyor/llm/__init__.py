"""Language models behind one interface (`ChatModel`): an OpenAI-compatible HTTP provider, usage and cost."""

from conveyor.llm.base import ChatMessage, ChatModel, ChatRequest, ChatResult, ChatStream, Usage

__all__ = ["ChatMessage", "ChatModel", "ChatRequest", "ChatResult", "ChatStream", "Usage"]
