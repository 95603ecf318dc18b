"""The values of a topic's text dimensions, so code can tell that "only for Europe" means `regions.name = Europe`.

A small model rarely turns a value named in a question into a filter; code can, when it knows the values. For each
text dimension of the topic (ids left out) this reads its distinct values through the semantic layer — the same
compile, guard and read-only run as any answer, default filters included — and keeps a dimension only when it has
at most `MAX_VALUES` of them (a customer-name column is no vocabulary). The index is kept `TTL_S` per connection and
topic, so a question costs these queries only now and then; any failure leaves the index empty, never the answer.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from conveyor.analytics.connect import ConnectionSpec, run_read_only
from conveyor.analytics.guard import guard_sql
from conveyor.analytics.query import StructuredQuery, compile_query
from conveyor.analytics.semantic import SemanticModel, Topic, topic_fields, topic_tables

log = logging.getLogger("conveyor.analytics")

MAX_VALUES = 200  # distinct values a dimension may have to be matched against questions
MAX_DIMENSIONS = 12  # text dimensions read per topic
MAX_VALUE_CHARS = 60
MIN_VALUE_CHARS = 3  # shorter values ("M", "EU") would match too much prose
MAX_NAMED = 5  # values matched per dimension
TTL_S = 600.0
CACHE_SIZE = 64
ValueIndex = Mapping[str, Sequence[str]]  # "view.field" -> its distinct values

_cache: OrderedDict[tuple[str, ...], tuple[float, dict[str, list[str]]]] = OrderedDict()


async def value_index(semantic: SemanticModel, spec: ConnectionSpec, topic: Topic, *, timeout_s: float) -> ValueIndex:
    """The topic's text dimensions with their few distinct values (cached); empty when they cannot be read."""
    fields = topic_fields(semantic, topic)
    keys = [
        key
        for key, f in fields.items()
        if not f.is_measure and f.type == "string" and f.name != "id" and not f.name.endswith("_id")
    ][:MAX_DIMENSIONS]
    cache_key = (spec.kind, spec.target, topic.name, *(f"{key}={fields[key].sql}" for key in keys))
    now = time.monotonic()
    cached = _cache.get(cache_key)
    if cached is not None and cached[0] > now:
        _cache.move_to_end(cache_key)
        return cached[1]
    index: dict[str, list[str]] = {}
    tables = topic_tables(semantic, topic)
    try:
        for key in keys:
            query = StructuredQuery(topic=topic.name, fields=[key], limit=MAX_VALUES + 1)
            sql = guard_sql(
                compile_query(semantic, query, dialect=spec.dialect),
                dialect=spec.dialect,
                allowed_tables=tables,
                max_rows=MAX_VALUES + 1,
            )
            rows = await run_read_only(spec, sql, timeout_s=timeout_s, max_rows=MAX_VALUES + 1)
            values = [row[0] for row in rows.rows if isinstance(row[0], str)]
            if len(rows.rows) <= MAX_VALUES:
                index[key] = [v for v in values if MIN_VALUE_CHARS <= len(v) <= MAX_VALUE_CHARS]
    except Exception as exc:  # the index only helps: an answer must not fail for it
        log.info("ask: the values of topic %s could not be read (%s); no value matching", topic.name, exc)
        index = {}
    _cache[cache_key] = (now + TTL_S, index)
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return index


def named_values(question: str, index: ValueIndex) -> dict[str, tuple[str, ...]]:
    """The values the question names, as whole words in any case, by dimension; a value inside a longer matched
    value of the same dimension ("America" in "North America") counts once, as the longer."""
    found: dict[str, tuple[str, ...]] = {}
    for key, values in index.items():
        spans: list[tuple[int, int]] = []
        named: list[str] = []
        for value in sorted(values, key=len, reverse=True):
            match = re.search(rf"(?<!\w){re.escape(value)}(?!\w)", question, re.IGNORECASE)
            if match is None or any(a <= match.start() and match.end() <= b for a, b in spans):
                continue
            spans.append(match.span())
            named.append(value)
            if len(named) == MAX_NAMED:
                break
        if named:
            found[key] = tuple(named)
    return found
