"""Query results rendered by code: Markdown tables, CSV, simple facts and a fallback headline.

The answer to a question always carries its rows as a table built here, so the numbers a reader sees are the
database's even when a small model's prose is weak; the model only writes the headline above it. Values are
formatted one way everywhere (thousands separators, two decimals for fractional numbers, ISO dates).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

MAX_CELL_CHARS = 200
HEADLINE_MAX_CHARS = 400
MAX_FACT_COLUMNS = 4  # facts for the first few numeric columns; more is noise in a headline
Row = Sequence[Any]


def is_number(value: Any) -> bool:
    """Whether a cell is a number (booleans are not, though Python counts them as ints)."""
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def format_value(value: Any) -> str:
    """A cell as people read it: `1,234`, `1,234.50`, `0.0012`, `2024-03-01`, empty for NULL."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float | Decimal):
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            return str(number)
        return f"{number:,.2f}" if number == 0 or abs(number) >= 0.01 else f"{number:.3g}"
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) and value.tzinfo is None else value.isoformat(" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def json_value(value: Any) -> Any:
    """A cell as JSON carries it: numbers stay numbers (Decimal becomes float), dates become ISO text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, Decimal):
        return json_value(float(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return str(value)


def json_rows(rows: Sequence[Row]) -> list[list[Any]]:
    """Rows as lists of JSON values."""
    return [[json_value(cell) for cell in row] for row in rows]


def markdown_table(headers: Sequence[str], rows: Sequence[Row], *, max_rows: int) -> str:
    """A GitHub-flavoured Markdown table of the first `max_rows` rows; numeric columns are right-aligned."""
    shown = rows[:max_rows]
    numeric = [_numeric_column(shown, index) for index in range(len(headers))]
    lines = [
        "| " + " | ".join(_cell(header) for header in headers) + " |",
        "| " + " | ".join("---:" if right else "---" for right in numeric) + " |",
    ]
    lines.extend("| " + " | ".join(_cell(format_value(value)) for value in row) + " |" for row in shown)
    return "\n".join(lines)


def csv_text(columns: Sequence[str], rows: Sequence[Row], *, max_chars: int) -> tuple[str, bool]:
    """The rows as CSV (header first) within `max_chars`, cut at a whole row; (text, whether rows were left out)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        before = buffer.tell()
        writer.writerow([_csv_cell(value) for value in row])
        if buffer.tell() > max_chars:
            return buffer.getvalue()[:before], True
    return buffer.getvalue(), False


def compact_view(headers: Sequence[str], rows: Sequence[Row], *, max_rows: int, max_chars: int) -> str:
    """A short plain-text view of the result for a model's prompt: a header line and up to `max_rows` rows."""
    lines = [" | ".join(headers)]
    lines.extend(" | ".join(format_value(value)[:60] for value in row) for row in rows[:max_rows])
    if len(rows) > max_rows:
        lines.append(f"... ({len(rows) - max_rows} more rows)")
    text = "\n".join(lines)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def result_facts(headers: Sequence[str], rows: Sequence[Row], *, measures: Sequence[bool] | None = None) -> list[str]:
    """Facts computed from the rows: each measure's total, and its highest and lowest row by label.

    `measures` says which columns are measures; without it every numeric column is. The label of a row is its
    other cells joined (for example `West, 2025-03`).
    """
    if not rows:
        return ["The query returned no rows."]
    numeric = [
        index
        for index in range(len(headers))
        if _numeric_column(rows, index) and (measures is None or (index < len(measures) and measures[index]))
    ]
    labels = [index for index in range(len(headers)) if index not in numeric]
    facts = [f"{len(rows):,} row{'s' if len(rows) != 1 else ''}."]
    for index in numeric[:MAX_FACT_COLUMNS]:
        values = [(row[index], _label(row, labels)) for row in rows if row[index] is not None]
        if not values:
            continue
        name = headers[index]
        if len(rows) == 1:
            facts.append(f"{name}: {format_value(values[0][0])}.")
            continue
        high = max(values, key=lambda pair: float(pair[0]))
        low = min(values, key=lambda pair: float(pair[0]))
        facts.append(f"Total {name}: {format_value(_total([value for value, _ in values]))}.")
        if labels:
            facts.append(
                f"Highest {name}: {format_value(high[0])} ({high[1]}); lowest: {format_value(low[0])} ({low[1]})."
            )
    return facts


def code_headline(
    headers: Sequence[str], rows: Sequence[Row], *, total_row_count: int, measures: Sequence[bool] | None = None
) -> str:
    """A plain headline written by code, used when the model writes none: the row count and the first facts."""
    if not rows:
        return "The query returned no rows."
    facts = result_facts(headers, rows, measures=measures)[1:3]
    count = f"{total_row_count:,} row{'s' if total_row_count != 1 else ''}"
    return " ".join([f"The query returned {count}.", *facts])


def answer_markdown(
    headline: str,
    headers: Sequence[str],
    rows: Sequence[Row],
    *,
    facts: Sequence[str] = (),
    total_row_count: int,
    count_capped: bool,
    max_table_rows: int,
) -> str:
    """The answer: the headline, facts as a list, the rows as a table (top `max_table_rows`), and a note when rows
    are left out.

    `count_capped` says `total_row_count` is where counting stopped, so the note reads "of 10,000+ rows".
    """
    parts = [headline.strip()]
    if facts:
        parts.append("\n".join(f"- {fact}" for fact in facts))
    if rows:
        parts.append(markdown_table(headers, rows, max_rows=max_table_rows))
        shown = min(len(rows), max_table_rows)
        if shown < total_row_count:
            more = "+" if count_capped else ""
            parts.append(f"_Showing the first {shown:,} of {total_row_count:,}{more} rows._")
    return "\n\n".join(part for part in parts if part)


def _numeric_column(rows: Sequence[Row], index: int) -> bool:
    values = [row[index] for row in rows if index < len(row) and row[index] is not None]
    return bool(values) and all(is_number(value) for value in values)


def _label(row: Row, labels: Sequence[int]) -> str:
    return ", ".join(format_value(row[index]) for index in labels) or "?"


def _total(values: Sequence[Any]) -> Any:
    """The exact sum: integers and decimals add exactly (Decimal does not mix with float, so floats go alone)."""
    if any(isinstance(value, float) for value in values):
        return sum(float(value) for value in values)
    return sum(values)


def _cell(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def unsupported_numbers(headline: str, evidence: str) -> list[str]:
    """Large numbers (four digits or more) in a headline that appear nowhere in the evidence, as written or rounded.

    A weak model's headline may invent figures; a wrong total above a correct table misleads, so such a headline
    is dropped. Small numbers (counts, percentages a model may compute) are let through.
    """
    known: set[str] = set()
    for number in _NUMBER.findall(evidence):
        plain = number.replace(",", "")
        known.add(plain)
        if "." in plain:
            whole = plain.split(".", 1)[0]
            known.update({whole, str(round(float(plain))), f"{float(plain):.1f}"})
    out = []
    for number in _NUMBER.findall(headline):
        plain = number.replace(",", "").rstrip(".")
        if len(plain.split(".", 1)[0]) >= 4 and plain not in known:
            out.append(number)
    return out


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def clean_headline(text: str) -> str:
    """A model's headline as plain text: no label or Markdown marks, at most two sentences and 400 characters;
    empty when it is not prose (a small model may loop, repeating the same words, or copy the table's cells)."""
    text = " ".join(text.replace("**", "").replace("`", "").split()).lstrip("#>-* ").strip()
    text = re.sub(r"^(headline|answer|summary)\s*:\s*", "", text, flags=re.IGNORECASE).strip(' "')
    if _repeats(text) or text.count("|") >= 2:
        return ""
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9])", text)
    return _cut_text(" ".join(sentences[:2]), HEADLINE_MAX_CHARS)


def finished_sentences(text: str) -> str:
    """`text` up to the end of its last finished sentence; empty when it finished none (an answer cut short)."""
    ends = [match.end() for match in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[: ends[-1]] if ends else ""


def _repeats(text: str) -> bool:
    """Whether some run of four words comes back three times or more."""
    words = text.lower().split()
    seen: dict[tuple[str, ...], int] = {}
    for index in range(len(words) - 3):
        run = tuple(words[index : index + 4])
        seen[run] = seen.get(run, 0) + 1
        if seen[run] >= 3:
            return True
    return False


def _cut_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
