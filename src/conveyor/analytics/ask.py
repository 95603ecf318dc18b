"""A question about a data model answered with a query: the pipeline behind the `ask_data` block and Omni AI jobs.

The steps (each a `progress` call; each query attempt and the summary are `actions` of the answer, in Omni's shape):

1. Pick the topic: the one given (it must exist), the only visible one, the one code finds clearly ahead (one of
   its sample questions, or the most fields named — see `topic_score`), else the model's choice from an enum of
   topic names described by their descriptions, sample questions and AI context.
2. Resolve by code what code can: the time range ("past year", "in 2024" — see `dates`), the time grain words
   ("monthly", "trend") and fields the question names by name or label. A small model gets these wrong often;
   code's date range always wins over the model's.
3. Have the model fill a structured query constrained by the topic's JSON schema (semantic mode), compile it with
   `compile_query`, or — in SQL mode, for providers trusted to write SQL — take its SQL. Either way the SQL goes
   through `guard_sql` (one read-only SELECT over the topic's tables) and runs read-only with a timeout. A refusal,
   compile or database error is fed back to the model, at most `max_repairs` times.
4. Summarize: code builds the Markdown table and simple facts from the rows (the numbers are the database's);
   the model writes a one or two sentence headline from a bounded view of them (code writes it if the model fails).

Usage is summed over every model call. Prompts are bounded: the history keeps its last turns, each cut.
Step 3 is `analytics.attempts`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from conveyor.analytics import MAX_QUESTION_CHARS
from conveyor.analytics.attempts import (
    AnalyticsModel,
    Progress,
    Ran,
    Run,
    SemanticAttempt,
    SqlAttempt,
    column_headers,
    cut,
    measure_columns,
)
from conveyor.analytics.connect import QueryRows
from conveyor.analytics.hints import Hints, resolve_hints, topic_score
from conveyor.analytics.markdown import (
    answer_markdown,
    clean_headline,
    code_headline,
    compact_view,
    finished_sentences,
    result_facts,
    unsupported_numbers,
)
from conveyor.analytics.semantic import SemanticModel, Topic, topic_fields
from conveyor.analytics.values import value_index
from conveyor.errors import ConveyorError, ModelError, NotFoundError, ValidationError
from conveyor.llm.base import ChatMessage, ChatModel, Usage

log = logging.getLogger("conveyor.analytics")

SqlMode = Literal["semantic", "sql"]
MAX_HISTORY_TURNS = 10  # the last turns of a conversation the model sees
MAX_HISTORY_TEXT = 1_500  # each cut here: an earlier answer's table is not needed, its headline is
MAX_ROWS_LIMIT = 10_000
MAX_REPAIRS_LIMIT = 5
TABLE_ROWS = 100  # rows in the Markdown answer; all `max_rows` are in `rows`
SUMMARY_VIEW_ROWS = 20
SUMMARY_VIEW_CHARS = 3_000
TOPIC_TEXT_CHARS = 600


@dataclass(slots=True)
class Answer:
    """The answer to one question (see the module docstring); `outputs()` is what the `ask_data` block returns."""

    topic: str
    query: dict[str, Any]
    sql: str
    columns: list[str]
    headers: list[str]
    rows: list[list[Any]]
    total_row_count: int
    truncated: bool
    markdown: str
    result_summary: str
    actions: list[dict[str, Any]]
    usage: Usage
    hints: Hints = field(default_factory=Hints)

    def outputs(self) -> dict[str, Any]:
        return {
            "markdown": self.markdown,
            "sql": self.sql,
            "rows": self.rows,
            "columns": self.columns,
            "topic": self.topic,
            "actions": self.actions,
            "query": self.query,
            "result_summary": self.result_summary,
        }


@dataclass(slots=True)
class GeneratedQuery:
    """A question's topic and query (`generate_query`), with its rows when it ran."""

    topic: str
    query: dict[str, Any]
    sql: str
    columns: list[str]
    rows: list[list[Any]]
    total_row_count: int
    truncated: bool
    actions: list[dict[str, Any]]
    usage: Usage


