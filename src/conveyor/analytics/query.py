"""Structured queries over a topic (Omni's semantic query shape) and their compilation to SQL with sqlglot.

A `StructuredQuery` names fields as `"view.field"`, filters by field, sorts (`column_name`,
`sort_descending`: Omni's `AiQuerySort`), a limit and a time grain. `query_json_schema` gives a language model
a schema built from the topic's own fields (enums), small enough for a 135M-parameter model to fill.

`compile_query` builds the SQL as sqlglot expressions: field SQL from the model, values only as literals that
sqlglot quotes. The rules:

- Tables are aliased by view name; the topic's joins are LEFT JOINs, and only those the query needs (with the
  joins they depend on) are emitted.
- Every selected dimension is grouped (so a dimensions-only query lists distinct values); measures aggregate.
- `time_grain` truncates every selected date/timestamp dimension (weeks start on Monday); filters apply to the
  untruncated value. The column is then named `view.field[grain]`, Omni-style; otherwise `view.field`.
- Filters on dimensions go to WHERE, on measures to HAVING. A topic's default filter applies unless the query
  filters the same field. Date bounds accept `YYYY`, `YYYY-MM` or `YYYY-MM-DD`; `to` includes its whole
  period (`"to": "2025"` means up to 2025-12-31 inclusive).
- Without sorts, rows are ordered by the selected dimensions (dates first) so results are deterministic.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from typing import Annotated, Any

import pydantic
from pydantic import AliasChoices, BaseModel, ConfigDict
from sqlglot import exp

from conveyor.analytics.guard import NESTED_TOO_DEEPLY, SqlRefused
from conveyor.analytics.semantic import (
    DATE_TYPES,
    FILTER_ADAPTER,
    NAME_PATTERN,
    TIME_GRAINS,
    Field,
    FilterValue,
    Range,
    SemanticModel,
    TimeGrain,
    Topic,
    topic_fields,
)
from conveyor.errors import ValidationError

MAX_QUERY_FIELDS = 20
MAX_SORTS = 5
MAX_FILTERS = 20
MAX_LIMIT = 10_000
SCHEMA_MAX_FIELDS = 10
SCHEMA_MAX_LIMIT = 1000
DIALECTS = ("duckdb", "sqlite", "postgres")

__all__ = ["FilterValue", "QuerySort", "Range", "StructuredQuery", "compile_query", "query_json_schema"]

FieldRef = Annotated[
    str, pydantic.StringConstraints(max_length=130, pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
]


class QuerySort(BaseModel):
    """One sort, with Omni's names (`column_name`, `sort_descending`); `field`/`desc` are accepted too."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    column_name: FieldRef = pydantic.Field(validation_alias=AliasChoices("column_name", "field"))
    sort_descending: bool = pydantic.Field(default=False, validation_alias=AliasChoices("sort_descending", "desc"))


class StructuredQuery(BaseModel):
    """A query over one topic: what a language model fills, and what `compile_query` turns into SQL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: Annotated[str, pydantic.StringConstraints(pattern=NAME_PATTERN)]
    fields: list[FieldRef] = pydantic.Field(min_length=1, max_length=MAX_QUERY_FIELDS)
    filters: dict[FieldRef, FilterValue] = pydantic.Field(default_factory=dict, max_length=MAX_FILTERS)
    sorts: list[QuerySort] = pydantic.Field(default_factory=list, max_length=MAX_SORTS)
    limit: int | None = pydantic.Field(default=None, ge=1, le=MAX_LIMIT)
    time_grain: TimeGrain | None = None

    def to_omni(self) -> dict[str, Any]:
        """The query in Omni's `AiSemanticQuery` shape (`table` is the topic)."""
        return {
            "table": self.topic,
            "fields": list(self.fields),
            "filters": {k: _filter_json(v) for k, v in self.filters.items()},
            "sorts": [s.model_dump() for s in self.sorts],
            "limit": self.limit,
            "time_grain": self.time_grain,
        }


def _filter_json(value: Any) -> Any:
    return value.model_dump(by_alias=True, exclude_none=True) if isinstance(value, Range) else value


# --- the JSON schema a model fills ---------------------------------------------------------------------

