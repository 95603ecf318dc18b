"""Step 3 of answering a question (`analytics.ask`): the query, with repairs, and what the steps share.

`SemanticAttempt` has the model fill a structured query under the topic's JSON schema and compiles it with
`compile_query`; `SqlAttempt` (SQL mode, for providers trusted to write SQL) takes the model's SQL. Either way the
SQL passes `guard_sql` and runs read-only with a timeout; a refusal, compile or database error goes back to the
model, at most `max_repairs` times, and each attempt is an action of the answer. `Run` is one question's running
state (the model, usage, actions, progress) that every step uses.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic

from conveyor.analytics.connect import ConnectionSpec, QueryFailedError, QueryRows, run_read_only
from conveyor.analytics.guard import guard_sql
from conveyor.analytics.hints import Hints, apply_hints
from conveyor.analytics.markdown import csv_text
from conveyor.analytics.query import StructuredQuery, compile_query, query_json_schema
from conveyor.analytics.semantic import DATE_TYPES, Field, SemanticModel, Topic, topic_fields, topic_tables
from conveyor.errors import ConveyorError, ValidationError
from conveyor.llm.base import ChatMessage, ChatModel, ChatRequest, ChatResult, Usage

log = logging.getLogger("conveyor.analytics")

COUNT_LIMIT = 10_000  # rows counted past `max_rows` (the guard's LIMIT) so `total_row_count` means something
CSV_MAX_CHARS = 100_000
ERROR_MAX_CHARS = 600
MODEL_MAX_FIELDS = 6  # fields the model may pick; code may add named ones
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
class Run:
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
        action: dict[str, Any] = {"type": kind, "message": message, "timestamp": now_iso()}
        if result is not None:
            action["result"] = result
        self.actions.append(action)


# --- the query, with repairs -------------------------------------------------------------------


@dataclass(slots=True)
class Ran:
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
        run: Run,
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

    async def loop(self, max_repairs: int) -> Ran:
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
                last_error = error_text(exc)
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
            return Ran(query, sql, result, capped)
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

    def topic_notes(self) -> list[str]:
        """The topic's description and the AI context of the topic and model, for a system prompt."""
        lines = [f"Topic: {self.topic.description}"] if self.topic.description else []
        lines += [f"Notes: {context}" for context in (self.topic.ai_context, self.model.semantic.ai_context) if context]
        return lines


class SemanticAttempt(_Attempt):
    """The model fills a structured query; code merges its hints and compiles it through the semantic layer."""

    kind = "structured query"

    def system_prompt(self, today: dt.date) -> str:
        lines = [
            f"You write one query over the data topic {self.topic.name!r}"
            + (f" ({self.topic.label})" if self.topic.label else "")
            + " that answers the user's last question. Answer with JSON only, matching the given schema.",
            "Use field names exactly as listed. `fields` are the columns (dimensions group, measures aggregate); "
            '`filters` map a field to a value, a list of values, or a range {"from": ..., "to": ...} (dates as '
            "YYYY-MM-DD); `sorts` order by fields; `limit` caps rows; `time_grain` groups date fields.",
            f"Today is {today.isoformat()}.",
        ]
        lines += self.topic_notes()
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


class SqlAttempt(_Attempt):
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
        lines += self.topic_notes()
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
    return cut(text, 300)


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
    return cut(name, 200)


def header(key: str, fields: Mapping[str, Field], grain: str | None = None) -> str:
    """A column's header: the field's label (or its name in words), with the grain when truncated."""
    f = fields.get(key)
    text = (f.label or f.name.replace("_", " ").capitalize()) if f is not None else key
    return f"{text} ({grain})" if grain else text


def measure_columns(columns: Sequence[str], fields: Mapping[str, Field]) -> list[bool] | None:
    """Which columns are measures, when every column is a field (semantic mode); None when unknown (SQL mode)."""
    keys = [re.sub(r"\[\w+\]$", "", column) for column in columns]
    if not all(key in fields for key in keys):
        return None
    return [fields[key].is_measure for key in keys]


def column_headers(columns: Sequence[str], fields: Mapping[str, Field]) -> list[str]:
    out = []
    for column in columns:
        match = re.fullmatch(r"(.+)\[(\w+)\]", column)
        key, grain = (match.group(1), match.group(2)) if match else (column, None)
        out.append(header(key, fields, grain) if key in fields else column)
    return out


def error_text(exc: BaseException) -> str:
    if isinstance(exc, pydantic.ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in exc.errors()[:5])
        return cut(f"the query is not valid: {problems}", ERROR_MAX_CHARS)
    message = exc.message if isinstance(exc, ConveyorError) else str(exc)
    return cut(message, ERROR_MAX_CHARS)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