async def ask(
    question: str,
    *,
    model: AnalyticsModel,
    llm: ChatModel,
    history: Sequence[Mapping[str, Any]] = (),
    topic_name: str | None = None,
    progress: Progress | None = None,
    max_rows: int = 200,
    max_repairs: int = 2,
    now: dt.date | None = None,
    sql_mode: SqlMode = "semantic",
    llm_model: str = "",
    timeout_s: float = 30.0,
    on_usage: Callable[[Usage], Any] | None = None,
) -> Answer:
    """Answers `question` over `model` (see the module docstring); `AnswerFailedError` when no query ran.

    `progress(message, data)` is called at each step (it may be a coroutine function); `on_usage(usage)` after
    each model call, so a caller can meter calls even when a later step fails.
    """
    question = _check_question(question)
    run = Run(llm, llm_model, progress, on_usage)
    options = (max_rows, max_repairs, now, sql_mode, timeout_s)
    topic, hints, ran = await _query(run, model, question, history, topic_name, options, execute=True)
    return await _summarize(run, model.semantic, topic, question, hints, ran, max_rows)


async def generate_query(
    question: str,
    *,
    model: AnalyticsModel,
    llm: ChatModel,
    history: Sequence[Mapping[str, Any]] = (),
    topic_name: str | None = None,
    run_query: bool = True,
    max_rows: int = 200,
    max_repairs: int = 2,
    now: dt.date | None = None,
    sql_mode: SqlMode = "semantic",
    llm_model: str = "",
    timeout_s: float = 30.0,
) -> GeneratedQuery:
    """Steps 1 to 3 of `ask` (Omni's `generate-query`): the topic and the query, run unless `run_query` is false
    (then it is compiled and guarded, and compile errors are repaired, but it does not touch the database)."""
    question = _check_question(question)
    run = Run(llm, llm_model, None)
    options = (max_rows, max_repairs, now, sql_mode, timeout_s)
    topic, _hints, ran = await _query(run, model, question, history, topic_name, options, execute=run_query)
    rows = ran.result
    return GeneratedQuery(
        topic=topic.name,
        query=ran.query,
        sql=ran.sql,
        columns=list(rows.columns) if rows is not None else [],
        rows=[list(row) for row in rows.rows] if rows is not None else [],
        total_row_count=rows.total_row_count if rows is not None else 0,
        truncated=rows.truncated if rows is not None else False,
        actions=run.actions,
        usage=run.usage,
    )


async def _query(
    run: Run,
    model: AnalyticsModel,
    question: str,
    history: Sequence[Mapping[str, Any]],
    topic_name: str | None,
    options: tuple[int, int, dt.date | None, SqlMode, float],
    *,
    execute: bool,
) -> tuple[Topic, Hints, Ran]:
    max_rows, max_repairs, now, sql_mode, timeout_s = options
    turns = _history(history)
    if not 1 <= max_rows <= MAX_ROWS_LIMIT:
        raise ValidationError(f"max_rows must be in [1, {MAX_ROWS_LIMIT}]")
    if not 0 <= max_repairs <= MAX_REPAIRS_LIMIT:
        raise ValidationError(f"max_repairs must be in [0, {MAX_REPAIRS_LIMIT}]")
    topic = await _topic(run, model.semantic, question, turns, topic_name)
    today = now or dt.datetime.now(dt.UTC).date()
    asked_before = [turn.content for turn in reversed(turns) if turn.role == "user"]
    values = await value_index(model.semantic, model.spec, topic, timeout_s=timeout_s)
    hints = resolve_hints(model.semantic, topic, question, today, asked_before, values)
    kind = SqlAttempt if sql_mode == "sql" else SemanticAttempt
    attempt = kind(run, model, topic, question, turns, hints, today, max_rows, timeout_s)
    attempt.execute = execute
    return topic, hints, await attempt.loop(max_repairs)