_DATE_BOUND = {"type": "string", "pattern": r"^[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?$"}
_FILTER_DEFS: dict[str, Any] = {
    "text_filter": {
        "anyOf": [
            {"type": "string", "maxLength": 100},
            {"type": "array", "items": {"type": "string", "maxLength": 100}, "minItems": 1, "maxItems": 20},
        ]
    },
    "number_filter": {
        "anyOf": [
            {"type": "number"},
            {
                "type": "object",
                "properties": {"from": {"type": "number"}, "to": {"type": "number"}},
                "additionalProperties": False,
            },
        ]
    },
    "date_filter": {
        "type": "object",
        "properties": {"from": _DATE_BOUND, "to": _DATE_BOUND},
        "additionalProperties": False,
    },
    "boolean_filter": {"type": "boolean"},
}
_FILTER_DEF_FOR = {"string": "text_filter", "number": "number_filter", "date": "date_filter",
                   "timestamp": "date_filter", "boolean": "boolean_filter"}  # fmt: skip


def query_json_schema(model: SemanticModel, topic_name: str) -> dict[str, Any]:
    """A JSON schema for a topic's queries: field names are enums of the topic's fields, arrays are bounded.

    The topic itself is not in the schema: the caller adds it (`StructuredQuery(topic=..., **answer)`).
    """
    topic = _topic(model, topic_name)
    fields = topic_fields(model, topic)
    names = list(fields)
    filter_props = {name: {"$ref": f"#/$defs/{_FILTER_DEF_FOR[f.type]}"} for name, f in fields.items()}
    return {
        "type": "object",
        "properties": {
            "fields": {
                "type": "array",
                "items": {"type": "string", "enum": names},
                "minItems": 1,
                "maxItems": SCHEMA_MAX_FIELDS,
            },
            "filters": {"type": "object", "properties": filter_props, "additionalProperties": False},
            "sorts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "column_name": {"type": "string", "enum": names},
                        "sort_descending": {"type": "boolean"},
                    },
                    "required": ["column_name", "sort_descending"],
                    "additionalProperties": False,
                },
                "maxItems": 2,
            },
            "limit": {"type": "integer", "minimum": 1, "maximum": SCHEMA_MAX_LIMIT},
            "time_grain": {"type": "string", "enum": list(TIME_GRAINS)},
        },
        "required": ["fields"],
        "additionalProperties": False,
        "$defs": _FILTER_DEFS,
    }


# --- compilation ---------------------------------------------------------------------------------------


def compile_query(model: SemanticModel, query: StructuredQuery, *, dialect: str) -> str:
    """The SQL for `query` through the semantic layer, in `dialect` (duckdb, sqlite, postgres)."""
    if dialect not in DIALECTS:
        raise ValidationError(f"unknown dialect {dialect!r}; one of {', '.join(DIALECTS)}")
    topic = _topic(model, query.topic)
    reachable = topic_fields(model, topic)
    unknown = [f for f in [*query.fields, *query.filters, *(s.column_name for s in query.sorts)] if f not in reachable]
    if unknown:
        raise ValidationError(f"fields not in topic {topic.name!r}: {', '.join(dict.fromkeys(unknown))}",
                              details={"unknown_fields": list(dict.fromkeys(unknown))})  # fmt: skip
    selected = list(dict.fromkeys(query.fields))
    filters: dict[str, Any] = {k: v for k, v in topic.default_filters.items() if k not in query.filters}
    filters.update(query.filters)

    select = exp.Select()
    aliases: dict[str, str] = {}
    group: list[exp.Expr] = []
    for key in selected:
        f = reachable[key]
        expr = _field_expr(f, dialect)
        alias = key
        if not f.is_measure:
            if query.time_grain and f.type in DATE_TYPES:
                expr = _truncate(expr, query.time_grain, dialect)
                alias = f"{key}[{query.time_grain}]"
            group.append(expr)
        aliases[key] = alias
        select = select.select(exp.alias_(expr, exp.to_identifier(alias, quoted=True)), copy=False)

    views = _needed_views(topic, [*selected, *filters])
    base = model.views[topic.base_view]
    select = select.from_(_table(base.table, base.name), copy=False)
    for view_name in topic.view_names()[1:]:
        if view_name in views:
            join = topic.joins[view_name]
            on = _qualified(join.sql_on, None, dialect)
            select = select.join(_table(model.views[view_name].table, view_name), on=on, join_type="left", copy=False)

    for key, value in filters.items():
        f = reachable[key]
        condition = _filter_condition(f, _field_expr(f, dialect), value, dialect, key)
        if f.is_measure:
            select = select.having(condition, copy=False)
        else:
            select = select.where(condition, copy=False)
    if group:
        select = select.group_by(*group, copy=False)
    for order in _orders(query, selected, reachable, aliases):
        select = select.order_by(order, copy=False)
    if query.limit is not None:
        select = select.limit(query.limit, copy=False)
    return _printed(select, dialect)


