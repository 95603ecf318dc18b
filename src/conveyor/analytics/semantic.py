"""The semantic layer: views and topics written as YAML files, parsed and checked without touching a database.

A model is a set of files keyed by file name (Omni-style):

- `<view>.view` — one view: the table it reads, its dimensions and its measures.
- `<topic>.topic` — one topic: a base view, the views joined to it, and what a language model needs to know.
- `model` (optional) — `description` and `ai_context` for the model as a whole.

Example `orders.view`::

    table: orders              # defaults to the view's name; `schema.table` is allowed
    description: One row per order line.
    dimensions:
      order_id: {type: number}                 # sql defaults to the column of the field's name
      order_date: {type: date, label: Order date}
      net_amount: {type: number, sql: "quantity * unit_price"}
    measures:
      revenue: {aggregate: sum, sql: amount, description: Net revenue}
      order_count: {aggregate: count}           # COUNT(*)
      customer_count: {aggregate: count_distinct, sql: customer_id}

Example `sales.topic`::

    base_view: orders
    label: Sales
    description: Orders with their customer, product and region.
    ai_context: Revenue counts completed orders only.
    joins:
      customers: {sql_on: "orders.customer_id = customers.customer_id", relationship: many_to_one}
      regions: {sql_on: "customers.region_id = regions.region_id", relationship: many_to_one}
    default_filters:
      orders.status: completed
    sample_questions: ["Revenue by region by month for the past year"]

SQL conventions, chosen to stay simple:

- A field's `sql` is one SQL expression over the view's **own columns, named bare** (`amount`,
  `quantity * unit_price`); it may not name another view's column nor another field. At compile time every
  column gets the view's name as its table alias, so the same expression works in any join.
- A measure is an `aggregate` (sum, count, count_distinct, avg, min, max) over its `sql` expression; the
  expression itself must not aggregate. `count` without `sql` is `COUNT(*)`. Measures are numbers unless
  `type` says otherwise (min/max of a date).
- A join's `sql_on` is a condition over columns qualified by **view name** (`orders.customer_id =
  customers.customer_id`); the view names are the table aliases in generated SQL. Joins are LEFT JOINs in
  the order written, and a join may only name the base view, views joined before it, and itself.
- `default_filters` map `view.field` to a filter value (see `FilterValue`); a query's own filter on the same
  field replaces the default.

Validation (`load_model`) never raises for bad content: it returns every problem it finds with its place
(file, view, field), and keeps whatever parts are sound so callers can still list them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints

# sqlglot (and `guard`, built on it) is imported by the functions that parse SQL, not here: a server imports this
# module at start and keeps ~14 MB of sqlglot out of its idle memory until a model is loaded.

MAX_FILES = 200
MAX_FILE_BYTES = 256 * 1024
MAX_FIELDS_PER_VIEW = 500
MAX_JOINS_PER_TOPIC = 50
MAX_SAMPLE_QUESTIONS = 50
MAX_TEXT = 4000
MAX_SQL = 2000
MAX_NAME = 64
MAX_PROBLEMS = 1000
# A field's SQL is embedded a few levels deeper in every compiled query (aggregate, alias, WHERE ...): its own
# bracket depth stays well under the guard's MAX_NESTING so compiling and printing it cannot exhaust the stack.
MAX_FIELD_NESTING = 12
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)
MODEL_FILE = "model"

FieldType = Literal["string", "number", "date", "timestamp", "boolean"]
Aggregate = Literal["sum", "count", "count_distinct", "avg", "min", "max"]
Relationship = Literal["many_to_one", "one_to_one", "one_to_many", "many_to_many"]
Severity = Literal["error", "warning"]
TimeGrain = Literal["day", "week", "month", "quarter", "year"]
TIME_GRAINS: tuple[str, ...] = ("day", "week", "month", "quarter", "year")
DATE_TYPES = ("date", "timestamp")

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Sql = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SQL)]
Scalar = Annotated[str, StringConstraints(max_length=200)] | int | float | bool


class Range(BaseModel):
    """A range filter: `from`/`to` are inclusive bounds, `gt`/`lt` exclusive; dates as `YYYY-MM-DD`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    from_: Scalar | None = pydantic.Field(default=None, alias="from")
    to: Scalar | None = None
    gt: Scalar | None = None
    lt: Scalar | None = None

    @pydantic.model_validator(mode="after")
    def _one_bound(self) -> Range:
        if self.from_ is None and self.to is None and self.gt is None and self.lt is None:
            raise ValueError("a range needs at least one of from, to, gt, lt")
        return self