async def pick_topic(
    question: str,
    semantic: SemanticModel,
    llm: ChatModel,
    *,
    history: Sequence[Mapping[str, Any]] = (),
    candidates: Sequence[str] | None = None,
    llm_model: str = "",
) -> tuple[str, Usage]:
    """The topic that answers `question` (the only visible one, or the model's choice) and the usage it took."""
    run = Run(llm, llm_model, None)
    names = _visible_topics(semantic, candidates)
    name, _how = await _choose_topic(run, semantic, names, _check_question(question), _history(history))
    return name, run.usage


# --- step 1: the topic ---------------------------------------------------------------------------------


async def _topic(
    run: Run, semantic: SemanticModel, question: str, turns: list[ChatMessage], topic_name: str | None
) -> Topic:
    if topic_name:
        topic = semantic.topics.get(topic_name)
        if topic is None:
            raise NotFoundError("topic", topic_name[:100])
        await run.report(f"Using topic {topic.name}", "pick_topic", topic=topic.name)
        return topic
    names = _visible_topics(semantic, None)
    name, how = await _choose_topic(run, semantic, names, question, turns)
    await run.report(f"Using topic {name} ({how})", "pick_topic", topic=name)
    return semantic.topics[name]


def _visible_topics(semantic: SemanticModel, candidates: Sequence[str] | None) -> list[str]:
    names = [name for name, topic in semantic.topics.items() if not topic.hidden]
    if candidates:
        names = [name for name in names if name in set(candidates)]
    if not names:
        raise ValidationError("the model has no topic to answer from" + (" among those named" if candidates else ""))
    return names


async def _choose_topic(
    run: Run, semantic: SemanticModel, names: list[str], question: str, turns: list[ChatMessage]
) -> tuple[str, str]:
    """The topic and how it was chosen: the only one; the one code finds clearly best; else the model's choice."""
    if len(names) == 1:
        return names[0], "the only topic of the model"
    earlier = [turn.content for turn in turns if turn.role == "user"][-2:]
    scores = {name: topic_score(semantic, semantic.topics[name], question) for name in names}
    if not any(scores.values()) and earlier:  # a follow-up ("and for Europe?") stays with the earlier question
        scores = {name: topic_score(semantic, semantic.topics[name], earlier[-1]) for name in names}
    ranked = sorted(names, key=lambda name: -scores[name])  # stable: ties keep the model's order
    if scores[ranked[0]] > scores[ranked[1]]:
        return ranked[0], "it covers the most of the question"
    schema = {
        "type": "object",
        "properties": {"topic": {"type": "string", "enum": ranked}},
        "required": ["topic"],
        "additionalProperties": False,
    }
    lines = [
        "Pick the one data topic that can answer the user's question. "
        'Answer with JSON only: {"topic": "<name>"} with a name from the list.',
        "",
        "Topics:",
        *(_topic_line(semantic.topics[name]) for name in ranked),
    ]
    user = "\n".join([*(f"Earlier question: {text}" for text in earlier), f"Question: {question}"])
    result = await run.chat(
        [ChatMessage("system", "\n".join(lines)), ChatMessage("user", user)],
        json_schema=schema,
        temperature=0.0,
        max_tokens=40,
    )
    chosen = result.parsed.get("topic") if isinstance(result.parsed, dict) else None
    if chosen not in names:  # the provider validates against the schema; this guards a provider that does not
        raise ModelError(f"the model chose no known topic ({str(chosen)[:100]!r})")
    return str(chosen), "chosen by the model"


def _topic_line(topic: Topic) -> str:
    parts = [f"- {topic.name}" + (f" ({topic.label})" if topic.label else "") + ":"]
    if topic.description:
        parts.append(topic.description)
    if topic.sample_questions:
        parts.append("Examples: " + "; ".join(topic.sample_questions[:3]) + ".")
    if topic.ai_context:
        parts.append(f"Context: {topic.ai_context}")
    return cut(" ".join(parts), TOPIC_TEXT_CHARS)


# --- step 4: the summary -------------------------------------------------------------------------------


