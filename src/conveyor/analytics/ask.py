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
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pydantic

from conveyor.analytics import MAX_QUESTION_CHARS
from conveyor.analytics.connect import ConnectionSpec, QueryFailedError, QueryRows, run_read_only
from conveyor.analytics.guard import guard_sql
from conveyor.analytics.hints import Hints, apply_hints, resolve_hints, topic_score
from conveyor.analytics.markdown import (
    answer_markdown,
    clean_headline,
    code_headline,
    compact_view,
    csv_text,
    finished_sentences,
    result_facts,
    unsupported_numbers,
)
from conveyor.analytics.query import StructuredQuery, compile_query, query_json_schema
from conveyor.analytics.semantic import DATE_TYPES, Field, SemanticModel, Topic, topic_fields, topic_tables
from conveyor.analytics.values import value_index
from conveyor.errors import ConveyorError, ModelError, NotFoundError, ValidationError
from conveyor.llm.base import ChatMessage, ChatModel, ChatRequest, ChatResult, Usage

log = logging.getLogger("conveyor.analytics")

SqlMode = Literal["semantic", "sql"]
MAX_HISTORY_TURNS = 10  # the last turns of a conversation the model sees
MAX_HISTORY_TEXT = 1_500  # each cut here: an earlier answer's table is not needed, its headline is
MAX_ROWS_LIMIT = 10_000
MAX_REPAIRS_LIMIT = 5
COUNT_LIMIT = 10_000  # rows counted past `max_rows` (the guard's LIMIT) so `total_row_count` means something
TABLE_ROWS = 100  # rows in the Markdown answer; all `max_rows` are in `rows`
CSV_MAX_CHARS = 100_000
SUMMARY_VIEW_ROWS = 20
SUMMARY_VIEW_CHARS = 3_000
ERROR_MAX_CHARS = 600
MODEL_MAX_FIELDS = 6  # fields the model may pick; code may add named ones
TOPIC_TEXT_CHARS = 600
SQL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"sql": {"type": "string", "minLength": 1, "maxLength": 8000}},
    "required": ["sql"],
    "additionalProperties": False,
}

Progress = Callable[[str, Mapping[str, Any]], Any]


class AnalyticsModel(Protocol):
    """What the pipeline needs of a resolved model (`conveyor.analytics.store.ResolvedModel`)."""

    @property
    def semantic(self) -> SemanticModel: ...

    @property
    def spec(self) -> ConnectionSpec: ...


class AnswerFailedError(ValidationError):
    """No query for the question ran, even after the repairs allowed; the job fails with the last error."""

    code = "answer_failed"


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


@dataclass(slots=True)
class _Run:
    """One question's running state: the model, the usage so far, the actions and the progress sink."""

    llm: ChatModel
    llm_model: str
    progress: Progress | None
    on_usage: Callable[[Usage], Any] | None = None
    usage: Usage = field(default_factory=Usage)
    actions: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0

    async def chat(self, messages: Sequence[ChatMessage], **options: Any) -> ChatResult:
        result = await self.llm.chat(ChatRequest(messages=tuple(messages), model=self.llm_model, **options))
        self.usage += result.usage
        if self.on_usage is not None:
            self.on_usage(result.usage)
        return result

    async def report(self, message: str, step: str, **data: Any) -> None:
        self.steps += 1
        if self.progress is not None:
            outcome = self.progress(message, {"step": step, "iteration": self.steps, **data})
            if inspect.isawaitable(outcome):
                await outcome

    def act(self, kind: str, message: str, result: dict[str, Any] | None = None) -> None:
        action: dict[str, Any] = {"type": kind, "message": message, "timestamp": _now_iso()}
        if result is not None:
            action["result"] = result
        self.actions.append(action)


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
    run = _Run(llm, llm_model, progress, on_usage)
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
    run = _Run(llm, llm_model, None)
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
    run: _Run,
    model: AnalyticsModel,
    question: str,
    history: Sequence[Mapping[str, Any]],
    topic_name: str | None,
    options: tuple[int, int, dt.date | None, SqlMode, float],
    *,
    execute: bool,
) -> tuple[Topic, Hints, _Ran]:
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
    kind = _SqlAttempt if sql_mode == "sql" else _SemanticAttempt
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
    run = _Run(llm, llm_model, None)
    names = _visible_topics(semantic, candidates)
    name, _how = await _choose_topic(run, semantic, names, _check_question(question), _history(history))
    return name, run.usage