# A filter value: a scalar (equality), a list of scalars (IN), or a range. Kept small on purpose: a
# 135M-parameter model fills it through a JSON schema.
FilterValue = Scalar | Annotated[list[Scalar], pydantic.Field(min_length=1, max_length=100)] | Range
FILTER_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(FilterValue)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a model, with its place; `severity` "error" makes the model unusable for queries."""

    message: str
    severity: Severity = "error"
    view: str | None = None
    field: str | None = None
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "severity": self.severity, "view": self.view, "field": self.field,
                "file": self.file}  # fmt: skip


@dataclass(frozen=True)
class Field:
    """A dimension or a measure of a view. `aggregate` is set for measures only; `sql` is over own columns."""

    name: str
    sql: str
    type: FieldType
    description: str = ""
    label: str = ""
    aggregate: Aggregate | None = None
    view: str = ""

    @property
    def is_measure(self) -> bool:
        return self.aggregate is not None


@dataclass(frozen=True)
class View:
    """A table and the fields defined over it."""

    name: str
    table: str
    description: str = ""
    label: str = ""
    dimensions: dict[str, Field] = field(default_factory=dict)
    measures: dict[str, Field] = field(default_factory=dict)

    def fields(self) -> dict[str, Field]:
        return {**self.dimensions, **self.measures}


@dataclass(frozen=True)
class Join:
    """How a topic reaches a view: a LEFT JOIN on `sql_on` (columns qualified by view name)."""

    sql_on: str
    relationship: Relationship = "many_to_one"


@dataclass(frozen=True)
class Topic:
    """A base view with join paths, and the descriptions a language model reads to pick and query it."""

    name: str
    base_view: str
    joins: dict[str, Join] = field(default_factory=dict)
    label: str = ""
    description: str = ""
    ai_context: str = ""
    default_filters: dict[str, Any] = field(default_factory=dict)
    sample_questions: list[str] = field(default_factory=list)
    hidden: bool = False

    def view_names(self) -> list[str]:
        return [self.base_view, *self.joins]


@dataclass
class SemanticModel:
    """The parsed model: every sound view and topic (a broken part is left out and reported as a problem)."""

    views: dict[str, View] = field(default_factory=dict)
    topics: dict[str, Topic] = field(default_factory=dict)
    description: str = ""
    ai_context: str = ""


# --- file schemas (what the YAML may contain) ----------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DimensionSpec(_Strict):
    sql: Sql | None = None
    type: FieldType = "string"
    description: Text = ""
    label: Annotated[str, StringConstraints(max_length=200)] = ""


class _MeasureSpec(_Strict):
    aggregate: Aggregate
    sql: Sql | None = None
    type: FieldType = "number"
    description: Text = ""
    label: Annotated[str, StringConstraints(max_length=200)] = ""


TABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})?$"


class _ViewSpec(_Strict):
    table: Annotated[str, StringConstraints(pattern=TABLE_PATTERN)] | None = None
    description: Text = ""
    label: Annotated[str, StringConstraints(max_length=200)] = ""
    dimensions: dict[Name, _DimensionSpec] = pydantic.Field(default_factory=dict, max_length=MAX_FIELDS_PER_VIEW)
    measures: dict[Name, _MeasureSpec] = pydantic.Field(default_factory=dict, max_length=MAX_FIELDS_PER_VIEW)


class _JoinSpec(_Strict):
    sql_on: Sql
    relationship: Relationship = "many_to_one"


class _TopicSpec(_Strict):
    base_view: Name
    label: Annotated[str, StringConstraints(max_length=200)] = ""
    description: Text = ""
    ai_context: Text = ""
    joins: dict[Name, _JoinSpec] = pydantic.Field(default_factory=dict, max_length=MAX_JOINS_PER_TOPIC)
    default_filters: dict[Annotated[str, StringConstraints(max_length=2 * MAX_NAME + 1)], Any] = pydantic.Field(
        default_factory=dict, max_length=50
    )
    sample_questions: list[Annotated[str, StringConstraints(max_length=500)]] = pydantic.Field(
        default_factory=list, max_length=MAX_SAMPLE_QUESTIONS
    )
    hidden: bool = False


class _ModelSpec(_Strict):
    description: Text = ""
    ai_context: Text = ""


_S = TypeVar("_S", bound=BaseModel)


# --- loading -------------------------------------------------------------------------------------------


def load_model(files: Mapping[str, str]) -> tuple[SemanticModel, list[Problem]]:
    """Parses and checks a model's files; returns the sound parts and every problem found (never raises)."""
    try:
        return _load_model(files)
    except RecursionError:  # a safety net: each parse is bounded, but YAML and sqlglot both recurse per level
        return SemanticModel(), [Problem("the model is nested too deeply to read")]