async def _summarize(
    run: Run, semantic: SemanticModel, topic: Topic, question: str, hints: Hints, ran: Ran, max_rows: int
) -> Answer:
    fields = topic_fields(semantic, topic)
    result = ran.result
    if result is None:
        raise AssertionError("ask always runs its query")
    headers = column_headers(result.columns, fields)
    measures = measure_columns(result.columns, fields)
    facts = result_facts(headers, result.rows, measures=measures)
    await run.report("Summarizing the result", "summarize")
    headline = ""
    if result.rows:
        headline = await _headline(run, question, hints, headers, result, facts)
    if not headline:
        headline = code_headline(headers, result.rows, total_row_count=result.total_row_count, measures=measures)
    markdown = answer_markdown(
        headline,
        headers,
        result.rows,
        facts=[fact for fact in facts[1:] if fact not in headline],  # the row count is in the table's note
        total_row_count=result.total_row_count,
        count_capped=ran.count_capped,
        max_table_rows=TABLE_ROWS,
    )
    run.act("summarize", headline)
    return Answer(
        topic=topic.name,
        query=ran.query,
        sql=ran.sql,
        columns=list(result.columns),
        headers=headers,
        rows=[list(row) for row in result.rows[:max_rows]],
        total_row_count=result.total_row_count,
        truncated=result.truncated,
        markdown=markdown,
        result_summary=headline,
        actions=run.actions,
        usage=run.usage,
        hints=hints,
    )


async def _headline(
    run: Run, question: str, hints: Hints, headers: list[str], result: QueryRows, facts: list[str]
) -> str:
    """The model's one or two sentence headline from a bounded view of the result; empty when it fails."""
    view = compact_view(headers, result.rows, max_rows=SUMMARY_VIEW_ROWS, max_chars=SUMMARY_VIEW_CHARS)
    period = f"\nPeriod: {hints.date_range.describe()}" if hints.date_range else ""
    user = (
        f"Question: {question}{period}\n\nResult ({result.total_row_count} rows):\n{view}\n\n"
        "Facts computed from all rows:\n" + "\n".join(f"- {fact}" for fact in facts) + "\n\nHeadline:"
    )
    system = (
        "You write the headline of an answer to a question about data: one or two plain sentences, no Markdown, "
        "no table, no preamble. Use only numbers that appear in the result or the facts."
    )
    try:
        answer = await run.chat(
            [ChatMessage("system", system), ChatMessage("user", user)], temperature=0.2, max_tokens=120
        )
    except ConveyorError as exc:
        log.warning("ask: the model wrote no headline (%s); code writes it", exc)
        return ""
    text = answer.text
    if answer.finish_reason == "length":  # cut off mid-sentence: keep only the sentences it finished
        text = finished_sentences(text)
    headline = clean_headline(text)
    evidence = "\n".join([question, period, view, *facts, str(result.total_row_count)])
    unsupported = unsupported_numbers(headline, evidence)
    if unsupported:
        log.info("ask: the model's headline has numbers the result lacks (%s); code writes it", unsupported[:5])
        return ""
    return headline


# --- input checks and small helpers --------------------------------------------------------------------


def _check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValidationError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValidationError(f"the question is over {MAX_QUESTION_CHARS} characters")
    return question.strip()


def _history(history: Sequence[Mapping[str, Any]] | None) -> list[ChatMessage]:
    """The conversation so far as chat messages: the last turns, each cut; a bad turn is a `ValidationError`."""
    if history is None:
        return []
    if not isinstance(history, list | tuple):
        raise ValidationError("history must be a list of {role, text} turns")
    turns: list[ChatMessage] = []
    for index, turn in enumerate(list(history)[-MAX_HISTORY_TURNS:]):
        if not isinstance(turn, Mapping):
            raise ValidationError(f"history turn {index} is not an object with role and text")
        role, text = turn.get("role"), turn.get("text", turn.get("content"))
        if role not in ("user", "assistant") or not isinstance(text, str):
            raise ValidationError(f"history turn {index} needs role user or assistant and a text")
        if text.strip():
            turns.append(ChatMessage(role, cut(text.strip(), MAX_HISTORY_TEXT)))
    return turns