def _printed(select: exp.Select, dialect: str) -> str:
    """The SQL text; sqlglot prints recursively, so a deeply nested field is a refusal, not a RecursionError."""
    try:
        return select.sql(dialect=dialect)
    except RecursionError:
        raise SqlRefused(NESTED_TOO_DEEPLY) from None


def _topic(model: SemanticModel, name: str) -> Topic:
    topic = model.topics.get(name)
    if topic is None:
        raise ValidationError(f"unknown topic {name!r}; topics: {', '.join(sorted(model.topics)) or '(none)'}")
    return topic


def _table(table: str, alias: str) -> exp.Table:
    parts = table.split(".")
    db = exp.to_identifier(parts[0], quoted=True) if len(parts) == 2 else None
    return exp.Table(this=exp.to_identifier(parts[-1], quoted=True), db=db,
                     alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))  # fmt: skip


def _qualified(sql: str, view: str | None, dialect: str) -> exp.Expr:
    """Parses model SQL and names every column's table: `view` for a field, the view named in a join."""
    import sqlglot

    try:
        tree = sqlglot.parse_one(sql)
    except RecursionError:  # load_model refuses deep field SQL; a deeper stack here still gets a clear refusal
        raise SqlRefused(NESTED_TOO_DEEPLY) from None
    for col in list(tree.find_all(exp.Column)):
        table = col.table or view
        if table:
            col.set("table", exp.to_identifier(table, quoted=True))
    return tree


def _field_expr(f: Field, dialect: str) -> exp.Expr:
    inner = exp.Star() if f.sql == "*" else _qualified(f.sql, f.view, dialect)
    if f.aggregate is None:
        return inner
    match f.aggregate:
        case "sum":
            return exp.Sum(this=inner)
        case "count":
            return exp.Count(this=inner)
        case "count_distinct":
            return exp.Count(this=exp.Distinct(expressions=[inner]))
        case "avg":
            return exp.Avg(this=inner)
        case "min":
            return exp.Min(this=inner)
        case _:
            return exp.Max(this=inner)


def _needed_views(topic: Topic, keys: list[str]) -> set[str]:
    """The views the query names, plus every view their joins name (transitively)."""
    needed = {k.split(".", 1)[0] for k in keys}
    pending = list(needed)
    while pending:
        view = pending.pop()
        join = topic.joins.get(view)
        if join is None:
            continue
        for col in _qualified(join.sql_on, None, "duckdb").find_all(exp.Column):
            if col.table and col.table not in needed:
                needed.add(col.table)
                pending.append(col.table)
    return needed


# --- time grains ---------------------------------------------------------------------------------------


def _truncate(expr: exp.Expr, grain: str, dialect: str) -> exp.Expr:
    if dialect != "sqlite":
        trunc = exp.TimestampTrunc(this=expr, unit=exp.Var(this=grain.upper()))
        return exp.Cast(this=trunc, to=exp.DataType.build("DATE"))

    def fn(name: str, *args: exp.Expr) -> exp.Expr:
        return exp.Anonymous(this=name, expressions=list(args))

    s = exp.Literal.string
    match grain:
        case "day":
            return fn("DATE", expr)
        case "week":  # the Monday on or before the day
            return fn("DATE", expr, s("-6 days"), s("weekday 1"))
        case "month":
            return fn("STRFTIME", s("%Y-%m-01"), expr)
        case "year":
            return fn("STRFTIME", s("%Y-01-01"), expr)
        case _:  # quarter: back (month - 1) % 3 months from the month's start
            month = exp.Cast(this=fn("STRFTIME", s("%m"), expr), to=exp.DataType.build("INT"))
            back = exp.Mod(this=exp.Paren(this=exp.Sub(this=month, expression=exp.Literal.number(1))),
                           expression=exp.Literal.number(3))  # fmt: skip
            return fn("DATE", expr, s("start of month"), fn("PRINTF", s("-%d months"), back))


# --- filters -------------------------------------------------------------------------------------------


