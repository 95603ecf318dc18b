"""Results rendered by code: value formats, Markdown tables, CSV within a size, facts and the answer layout."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest

from conveyor.analytics.markdown import (
    answer_markdown,
    clean_headline,
    code_headline,
    compact_view,
    csv_text,
    finished_sentences,
    format_value,
    json_rows,
    markdown_table,
    result_facts,
    unsupported_numbers,
)

HEADERS = ["Region", "Revenue", "Orders"]
ROWS: list[tuple[Any, ...]] = [("West", 1234.5, 12), ("East", 99.999, 3), ("North | Pole", Decimal("10.10"), 1)]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (1234567, "1,234,567"),
        (-5, "-5"),
        (1234.5, "1,234.50"),
        (0.0, "0.00"),
        (0.00123, "0.00123"),
        (Decimal("10.106"), "10.11"),
        (float("nan"), "nan"),
        (date(2024, 3, 1), "2024-03-01"),
        (datetime(2024, 3, 1), "2024-03-01"),
        (datetime(2024, 3, 1, 12, 30), "2024-03-01 12:30:00"),
        (b"\x00\x01", "<2 bytes>"),
        ("text", "text"),
    ],
)
def test_values_are_formatted_one_way(value: Any, text: str) -> None:
    assert format_value(value) == text


def test_markdown_table_aligns_numbers_and_escapes_pipes() -> None:
    table = markdown_table(HEADERS, ROWS, max_rows=2)

    assert table.splitlines() == [
        "| Region | Revenue | Orders |",
        "| --- | ---: | ---: |",
        "| West | 1,234.50 | 12 |",
        "| East | 100.00 | 3 |",
    ]
    assert "North \\| Pole" in markdown_table(HEADERS, ROWS, max_rows=5)


def test_cells_are_one_line_and_bounded() -> None:
    table = markdown_table(["note"], [("a\nb" + "x" * 500,)], max_rows=1)

    row = table.splitlines()[2]
    assert row.startswith("| a b") and row.endswith("… |") and len(row) < 220


def test_csv_is_cut_at_a_whole_row() -> None:
    full, cut = csv_text(HEADERS, ROWS, max_chars=10_000)
    assert (full, cut) == ("Region,Revenue,Orders\nWest,1234.5,12\nEast,99.999,3\nNorth | Pole,10.10,1\n", False)

    part, cut = csv_text(HEADERS, ROWS, max_chars=40)
    assert (part, cut) == ("Region,Revenue,Orders\nWest,1234.5,12\n", True)


def test_facts_give_totals_and_extremes_with_their_labels() -> None:
    facts = result_facts(HEADERS, ROWS)

    assert facts == [
        "3 rows.",
        "Total Revenue: 1,344.60.",
        "Highest Revenue: 1,234.50 (West); lowest: 10.10 (North | Pole).",
        "Total Orders: 16.",
        "Highest Orders: 12 (West); lowest: 1 (North | Pole).",
    ]


def test_integer_totals_stay_exact() -> None:
    big = 2**60
    facts = result_facts(["k", "n"], [("a", big), ("b", 1)])

    assert facts[1] == f"Total n: {big + 1:,}."


def test_facts_of_one_row_and_of_none() -> None:
    assert result_facts(["Revenue"], [(5.0,)]) == ["1 row.", "Revenue: 5.00."]
    assert result_facts(HEADERS, []) == ["The query returned no rows."]


def test_code_headline_names_count_and_first_facts() -> None:
    assert code_headline(HEADERS, ROWS, total_row_count=3) == (
        "The query returned 3 rows. Total Revenue: 1,344.60. Highest Revenue: 1,234.50 (West); lowest: 10.10 "
        "(North | Pole)."
    )
    assert code_headline(HEADERS, [], total_row_count=0) == "The query returned no rows."


def test_answer_has_headline_table_and_a_note_when_rows_are_left_out() -> None:
    whole = answer_markdown("Sales are up.", HEADERS, ROWS, total_row_count=3, count_capped=False, max_table_rows=10)
    assert whole.split("\n\n")[0] == "Sales are up."
    assert whole.split("\n\n")[1] == markdown_table(HEADERS, ROWS, max_rows=10)
    assert "Showing" not in whole

    top = answer_markdown("Sales.", HEADERS, ROWS, total_row_count=3, count_capped=False, max_table_rows=2)
    assert top.endswith("_Showing the first 2 of 3 rows._")
    capped = answer_markdown("Sales.", HEADERS, ROWS, total_row_count=10_000, count_capped=True, max_table_rows=2)
    assert capped.endswith("_Showing the first 2 of 10,000+ rows._")

    with_facts = answer_markdown(
        "Up.",
        HEADERS,
        ROWS[:1],
        facts=["Total: 1.", "Max: 2."],
        total_row_count=1,
        count_capped=False,
        max_table_rows=5,
    )
    assert with_facts.split("\n\n")[:2] == ["Up.", "- Total: 1.\n- Max: 2."]

    empty = answer_markdown("Nothing.", HEADERS, [], total_row_count=0, count_capped=False, max_table_rows=2)
    assert empty == "Nothing."


def test_compact_view_is_bounded() -> None:
    rows = [(f"r{i}", i) for i in range(50)]

    view = compact_view(["name", "n"], rows, max_rows=3, max_chars=1000)
    assert view.splitlines() == ["name | n", "r0 | 0", "r1 | 1", "r2 | 2", "... (47 more rows)"]
    assert len(compact_view(["name", "n"], rows, max_rows=50, max_chars=40)) == 40


def test_json_rows_keep_numbers_and_write_dates() -> None:
    rows = [(Decimal("1.5"), date(2024, 1, 2), float("inf"), None, True)]

    assert json_rows(rows) == [[1.5, "2024-01-02", None, None, True]]


@pytest.mark.parametrize(
    ("text", "headline"),
    [
        ("Headline: **Sales rose.** Then more. And more.", "Sales rose. Then more."),
        ('  "Revenue grew 5%."  ', "Revenue grew 5%."),
        ("# Europe leads\n\nby far", "Europe leads by far"),
        ("x" * 500, "x" * 399 + "…"),
        ("Sales data: a b c Sales data: a b c Sales data: a b c", ""),
        ("Asia Pacific | Japan | 3,545,509.62 Europe | Germany | 3,583,669.30 The most", ""),  # seen: cells copied
    ],
)
def test_headlines_are_cleaned(text: str, headline: str) -> None:
    assert clean_headline(text) == headline


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Sales rose 5%. The data shows that the top-performing regions have", "Sales rose 5%."),
        ("Revenue was 1.5 million! Europe led? North America", "Revenue was 1.5 million! Europe led?"),
        ("The data shows that the top", ""),
    ],
)
def test_an_answer_cut_short_keeps_only_its_finished_sentences(text: str, kept: str) -> None:
    assert finished_sentences(text) == kept


def test_large_numbers_a_headline_invents_are_found() -> None:
    assert unsupported_numbers("Revenue was 1,234.56 in 2025, up 12%.", "1234.56 | 2025") == []
    assert unsupported_numbers("Revenue was 1.2k, about 1,235, not 1,240.", "1234.56") == ["1,240"]
    assert unsupported_numbers("Total 99,999.", "x") == ["99,999"]