def _load_model(files: Mapping[str, str]) -> tuple[SemanticModel, list[Problem]]:
    problems: list[Problem] = []
    model = SemanticModel()
    if len(files) > MAX_FILES:
        problems.append(Problem(f"a model has at most {MAX_FILES} files, got {len(files)}"))
        return model, problems
    topic_specs: dict[str, tuple[str, _TopicSpec]] = {}
    for file_name in sorted(files):
        kind, name = _classify(file_name, problems)
        if kind is None:
            continue
        data = _read_yaml(file_name, files[file_name], problems)
        if data is None:
            continue
        if kind == "model":
            model_spec = _validate(_ModelSpec, data, file_name, None, problems)
            if model_spec is not None:
                model.description, model.ai_context = model_spec.description, model_spec.ai_context
        elif kind == "view":
            view_spec = _validate_sound_parts(_ViewSpec, data, file_name, name, problems)
            if view_spec is not None:
                model.views[name] = _build_view(name, view_spec, file_name, problems)
        else:
            topic_spec = _validate_sound_parts(_TopicSpec, data, file_name, None, problems)
            if topic_spec is not None:
                topic_specs[name] = (file_name, topic_spec)
    for name, (file_name, spec) in topic_specs.items():
        topic = _build_topic(name, spec, model, file_name, problems)
        if topic is not None:
            model.topics[name] = topic
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], Problem(f"... and {more} more problems")]
    return model, problems


def topic_fields(model: SemanticModel, topic: str | Topic) -> dict[str, Field]:
    """Every field a topic reaches, keyed `"view.field"`, base view first then joins in order."""
    the_topic = model.topics[topic] if isinstance(topic, str) else topic
    out: dict[str, Field] = {}
    for view_name in the_topic.view_names():
        view = model.views.get(view_name)
        if view is None:
            continue
        for name, f in view.fields().items():
            out[f"{view_name}.{name}"] = f
    return out


def topic_tables(model: SemanticModel, topic: str | Topic) -> set[str]:
    """The tables a topic's views read: what `guard_sql` should allow for this topic."""
    the_topic = model.topics[topic] if isinstance(topic, str) else topic
    return {model.views[v].table for v in the_topic.view_names() if v in model.views}


def has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def _classify(file_name: str, problems: list[Problem]) -> tuple[str | None, str]:
    if file_name == MODEL_FILE:
        return "model", ""
    stem, dot, suffix = file_name.rpartition(".")
    if not dot or suffix not in ("view", "topic"):
        problems.append(Problem("file names are `<name>.view`, `<name>.topic` or `model`", file=file_name[:200]))
        return None, ""
    if not NAME_RE.match(stem):
        problems.append(
            Problem(
                f"{suffix} name {stem[:80]!r} is not an identifier of at most {MAX_NAME} characters",
                file=file_name[:200],
            )
        )
        return None, ""
    return suffix, stem


def _read_yaml(file_name: str, text: str, problems: list[Problem]) -> dict[str, Any] | None:
    if len(text.encode()) > MAX_FILE_BYTES:
        problems.append(Problem(f"file is over {MAX_FILE_BYTES} bytes", file=file_name))
        return None
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            problems.append(Problem("YAML aliases (*name) are not allowed", file=file_name))
            return None
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problems.append(Problem(f"bad YAML{where}: {getattr(err, 'problem', None) or err}", file=file_name))
        return None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(Problem("the file must hold a YAML mapping", file=file_name))
        return None
    return data


def _validate(
    schema: type[_S], data: dict[str, Any], file_name: str, view: str | None, problems: list[Problem]
) -> _S | None:
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as err:
        for e in err.errors():
            loc = [str(p) for p in e["loc"]]
            field_name = loc[1][: MAX_NAME * 2] if len(loc) >= 2 and loc[0] in ("dimensions", "measures") else None
            where = ".".join(loc)[:200] or "(file)"
            message = f"unknown key {where!r}" if e["type"] == "extra_forbidden" else f"{where}: {e['msg']}"
            problems.append(Problem(message, view=view, field=field_name, file=file_name))
        return None