# --- step 1: the topic ---------------------------------------------------------------------------------


async def _topic(
    run: _Run, semantic: SemanticModel, question: str, turns: list[ChatMessage], topic_name: str | None
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
    run: _Run, semantic: SemanticModel, names: list[str], question: str, turns: list[ChatMessage]
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
    return _cut(" ".join(parts), TOPIC_TEXT_CHARS)


# --- step 3: the query, with repairs -------------------------------------------------------------------


@dataclass(slots=True)
class _Ran:
    """The query that ran and its rows."""

    query: dict[str, Any]
    sql: str
    result: QueryRows | None  # None when the query was not to be run (`generate_query(run_query=False)`)
    count_capped: bool  # `total_row_count` stopped at the guard's limit: the query has at least that many rows


class _Attempt:
    """Asks for a query, runs it, and feeds failures back (shared by both modes; subclasses build the query)."""

    kind = "query"

    def __init__(
        self,
        run: _Run,
        model: AnalyticsModel,
        topic: Topic,
        question: str,
        turns: list[ChatMessage],
        hints: Hints,
        today: dt.date,
        max_rows: int,
        timeout_s: float,
    ) -> None:
        self.run, self.model, self.topic, self.hints = run, model, topic, hints
        self.fields = topic_fields(model.semantic, topic)
        self.max_rows, self.timeout_s = max_rows, timeout_s
        # The guard's LIMIT: rows past `max_rows` are counted (not kept) up to here, so totals mean something.
        self.count_limit = max(COUNT_LIMIT, max_rows)
        self.execute = True  # false: the query is compiled and guarded but not run
        self.answer, self.sql = "", ""
        self.query: dict[str, Any] = {"topic": topic.name}
        self.messages = [ChatMessage("system", self.system_prompt(today)), *turns, ChatMessage("user", question)]

    def system_prompt(self, today: dt.date) -> str:
        raise NotImplementedError

    async def propose(self) -> None:
        """Asks the model and sets `answer` (its raw text), `query` (as recorded) and `sql` (to guard), in order."""
        raise NotImplementedError

    async def loop(self, max_repairs: int) -> _Ran:
        last_error = ""
        for attempt in range(max_repairs + 1):
            note = f" (repair {attempt} of {max_repairs})" if attempt else ""
            await self.run.report(f"Generating a query{note}", "generate_query", attempt=attempt)
            # What the model answered and the query as far as it got: a failed attempt records them too.
            self.answer, self.query, self.sql = "", {"topic": self.topic.name}, ""
            try:
                await self.propose()
                self.sql = guard_sql(
                    self.sql,
                    dialect=self.model.spec.dialect,
                    allowed_tables=self._tables(),
                    max_rows=self.count_limit,
                )
                self.query["sql"] = self.sql
                result = (
                    await run_read_only(self.model.spec, self.sql, timeout_s=self.timeout_s, max_rows=self.max_rows)
                    if self.execute
                    else None
                )
            except (ValidationError, QueryFailedError, pydantic.ValidationError) as exc:
                last_error = _error_text(exc)
                self._failed(self.query, self.sql, last_error, note)
                await self.run.report(
                    f"The query failed: {last_error}", "generate_query", attempt=attempt, status="error"
                )
                self.messages += [
                    ChatMessage("assistant", self.answer or "(no usable answer)"),
                    ChatMessage("user", _repair_prompt(last_error, self.kind)),
                ]
                continue
            query, sql = self.query, self.sql
            self._succeeded(query, sql, result, note)
            count = result.total_row_count if result is not None else 0
            message = f"The query returned {count} rows" if result is not None else "The query is ready"
            await self.run.report(message, "generate_query", attempt=attempt, status="success", rows=count)
            capped = result is not None and (result.count_capped or count >= self.count_limit)
            return _Ran(query, sql, result, capped)
        raise AnswerFailedError(
            f"no query ran after {max_repairs} repair{'s' if max_repairs != 1 else ''}: {last_error}",
            details={"actions": self.run.actions},
        )

    def _tables(self) -> set[str]:
        return topic_tables(self.model.semantic, self.topic)

    def _failed(self, query: dict[str, Any], sql: str, error: str, note: str) -> None:
        result = _query_result(self._name(query), "error", query, sql, None)
        result["error"] = error
        self.run.act("generate_query", f"The query{note} failed: {error}", result)

    def _succeeded(self, query: dict[str, Any], sql: str, rows: QueryRows | None, note: str) -> None:
        name = self._name(query)
        result = _query_result(name, "success", query, sql, rows)
        done = (
            f"Ran the query {name}{note}: {rows.total_row_count} rows."
            if rows is not None
            else f"Wrote the query {name}{note}."
        )
        self.run.act("generate_query", done, result)

    def _name(self, query: dict[str, Any]) -> str:
        return query_name(query.get("fields") or [], self.fields, query.get("time_grain"))


class _SemanticAttempt(_Attempt):
    """The model fills a structured query; code merges its hints and compiles it through the semantic layer."""

    kind = "structured query"

    def system_prompt(self, today: dt.date) -> str:
        semantic = self.model.semantic
        lines = [
            f"You write one query over the data topic {self.topic.name!r}"
            + (f" ({self.topic.label})" if self.topic.label else "")
            + " that answers the user's last question. Answer with JSON only, matching the given schema.",
            "Use field names exactly as listed. `fields` are the columns (dimensions group, measures aggregate); "
            '`filters` map a field to a value, a list of values, or a range {"from": ..., "to": ...} (dates as '
            "YYYY-MM-DD); `sorts` order by fields; `limit` caps rows; `time_grain` groups date fields.",
            f"Today is {today.isoformat()}.",
        ]
        if self.topic.description:
            lines.append(f"Topic: {self.topic.description}")
        for context in (self.topic.ai_context, semantic.ai_context):
            if context:
                lines.append(f"Notes: {context}")
        ranked = sorted(self.fields, key=lambda key: -self.hints.relevance.get(key, 0))
        lines += ["", "Fields:", *(_field_line(key, self.fields[key]) for key in ranked)]
        hint_lines = self.hints.lines()
        if hint_lines:
            lines += ["", "Resolved from the question (applied to your query whatever you answer):"]
            lines += [f"- {line}" for line in hint_lines]
        return "\n".join(lines)

    async def propose(self) -> None:
        schema = query_json_schema(self.model.semantic, self.topic.name)
        fields_schema = schema.get("properties", {}).get("fields", {})
        if isinstance(fields_schema, dict):  # a small model fills every slot it is given
            fields_schema["maxItems"] = min(int(fields_schema.get("maxItems", MODEL_MAX_FIELDS)), MODEL_MAX_FIELDS)
            items = fields_schema.get("items")
            if isinstance(items, dict) and isinstance(items.get("enum"), list):
                # Most relevant first: enum order means nothing to a validator, and a weak model leans to the top.
                items["enum"] = sorted(items["enum"], key=lambda key: -self.hints.relevance.get(key, 0))
        result = await self.run.chat(self.messages, json_schema=schema, temperature=0.0)
        self.answer = result.text
        parsed = result.parsed if isinstance(result.parsed, dict) else {}
        self.query = {"topic": self.topic.name, **parsed}
        query = StructuredQuery.model_validate({**parsed, "topic": self.topic.name})
        query = apply_hints(query, self.hints, self.fields)
        self.query = {"topic": self.topic.name, **query.to_omni()}
        self.sql = compile_query(self.model.semantic, query, dialect=self.model.spec.dialect)


class _SqlAttempt(_Attempt):
    """The model writes SQL over the topic's tables (for providers configured as SQL-capable)."""

    kind = "SQL"

    def system_prompt(self, today: dt.date) -> str:
        semantic = self.model.semantic
        dialect = self.model.spec.dialect
        lines = [
            f"You write one read-only {dialect} SELECT statement that answers the user's last question. "
            'Answer with JSON only: {"sql": "<the statement>"}. Use only the tables below; no other statements.',
            f"Today is {today.isoformat()}.",
        ]
        if self.topic.description:
            lines.append(f"Topic: {self.topic.description}")
        for context in (self.topic.ai_context, semantic.ai_context):
            if context:
                lines.append(f"Notes: {context}")
        lines += ["", "Tables (alias: table) and their fields as SQL over the table's columns:"]
        for view_name in self.topic.view_names():
            view = semantic.views.get(view_name)
            if view is None:
                continue
            lines.append(f"- {view_name}: {view.table}" + (f" — {view.description}" if view.description else ""))
            for f in view.fields().values():
                sql = f"{f.aggregate}({f.sql})" if f.aggregate else f.sql
                lines.append(f"    {f.name} = {sql} ({f.type})" + (f": {f.description}" if f.description else ""))
        for view_name, join in self.topic.joins.items():
            lines.append(f"Join {view_name} ON {join.sql_on}")
        for key, value in self.topic.default_filters.items():
            lines.append(f"Unless asked otherwise, filter {key} = {value!r}")
        hint_lines = self.hints.lines()
        if hint_lines:
            lines += ["", "Resolved from the question (use these exactly):", *(f"- {line}" for line in hint_lines)]
        return "\n".join(lines)

    async def propose(self) -> None:
        result = await self.run.chat(self.messages, json_schema=SQL_SCHEMA, temperature=0.0)
        self.answer = result.text
        self.sql = str(result.parsed.get("sql", "")) if isinstance(result.parsed, dict) else ""
        self.query = {"topic": self.topic.name, "table": self.topic.name, "fields": [], "sql": self.sql}


def _field_line(key: str, f: Field) -> str:
    kind = "measure" if f.is_measure else "dimension"
    text = f"- {key} ({f.type} {kind})"
    if f.label:
        text += f" {f.label}"
    if f.description:
        text += f": {f.description}"
    return _cut(text, 300)


def _repair_prompt(error: str, kind: str) -> str:
    return f"That {kind} failed: {error}\nAnswer again with a corrected {kind} (JSON only)."


def _query_result(name: str, status: str, query: dict[str, Any], sql: str, rows: QueryRows | None) -> dict[str, Any]:
    """An Omni `AiJobActionQueryResult`, plus the `sql` that ran."""
    csv, cut = csv_text(rows.columns, rows.rows, max_chars=CSV_MAX_CHARS) if rows is not None else ("", False)
    return {
        "queryName": name,
        "status": status,
        "query": query,
        "csvResult": csv,
        "csvResultWasTruncated": bool(rows is not None and (cut or rows.truncated)),
        "hasResults": bool(rows is not None and rows.rows),
        "totalRowCount": rows.total_row_count if rows is not None else 0,
        "sql": sql,
    }


def query_name(keys: Sequence[str], fields: Mapping[str, Field], grain: str | None) -> str:
    """A human name for a query: its measures "by" its dimensions ("Revenue by Region and Order date (month)")."""
    known = [key for key in keys if key in fields]
    measures = [header(key, fields) for key in known if fields[key].is_measure]
    dims = [
        header(key, fields, grain if fields[key].type in DATE_TYPES else None)
        for key in known
        if not fields[key].is_measure
    ]
    if not known:
        return "Query"
    name = " and ".join(measures) or " and ".join(dims)
    if measures and dims:
        name += " by " + " and ".join(dims)
    return _cut(name, 200)


def header(key: str, fields: Mapping[str, Field], grain: str | None = None) -> str:
    """A column's header: the field's label (or its name in words), with the grain when truncated."""
    f = fields.get(key)
    text = (f.label or f.name.replace("_", " ").capitalize()) if f is not None else key
    return f"{text} ({grain})" if grain else text


def _measure_columns(columns: Sequence[str], fields: Mapping[str, Field]) -> list[bool] | None:
    """Which columns are measures, when every column is a field (semantic mode); None when unknown (SQL mode)."""
    keys = [re.sub(r"\[\w+\]$", "", column) for column in columns]
    if not all(key in fields for key in keys):
        return None
    return [fields[key].is_measure for key in keys]


def _headers(columns: Sequence[str], fields: Mapping[str, Field]) -> list[str]:
    out = []
    for column in columns:
        match = re.fullmatch(r"(.+)\[(\w+)\]", column)
        key, grain = (match.group(1), match.group(2)) if match else (column, None)
        out.append(header(key, fields, grain) if key in fields else column)
    return out


# --- step 4: the summary -------------------------------------------------------------------------------


async def _summarize(
    run: _Run, semantic: SemanticModel, topic: Topic, question: str, hints: Hints, ran: _Ran, max_rows: int
) -> Answer:
    fields = topic_fields(semantic, topic)
    result = ran.result
    if result is None:
        raise AssertionError("ask always runs its query")
    headers = _headers(result.columns, fields)
    measures = _measure_columns(result.columns, fields)
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
    run: _Run, question: str, hints: Hints, headers: list[str], result: QueryRows, facts: list[str]
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
            turns.append(ChatMessage(role, _cut(text.strip(), MAX_HISTORY_TEXT)))
    return turns


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, pydantic.ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in exc.errors()[:5])
        return _cut(f"the query is not valid: {problems}", ERROR_MAX_CHARS)
    message = exc.message if isinstance(exc, ConveyorError) else str(exc)
    return _cut(message, ERROR_MAX_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
