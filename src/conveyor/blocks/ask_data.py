"""The `ask_data` block: a question about a data model answered with a query, Markdown and rows.

It is the one working node of an Omni AI job, and any recipe may use it. The pipeline is
`conveyor.analytics.ask.ask`; this block finds the model (`ctx.analytics.resolve`) and the language model
(`ctx.llm.get(provider)`), reports each step as a progress event, and meters every model call onto the job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field

from conveyor.analytics import MAX_QUESTION_CHARS
from conveyor.blocks.base import BlockConfig, BlockContext, BlockError, BlockInputError, Port, Ports, PortType
from conveyor.errors import ConveyorError, ModelError
from conveyor.llm.base import Usage

MAX_ID_CHARS = 256
MAX_HISTORY_BYTES = 200_000
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class AskDataConfig(BlockConfig):
    """How an `ask_data` node answers."""

    provider: Literal["default", "local", "openai"] = Field(
        default="default", description="Which language model provider answers; `default` is the server's."
    )
    model: str = Field(default="", max_length=256, description="Model name; empty: the provider's default.")
    sql_mode: Literal["semantic", "sql"] = Field(
        default="semantic",
        description="`semantic`: the model fills a structured query compiled through the semantic layer. `sql`: "
        "the model writes SQL itself (for providers trusted to); it is guarded the same way.",
    )
    max_rows: int = Field(default=200, ge=1, le=10_000, description="Most rows kept in `rows` (the rest counted).")
    max_repairs: int = Field(
        default=2, ge=0, le=5, description="Times a refused or failing query is sent back to the model to repair."
    )
    timeout_s: float = Field(default=30.0, gt=0, le=300, description="Longest one query may run on the database.")


class AskData:
    """Answers a question about a data model (see the module docstring).

    Inputs: `model_id`, `question` (required); `branch_id`, `topic_name` (optional: the model picks the topic);
    `history` (optional: the conversation so far, a list of `{role, text}` with role `user` or `assistant`).
    Outputs: `markdown` (headline and the rows as a table), `sql` (what ran), `rows`, `columns`, `topic`,
    `actions` (Omni's AI job actions), `query` (the structured query plus `sql`), `result_summary` (the
    headline). An unknown model, branch or topic, or a question no query could answer, fails the node without
    retry; a provider that is busy or unreachable fails it as retryable.
    """

    name: ClassVar[str] = "ask_data"
    Config: ClassVar[type[BlockConfig]] = AskDataConfig

    def ports(self, config: AskDataConfig, wired: Iterable[str]) -> tuple[Ports, Ports]:
        inputs = {
            "model_id": Port(PortType.TEXT, required=True, description="The data model's id."),
            "branch_id": Port(PortType.TEXT, description="A branch of the model to use instead of the model."),
            "topic_name": Port(PortType.TEXT, description="The topic to query; empty: the model picks one."),
            "question": Port(PortType.TEXT, required=True, description="The question in plain language."),
            "history": Port(PortType.JSON, description="Earlier turns: a list of {role, text}."),
        }
        outputs = {
            "markdown": Port(PortType.TEXT, description="The answer: a headline and the rows as a table."),
            "sql": Port(PortType.TEXT, description="The SQL that ran."),
            "rows": Port(PortType.JSON, description="The rows (at most max_rows), each a list of values."),
            "columns": Port(PortType.JSON, description="The column names, `view.field` (with `[grain]`)."),
            "topic": Port(PortType.TEXT, description="The topic queried."),
            "actions": Port(PortType.JSON, description="Each step: {type, message, timestamp, result?}."),
            "query": Port(PortType.JSON, description="The structured query, with the SQL that ran."),
            "result_summary": Port(PortType.TEXT, description="The headline, as plain text."),
        }
        return inputs, outputs

    async def run(self, ctx: BlockContext, config: AskDataConfig, inputs: dict[str, Any]) -> dict[str, Any]:
        model_id = _text(inputs, "model_id", MAX_ID_CHARS, required=True)
        branch_id = _text(inputs, "branch_id", MAX_ID_CHARS) or None
        topic_name = _text(inputs, "topic_name", MAX_ID_CHARS) or None
        question = _text(inputs, "question", MAX_QUESTION_CHARS, required=True)
        history = _history(inputs.get("history"))
        analytics = ctx.analytics
        if analytics is None or ctx.llm is None:
            raise BlockError(f"{self.name}: data models or language models are not available here", retryable=False)

        def meter(usage: Usage) -> None:
            ctx.meter(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, cost=usage.cost)

        try:
            resolved = await analytics.resolve(model_id, branch_id)
            llm = ctx.llm.get(config.provider)
            from conveyor.analytics.ask import ask  # sqlglot and the pipeline load on first use, not at start

            answer = await ask(
                question,
                model=resolved,
                llm=llm,
                history=history,
                topic_name=topic_name,
                progress=ctx.progress,
                max_rows=config.max_rows,
                max_repairs=config.max_repairs,
                sql_mode=config.sql_mode,
                llm_model=config.model,
                timeout_s=config.timeout_s,
                on_usage=meter,
            )
        except ModelError as exc:
            raise BlockError(f"{self.name}: {exc.message}", retryable=_transient(exc)) from exc
        except ConveyorError as exc:  # unknown model, branch or topic; bad input; no query ran: the same again
            raise BlockInputError(f"{self.name}: {exc.message}") from exc
        return answer.outputs()


def _text(inputs: Mapping[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = inputs.get(name)
    if value is None or value == "":
        if required:
            raise BlockInputError(f"ask_data needs input {name!r}")
        return ""
    if not isinstance(value, str):
        raise BlockInputError(f"ask_data: input {name!r} must be text")
    if len(value) > limit:
        raise BlockInputError(f"ask_data: input {name!r} is longer than {limit} characters")
    return value.strip()


def _history(value: Any) -> list[Mapping[str, Any]]:
    """The `history` input: a list of turns, or JSON text of one; empty when not given."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        if len(value) > MAX_HISTORY_BYTES:
            raise BlockInputError(f"ask_data: history is over {MAX_HISTORY_BYTES} bytes")
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise BlockInputError("ask_data: history is not JSON") from None
    if not isinstance(value, list):
        raise BlockInputError("ask_data: history must be a list of {role, text} turns")
    return value


def _transient(exc: ModelError) -> bool:
    """Whether the provider may answer if asked again later: it was busy, failing or unreachable."""
    details = exc.details if isinstance(exc.details, dict) else {}
    if "attempts" not in details:
        return False  # invalid structured output or an unusable answer: the same again
    status = details.get("status")
    return status is None or status in TRANSIENT_STATUSES