def _validate_sound_parts(
    schema: type[_S], data: dict[str, Any], file_name: str, view: str | None, problems: list[Problem]
) -> _S | None:
    """Validates, reports every error, then keeps going without the broken parts so later checks still run.

    A broken field (`dimensions.x`, `joins.y`) is dropped on its own; any other broken key is dropped whole.
    """
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as err:
        errors = err.errors()
    _validate(schema, data, file_name, view, problems)
    pruned = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for e in errors:
        loc = e["loc"]
        if not loc:
            return None
        key = str(loc[0])
        section = pruned.get(key)
        if (
            len(loc) >= 2
            and isinstance(section, dict)
            and key in ("dimensions", "measures", "joins", "default_filters")
        ):
            section.pop(str(loc[1]), None)
        else:
            pruned.pop(key, None)
    try:
        return schema.model_validate(pruned)
    except pydantic.ValidationError:
        return None


def _build_view(name: str, spec: _ViewSpec, file_name: str, problems: list[Problem]) -> View:
    dimensions: dict[str, Field] = {}
    measures: dict[str, Field] = {}
    for dim_name, dim in spec.dimensions.items():
        sql = dim.sql or _column_sql(dim_name)
        if _check_field_sql(sql, name, dim_name, file_name, problems, measure=False):
            dimensions[dim_name] = Field(dim_name, sql, dim.type, dim.description, dim.label, None, name)
    for m_name, m in spec.measures.items():
        if m_name in spec.dimensions:
            problems.append(Problem(f"duplicate field name {m_name!r} (a dimension and a measure)", view=name,
                                    field=m_name, file=file_name))  # fmt: skip
            continue
        if m.sql is None and m.aggregate != "count":
            problems.append(Problem(f"a {m.aggregate} measure needs `sql`", view=name, field=m_name, file=file_name))
            continue
        sql = m.sql or "*"
        if sql == "*" or _check_field_sql(sql, name, m_name, file_name, problems, measure=True):
            measures[m_name] = Field(m_name, sql, m.type, m.description, m.label, m.aggregate, name)
    return View(name, spec.table or name, spec.description, spec.label, dimensions, measures)


