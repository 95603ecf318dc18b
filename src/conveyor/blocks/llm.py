"""Language-model blocks: `llm_chat` (a system and a user prompt template, answered as text or schema'd JSON) and
`llm_structured` (the same with a required JSON schema, answered as JSON only).

The model comes from `ctx.llm` by the node's `provider` (`default` is the server's `CONVEYOR_LLM__PROVIDER`).
Prompts are Jinja2 templates rendered in the same sandbox as `text_template`, with the node's inputs as
variables. The tokens an answer took (repairs included) and their cost are metered onto the job, which is where
GPTBots' `totalTokens`/`totalCost` and the job's `usage` read them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, field_validator

from conveyor.blocks.base import BlockConfig, BlockContext, BlockError, BlockInputError, Port, PortType
from conveyor.blocks.sandbox import CompiledTemplate, LruCache, TemplateSandbox
from conveyor.errors import ModelError, ValidationError
from conveyor.llm.base import ChatMessage, ChatRequest, ChatResult, check_schema

MAX_TEMPLATE_CHARS = 200_000
MAX_SCHEMA_BYTES = 100_000
RENDER_TIMEOUT_S = 5.0
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _checked_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON schema that is valid and small, checked when the recipe is saved."""
    if value is None:
        return None
    if len(orjson.dumps(value)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"json_schema is larger than {MAX_SCHEMA_BYTES} bytes")
    try:
        check_schema(value)
    except ValidationError as exc:
        raise ValueError(exc.message) from None
    return value


class LlmChat:
    """Asks a language model, with the node's inputs as template variables.

    Config: `system` (Jinja2 template of the system message; empty sends none), `prompt` (Jinja2 template of the
    user message, default `{{ prompt }}`), `provider` (`default`, `local` or `openai`), `model` (empty: the
    provider's default), `temperature` (0-2; empty: the provider's default), `max_tokens` (longest answer),
    `json_schema` (optional: the answer must be JSON matching it; checked when the recipe is saved). Inputs: one
    `any` input per wired name and per variable the templates use. Outputs: `text`, and `json` (the parsed
    answer) when a schema is set. Usage (tokens, cost) goes onto the job. A provider that fails for a while
    (429, 5xx, unreachable) fails the node as retryable; a bad request, a prompt over the model's context or
    structured output still invalid after its repairs does not.
    """

    name: ClassVar[str] = "llm_chat"

    class Config(BlockConfig):
        system: str = Field(default="", max_length=MAX_TEMPLATE_CHARS, description="System message template.")
        prompt: str = Field(
            default="{{ prompt }}",
            max_length=MAX_TEMPLATE_CHARS,
            description="User message template; may be empty (or render empty) when the system message is not.",
        )
        provider: Literal["default", "local", "openai"] = Field(
            default="default", description="Which provider answers; `default` is the server's."
        )
        model: str = Field(default="", max_length=256, description="Model name; empty: the provider's default.")
        temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature.")
        max_tokens: int | None = Field(default=None, ge=1, le=32_768, description="Longest answer, in tokens.")
        json_schema: dict[str, Any] | None = Field(default=None, description="JSON Schema the answer must match.")

        _schema_ok = field_validator("json_schema")(_checked_schema)

    def __init__(self) -> None:
        self._env = TemplateSandbox()
        self._compiled: LruCache[str, CompiledTemplate] = LruCache()

    def _compile(self, source: str) -> CompiledTemplate:
        compiled = self._compiled.get(source)
        if compiled is None:
            compiled = self._compiled.put(source, self._env.prepare(source))
        return compiled

    def _variables(self, config: Any) -> set[str]:
        names: set[str] = set()
        for source in (config.system, config.prompt):
            try:
                names |= self._compile(source).variables
            except BlockInputError:
                continue  # reported when the node runs
        return names

    def ports(self, config: Any, wired: Iterable[str]) -> tuple[dict[str, Port], dict[str, Port]]:
        inputs = {name: Port(PortType.ANY, description="template variable") for name in wired}
        for name in sorted(self._variables(config) - inputs.keys()):
            inputs[name] = Port(PortType.ANY, description="template variable")
        return inputs, self._outputs(config)

    def _outputs(self, config: Any) -> dict[str, Port]:
        outputs = {"text": Port(PortType.TEXT, description="the model's answer")}
        if config.json_schema is not None:
            outputs["json"] = Port(PortType.JSON, description="the answer parsed (it matches json_schema)")
        return outputs

    async def run(self, ctx: BlockContext, config: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        result = await self._ask(ctx, config, inputs)
        outputs: dict[str, Any] = {"text": result.text}
        if config.json_schema is not None:
            outputs["json"] = result.parsed
        return outputs

    async def _ask(self, ctx: BlockContext, config: Any, inputs: dict[str, Any]) -> ChatResult:
        if ctx.llm is None:
            raise BlockError(f"{self.name}: no language models are available here", retryable=False)
        messages: list[ChatMessage] = []
        system = self._render(config.system, inputs) if config.system else ""
        if system.strip():
            messages.append(ChatMessage("system", system))
        prompt = self._render(config.prompt, inputs) if config.prompt else ""
        if prompt.strip():
            messages.append(ChatMessage("user", prompt))
        elif not messages:
            raise BlockInputError(f"{self.name}: the prompt and the system message are both empty once rendered")
        request = ChatRequest(
            tuple(messages),
            model=config.model,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            json_schema=config.json_schema,
        )
        provider = ctx.llm.default_provider if config.provider == "default" else config.provider
        try:
            model = ctx.llm.get(provider)
            ctx.progress(f"asking the {provider} language model", {"provider": provider})
            result = await model.chat(request)
        except ModelError as exc:
            raise BlockError(f"{self.name}: {exc.message}", retryable=_transient(exc)) from exc
        except ValidationError as exc:  # not configured, prompt over the context: trying again will not help
            raise BlockInputError(f"{self.name}: {exc.message}") from exc
        usage = result.usage
        ctx.meter(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, cost=usage.cost)
        return result

    def _render(self, source: str, inputs: dict[str, Any]) -> str:
        return self._env.render(self._compile(source), inputs, RENDER_TIMEOUT_S)


class LlmStructured(LlmChat):
    """Asks a language model for JSON matching a schema; like `llm_chat` with `json_schema` required.

    Output: `json` only (the parsed answer, which matches the schema).
    """

    name: ClassVar[str] = "llm_structured"

    class Config(LlmChat.Config):
        json_schema: dict[str, Any] = Field(description="JSON Schema the answer must match.")

    def _outputs(self, config: Any) -> dict[str, Port]:
        return {"json": Port(PortType.JSON, description="the answer parsed (it matches json_schema)")}

    async def run(self, ctx: BlockContext, config: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"json": (await self._ask(ctx, config, inputs)).parsed}


def _transient(exc: ModelError) -> bool:
    """Whether the provider may answer if asked again later: it was busy, failing or unreachable."""
    details = exc.details if isinstance(exc.details, dict) else {}
    if "attempts" not in details:
        return False  # invalid structured output, an unusable answer, the local model: the same again
    status = details.get("status")
    return status is None or status in TRANSIENT_STATUSES
