"""What code resolves from a question before a model is asked: the time range and grain, the fields it names, how
relevant each field is, and which topic it is most likely about.

A 135M-parameter model gets these wrong often ("past year" becomes the last 30 days), so `ask` merges them into
the model's structured query with `apply_hints`, and code's date range always wins.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.analytics.dates import DateRange, resolve_date_range, resolve_time_grain
from conveyor.analytics.query import MAX_QUERY_FIELDS, StructuredQuery
from conveyor.analytics.semantic import DATE_TYPES, Field, SemanticModel, Topic, topic_fields
from conveyor.analytics.values import ValueIndex, named_values

MAX_MENTIONED_FIELDS = 6


MAX_LOOSE_DIMENSIONS = 2  # past this many dimensions, those unrelated to the question are dropped


@dataclass(frozen=True, slots=True)
class Hints:
    """What code resolved from the question before the model is asked."""

    date_range: DateRange | None = None
    date_field: str | None = None
    time_grain: str | None = None
    fields: tuple[str, ...] = ()
    relevance: Mapping[str, int] = field(default_factory=dict)  # each topic field's word overlap with the question
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # dimension values the question names

    def lines(self) -> list[str]:
        out = []
        if self.date_range is not None:
            where = f" on {self.date_field}" if self.date_field else ""
            out.append(f'time range{where}: {self.date_range.describe()} ("{self.date_range.phrase}")')
        if self.time_grain:
            out.append(f"time grain: {self.time_grain}")
        if self.fields:
            out.append("fields named in the question: " + ", ".join(self.fields))
        for key, values in self.values.items():
            out.append(f"filter {key}: " + ", ".join(values))
        return out


_ALL_TIME = re.compile(r"\b(all[- ]time|ever|overall|in total|all (the )?years)\b", re.IGNORECASE)


def resolve_hints(
    semantic: SemanticModel,
    topic: Topic,
    question: str,
    today: dt.date,
    earlier: Sequence[str] = (),
    values: ValueIndex | None = None,
) -> Hints:
    """The time range, time grain and named fields code finds in the question for this topic.

    A follow-up that names no time range keeps the one of the latest earlier question that did (`earlier`, the
    conversation's questions, newest first): after "sales by region for the past year", "which region had the most
    revenue?" still means the past year, unless it asks for all time. A follow-up that names no field and no time
    grain of its own ("and only for Europe?") asks the earlier question again, narrowed: it keeps that question's
    fields, grain and relevance. `values` (see `analytics.values`) lets code turn a dimension value the question
    names ("only for Europe") into a filter."""
    fields = topic_fields(semantic, topic)
    mentioned = _mentioned_fields(question, fields)
    grain = resolve_time_grain(question)
    basis = question
    if not mentioned and grain is None and earlier:
        basis = f"{earlier[0]} {question}"
        mentioned, grain = _mentioned_fields(basis, fields), resolve_time_grain(earlier[0])
    date_range = resolve_date_range(question, today)
    if date_range is None and not _ALL_TIME.search(question):
        date_range = next((found for text in earlier if (found := resolve_date_range(text, today))), None)
    date_field = _date_field(topic, fields, mentioned) if date_range or grain else None
    named = named_values(question, values or {})
    return Hints(date_range, date_field, grain, tuple(mentioned), field_relevance(basis, fields), named)


_STOP_WORDS = frozenset(
    "the and for with what which who whom how many much are was were does did per each from over last past this "
    "that these those than most least top show give list all our have has had by of in on to is a an me we do "
    "any into between during about".split()
)


def field_relevance(question: str, fields: Mapping[str, Field]) -> dict[str, int]:
    """How many of the question's words each field's name or label (2 each) and description (1 each) share.

    Keys (`*_id`) count only when the question says "id": "customers" is about customers, not their ids.
    """
    asked = set(_words(question))
    words = {_stem(word) for word in asked - _STOP_WORDS if len(word) >= 3}
    out: dict[str, int] = {}
    for key, f in fields.items():
        if (f.name == "id" or f.name.endswith("_id")) and not asked & {"id", "ids"}:
            out[key] = 0
            continue
        strong = {_stem(word) for word in _words(f"{f.name} {f.label}")}
        weak = {_stem(word) for word in _words(f.description)} - _STOP_WORDS
        out[key] = 2 * len(words & strong) + len(words & weak)
    return out


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def topic_score(semantic: SemanticModel, topic: Topic, question: str) -> int:
    """How well a topic matches a question, by code: one of its sample questions (100), each field the question
    names (2 each), its own name or label named (1). A topic that is clearly ahead is used without asking."""
    text = _words(question)
    if any(_words(sample) == text for sample in topic.sample_questions):
        return 100
    score = 2 * len(_mentioned_fields(question, topic_fields(semantic, topic), limit=None))
    names = {topic.name.replace("_", " ").lower(), topic.label.lower()}
    if any(len(name) >= 3 and re.search(_word_pattern(name), " ".join(text)) for name in names):
        score += 1
    return score


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("_", " "))


def _mentioned_fields(
    question: str, fields: Mapping[str, Field], *, limit: int | None = MAX_MENTIONED_FIELDS
) -> list[str]:
    """Fields the question names by key, label, or name when no other field shares it (whole words, plurals too)."""
    text = " ".join(question.lower().replace("_", " ").split())
    counts: dict[str, int] = {}
    for f in fields.values():
        counts[f.name] = counts.get(f.name, 0) + 1
    found: list[str] = []
    for key, f in fields.items():
        names = {key.lower().replace("_", " "), f.label.lower()}
        if counts[f.name] == 1:
            names.add(f.name.replace("_", " ").lower())
        if any(len(name) >= 3 and re.search(_word_pattern(name), text) for name in names):
            found.append(key)
    return found[:limit]


def _word_pattern(name: str) -> str:
    """A whole-word pattern for `name` and its plural (`region(s)`, `category`/`categories`)."""
    plural = rf"(?:{re.escape(name[:-1])}ies)|" if name.endswith("y") else ""
    return rf"\b(?:{plural}{re.escape(name)}(?:e?s)?)\b"


def _date_field(topic: Topic, fields: Mapping[str, Field], mentioned: Sequence[str]) -> str | None:
    """The date dimension a time range applies to: one the question names, else the base view's first."""
    dates = [key for key, f in fields.items() if f.type in DATE_TYPES and not f.is_measure]
    for key in mentioned:
        if key in dates:
            return key
    base = [key for key in dates if key.split(".", 1)[0] == topic.base_view]
    candidates = base or dates
    return candidates[0] if candidates else None


def apply_hints(query: StructuredQuery, hints: Hints, fields: Mapping[str, Field]) -> StructuredQuery:
    """The model's query with code's resolution merged in (and checked again).

    Code's time range replaces any date filter the model set, code's time grain wins, fields the question names
    are added, a time grain brings its date field along, and dimensions come first (dates first), then measures.
    """
    chosen = list(dict.fromkeys(query.fields))  # a small model repeats itself
    filters: dict[str, Any] = dict(query.filters)
    grain = hints.time_grain or query.time_grain
    if hints.date_range is not None and hints.date_field is not None:
        filters = {key: value for key, value in filters.items() if fields[key].type not in DATE_TYPES}
        filters[hints.date_field] = _range_filter(hints.date_range)
    for key, values in hints.values.items():
        filters[key] = values[0] if len(values) == 1 else list(values)
    has_measure = any(fields[key].is_measure for key in chosen)
    for key in hints.fields:
        # A named dimension always joins; a named measure only when the model chose none ("customers" names the
        # Customers count, yet "top customers by revenue" wants names).
        if (
            key not in chosen
            and not _is_date_dimension(fields[key])
            and (not fields[key].is_measure or not has_measure)
        ):
            chosen.append(key)
    chosen = _focused(chosen, hints, fields)
    if grain and hints.date_field and not any(_is_date_dimension(fields[key]) for key in chosen):
        chosen.append(hints.date_field)
    if not any(_is_date_dimension(fields[key]) for key in chosen):
        grain = None  # nothing to truncate
    chosen.sort(key=lambda key: (fields[key].is_measure, not _is_date_dimension(fields[key])))
    data = query.model_dump(by_alias=True)
    data.update(
        fields=chosen[:MAX_QUERY_FIELDS],
        filters=filters,
        time_grain=grain,
        sorts=[sort.model_dump() for sort in query.sorts if sort.column_name in chosen],
    )
    return StructuredQuery.model_validate(data)


def _focused(chosen: list[str], hints: Hints, fields: Mapping[str, Field]) -> list[str]:
    """Fields fitted to the question when the model's pick is off: the most relevant measure when it chose none
    (a weak model lists dimensions only), and, past `MAX_LOOSE_DIMENSIONS` dimensions, only those the question
    names or shares words with (a weak model fills every slot it is given)."""
    if not any(fields[key].is_measure for key in chosen):
        measures = [key for key, f in fields.items() if f.is_measure and hints.relevance.get(key, 0) > 0]
        if measures:
            chosen = [*chosen, max(measures, key=lambda key: hints.relevance[key])]
    dims = [key for key in chosen if not fields[key].is_measure and not _is_date_dimension(fields[key])]
    if len(dims) > MAX_LOOSE_DIMENSIONS:
        keep = [key for key in dims if key in hints.fields or hints.relevance.get(key, 0) > 0] or dims[:2]
        chosen = [key for key in chosen if key not in dims or key in keep]
    return chosen


def _is_date_dimension(f: Field) -> bool:
    return f.type in DATE_TYPES and not f.is_measure


def _range_filter(found: DateRange) -> dict[str, str]:
    bounds = {}
    if found.start is not None:
        bounds["from"] = found.start.isoformat()
    if found.end is not None:
        bounds["lt"] = found.end.isoformat()
    return bounds