def _filter_condition(f: Field, expr: exp.Expr, value: Any, dialect: str, key: str) -> exp.Expr:
    value = FILTER_ADAPTER.validate_python(value) if not isinstance(value, Range) else value
    if f.type in DATE_TYPES:
        return _date_condition(f, expr, value, dialect, key)
    if isinstance(value, Range):
        parts: list[exp.Expr] = []
        for bound, op in ((value.from_, exp.GTE), (value.to, exp.LTE), (value.gt, exp.GT), (value.lt, exp.LT)):
            if bound is not None:
                parts.append(op(this=expr.copy(), expression=_literal(f, bound, key)))
        return exp.and_(*parts)
    if isinstance(value, list):
        return exp.In(this=expr, expressions=[_literal(f, v, key) for v in value])
    return exp.EQ(this=expr, expression=_literal(f, value, key))


def _literal(f: Field, value: Any, key: str) -> exp.Expr:
    if f.type == "boolean":
        if not isinstance(value, bool):
            raise ValidationError(f"filter on {key} expects true or false, got {value!r}")
        return exp.Boolean(this=value)
    if f.type == "number":
        number = _number(value)
        if number is None:
            raise ValidationError(f"filter on {key} expects a number, got {value!r}")
        return exp.Literal.number(number)
    if isinstance(value, bool):
        value = "true" if value else "false"
    return exp.Literal.string(str(value))


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}(\.\d{1,18})?", value.strip()):
        return float(value) if "." in value else int(value)
    return None


def _date_condition(f: Field, expr: exp.Expr, value: Any, dialect: str, key: str) -> exp.Expr:
    """Dates compare as half-open ranges [start, end) so a timestamp's whole last day is included."""
    if isinstance(value, Range):
        lo = _date_bound(value.from_, end=False, key=key) if value.from_ is not None else None
        if value.gt is not None:
            lo = _date_bound(value.gt, end=True, key=key)
        hi = _date_bound(value.to, end=True, key=key) if value.to is not None else None
        if value.lt is not None:
            hi = _date_bound(value.lt, end=False, key=key)
    elif isinstance(value, list):
        ors = [_date_condition(f, expr.copy(), v, dialect, key) for v in value]
        return exp.or_(*ors)
    else:
        lo, hi = _date_bound(value, end=False, key=key), _date_bound(value, end=True, key=key)
    parts: list[exp.Expr] = []
    if lo is not None:
        parts.append(exp.GTE(this=expr.copy(), expression=_date_literal(lo, dialect)))
    if hi is not None:
        parts.append(exp.LT(this=expr.copy(), expression=_date_literal(hi, dialect)))
    return exp.and_(*parts)


def _date_bound(value: Any, *, end: bool, key: str) -> dt.date:
    """The first day of the period `value` names, or (end) the day after its last day."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", text[:10] if len(text) > 10 else text)
    if m is None:
        raise ValidationError(f"filter on {key} expects a date like 2025, 2025-03 or 2025-03-31, got {value!r}")
    year, month, day = int(m.group(1)), m.group(2), m.group(3)
    try:
        if month is None:
            return dt.date(year + 1, 1, 1) if end else dt.date(year, 1, 1)
        if day is None:
            first = dt.date(year, int(month), 1)
            days = calendar.monthrange(year, int(month))[1]
            return first + dt.timedelta(days=days) if end else first
        day_value = dt.date(year, int(month), int(day))
    except ValueError:
        raise ValidationError(f"filter on {key}: {value!r} is not a real date") from None
    return day_value + dt.timedelta(days=1) if end else day_value


def _date_literal(day: dt.date, dialect: str) -> exp.Expr:
    literal = exp.Literal.string(day.isoformat())
    if dialect == "sqlite":  # SQLite keeps dates as ISO text, which compares in date order
        return literal
    return exp.Cast(this=literal, to=exp.DataType.build("DATE"))


# --- order ---------------------------------------------------------------------------------------------


def _orders(
    query: StructuredQuery, selected: list[str], reachable: dict[str, Field], aliases: dict[str, str]
) -> list[exp.Expr]:
    if query.sorts:
        orders: list[exp.Expr] = []
        for sort in query.sorts:
            if sort.column_name not in aliases:
                raise ValidationError(f"sort on {sort.column_name}, which is not among the query's fields")
            column = exp.column(exp.to_identifier(aliases[sort.column_name], quoted=True))
            orders.append(exp.Ordered(this=column, desc=sort.sort_descending, nulls_first=False))
        return orders
    dims = [k for k in selected if not reachable[k].is_measure]
    dims.sort(key=lambda k: reachable[k].type not in DATE_TYPES)
    return [exp.Ordered(this=exp.column(exp.to_identifier(aliases[k], quoted=True)), nulls_first=True) for k in dims]