def _column_sql(name: str) -> str:
    """The SQL for a dimension without `sql`: its column, quoted when the bare name would read as a keyword."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(name)
    except (sqlglot.errors.ParseError, RecursionError):
        tree = None
    return name if isinstance(tree, exp.Column) and tree.name == name and not tree.table else f'"{name}"'


def _check_field_sql(sql: str, view: str, name: str, file_name: str, problems: list[Problem], *, measure: bool) -> bool:
    import sqlglot

    from conveyor.analytics.guard import nesting_depth

    def bad(message: str) -> bool:
        problems.append(Problem(message, view=view, field=name, file=file_name))
        return False

    if nesting_depth(sql) > MAX_FIELD_NESTING:
        return bad(f"sql is nested too deeply (over {MAX_FIELD_NESTING} levels of brackets)")
    try:
        return _check_parsed_field(sqlglot.parse_one(sql), view, bad, measure=measure)
    except sqlglot.errors.ParseError as err:
        return bad(f"sql does not parse: {str(err).splitlines()[0][:300]}")
    except RecursionError:  # sqlglot recurses per level: deep NOT/CASE chains exhaust the stack
        return bad("sql is nested too deeply")


def _check_parsed_field(tree: Any, view: str, bad: Callable[[str], bool], *, measure: bool) -> bool:
    from sqlglot import exp

    from conveyor.analytics.guard import check_expression

    if isinstance(tree, exp.Query | exp.Command) or tree.find(exp.Query):
        return bad("sql must be one expression, without subqueries")
    for col in tree.find_all(exp.Column):
        if col.table and col.table != view:
            return bad(f"sql names {col.table}.{col.name}: a field may only use its own view's columns")
    unsafe = check_expression(tree)
    if unsafe is not None:
        return bad(f"sql is not allowed: {unsafe}")
    if measure and tree.find(exp.AggFunc):
        return bad("a measure's sql must not aggregate: put the function in `aggregate`")
    return True


def _build_topic(
    name: str, spec: _TopicSpec, model: SemanticModel, file_name: str, problems: list[Problem]
) -> Topic | None:
    before = len(problems)
    if spec.base_view not in model.views:
        problems.append(Problem(f"topic {name!r}: unknown base view {spec.base_view!r}", view=spec.base_view,
                                file=file_name))  # fmt: skip
    seen = [spec.base_view]
    for view_name, join in spec.joins.items():
        if view_name not in model.views:
            problems.append(Problem(f"topic {name!r}: join to unknown view {view_name!r}", view=view_name,
                                    file=file_name))  # fmt: skip
        elif view_name in seen:
            problems.append(Problem(f"topic {name!r}: view {view_name!r} joined twice", view=view_name, file=file_name))
        else:
            _check_join(name, view_name, join.sql_on, seen, model, file_name, problems)
        seen.append(view_name)
    joins = {v: Join(j.sql_on, j.relationship) for v, j in spec.joins.items()}
    topic = Topic(name, spec.base_view, joins, spec.label, spec.description, spec.ai_context, {},
                  list(spec.sample_questions), spec.hidden)  # fmt: skip
    if len(problems) == before:
        reachable = topic_fields(model, topic)
        filters: dict[str, Any] = {}
        for key, value in spec.default_filters.items():
            if key not in reachable:
                problems.append(Problem(f"topic {name!r}: default filter on unknown field {key!r}", field=key,
                                        file=file_name))  # fmt: skip
                continue
            try:
                filters[key] = FILTER_ADAPTER.validate_python(value)
            except pydantic.ValidationError:
                problems.append(Problem(f"topic {name!r}: default filter on {key!r} is not a valid filter value",
                                        field=key, file=file_name))  # fmt: skip
        topic = Topic(name, topic.base_view, joins, topic.label, topic.description, topic.ai_context, filters,
                      topic.sample_questions, topic.hidden)  # fmt: skip
    return topic if len(problems) == before else None


def _check_join(
    topic: str, view_name: str, sql_on: str, seen: list[str], model: SemanticModel, file_name: str,
    problems: list[Problem],
) -> None:  # fmt: skip
    import sqlglot

    from conveyor.analytics.guard import nesting_depth

    if nesting_depth(sql_on) > MAX_FIELD_NESTING:
        problems.append(Problem(f"topic {topic!r}: join sql_on is nested too deeply (over {MAX_FIELD_NESTING} "
                                "levels of brackets)", view=view_name, file=file_name))  # fmt: skip
        return
    try:
        _check_parsed_join(topic, view_name, sqlglot.parse_one(sql_on), seen, file_name, problems)
    except sqlglot.errors.ParseError as err:
        problems.append(Problem(f"topic {topic!r}: join sql_on does not parse: {str(err).splitlines()[0][:300]}",
                                view=view_name, file=file_name))  # fmt: skip
    except RecursionError:
        problems.append(Problem(f"topic {topic!r}: join sql_on is nested too deeply", view=view_name,
                                file=file_name))  # fmt: skip


def _check_parsed_join(
    topic: str, view_name: str, tree: Any, seen: list[str], file_name: str, problems: list[Problem]
) -> None:
    from sqlglot import exp

    from conveyor.analytics.guard import check_expression

    if tree.find(exp.Query) or isinstance(tree, exp.Command):
        problems.append(Problem(f"topic {topic!r}: join sql_on must be a condition without subqueries",
                                view=view_name, file=file_name))  # fmt: skip
        return
    unsafe = check_expression(tree)
    if unsafe is not None:
        problems.append(Problem(f"topic {topic!r}: join sql_on is not allowed: {unsafe}", view=view_name,
                                file=file_name))  # fmt: skip
        return
    tables = set()
    for col in tree.find_all(exp.Column):
        if not col.table:
            problems.append(Problem(f"topic {topic!r}: join to {view_name!r} names column {col.name!r} without its "
                                    "view: write view.column", view=view_name, file=file_name))  # fmt: skip
            continue
        tables.add(col.table)
        if col.table not in [*seen, view_name]:
            problems.append(Problem(f"topic {topic!r}: join to {view_name!r} names view {col.table!r}, which is not "
                                    "the base view or joined before it", view=view_name, file=file_name))  # fmt: skip
    if view_name not in tables:
        problems.append(Problem(f"topic {topic!r}: join to {view_name!r} does not use any of its columns",
                                view=view_name, file=file_name))  # fmt: skip


def join_columns(join: Join) -> list[tuple[str, str]]:
    """The `(view, column)` pairs a join condition names (for checks against the database)."""
    import sqlglot
    from sqlglot import exp

    try:  # load_model refused deep SQL; this stays a safety net for a deeper stack
        tree = sqlglot.parse_one(join.sql_on)
    except (sqlglot.errors.ParseError, RecursionError):
        return []
    return [(c.table, c.name) for c in tree.find_all(exp.Column) if c.table]


def field_columns(f: Field) -> list[str]:
    """The own-view columns a field's SQL names."""
    import sqlglot
    from sqlglot import exp

    if f.sql == "*":
        return []
    try:  # load_model refused deep SQL; this stays a safety net for a deeper stack
        tree = sqlglot.parse_one(f.sql)
    except (sqlglot.errors.ParseError, RecursionError):
        return []
    return [c.name for c in tree.find_all(exp.Column)]


def parse_date(value: object) -> dt.date | None:
    """A `YYYY-MM-DD` string as a date, else None (filters on date fields use it)."""
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            return None
    return None
