"""Time expressions resolved by code relative to a fixed day, and time-grain words."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from conveyor.analytics.dates import DateRange, resolve_date_range, resolve_time_grain

TODAY = date(2026, 11, 23)  # a Monday


def d(text: str) -> date:
    return date.fromisoformat(text)


@pytest.mark.parametrize(
    ("question", "start", "last_day"),
    [
        # The documented choice: "past year" is the rolling 12 months of complete days ending yesterday.
        ("Analyze sales trends by region for the past year", "2025-11-23", "2026-11-22"),
        ("revenue over the past 12 months", "2025-11-23", "2026-11-22"),
        ("orders in the last 30 days", "2026-10-24", "2026-11-22"),
        ("orders in the last thirty days", "2026-10-24", "2026-11-22"),
        ("signups in the past two weeks", "2026-11-09", "2026-11-22"),
        ("the past quarter", "2026-08-23", "2026-11-22"),
        ("trailing 3 years of sales", "2023-11-23", "2026-11-22"),
        # "last <unit>" is the previous complete calendar period.
        ("What were sales last year?", "2025-01-01", "2025-12-31"),
        ("sales in the previous quarter", "2026-07-01", "2026-09-30"),
        ("last month by product", "2026-10-01", "2026-10-31"),
        ("last week", "2026-11-16", "2026-11-22"),
        # Periods to date include today.
        ("sales this month", "2026-11-01", "2026-11-23"),
        ("this quarter", "2026-10-01", "2026-11-23"),
        ("revenue year to date", "2026-01-01", "2026-11-23"),
        ("YTD revenue", "2026-01-01", "2026-11-23"),
        ("MTD orders", "2026-11-01", "2026-11-23"),
        ("orders today", "2026-11-23", "2026-11-23"),
        ("orders yesterday", "2026-11-22", "2026-11-22"),
        # Named years, quarters and months.
        ("total sales in 2024", "2024-01-01", "2024-12-31"),
        ("2023 revenue by region", "2023-01-01", "2023-12-31"),
        ("sales in Q3 2024", "2024-07-01", "2024-09-30"),
        ("2025 q1 orders", "2025-01-01", "2025-03-31"),
        ("sales in March 2024", "2024-03-01", "2024-03-31"),
        ("feb. 2024", "2024-02-01", "2024-02-29"),
        ("orders in December", "2025-12-01", "2025-12-31"),  # the latest December that has begun
        ("orders during March", "2026-03-01", "2026-03-31"),
        # Open-ended to today, and ISO dates.
        ("sales since March", "2026-03-01", "2026-11-23"),
        ("sales since March 2024", "2024-03-01", "2026-11-23"),
        ("customers since 2025", "2025-01-01", "2026-11-23"),
        ("orders since 2026-02-10", "2026-02-10", "2026-11-23"),
        ("orders between 2024-01-01 and 2024-03-31", "2024-01-01", "2024-03-31"),
        ("from 2024-05-31 to 2024-05-01", "2024-05-01", "2024-05-31"),  # reversed ends are put in order
    ],
)
def test_time_expressions_resolve_relative_to_today(question: str, start: str, last_day: str) -> None:
    found = resolve_date_range(question, TODAY)

    assert found is not None
    assert (found.start, found.last_day) == (d(start), d(last_day))
    assert found.end == d(last_day) + timedelta(days=1)  # half-open: end is the day after
    assert found.phrase in " ".join(question.lower().split())


def test_past_year_is_rolling_and_last_year_is_the_calendar_year() -> None:
    past = resolve_date_range("sales for the past year", TODAY)
    last = resolve_date_range("sales for last year", TODAY)

    assert past == DateRange(d("2025-11-23"), d("2026-11-23"), "past year")
    assert last == DateRange(d("2025-01-01"), d("2026-01-01"), "last year")
    assert past.describe() == "2025-11-23 to 2026-11-22"


def test_month_ends_clamp_when_going_back() -> None:
    found = resolve_date_range("the past month", date(2026, 3, 31))

    assert found is not None and (found.start, found.last_day) == (d("2026-02-28"), d("2026-03-30"))


def test_before_a_year_is_open_at_the_start() -> None:
    found = resolve_date_range("orders before 2024", TODAY)

    assert found == DateRange(None, d("2024-01-01"), "before 2024")
    assert found.describe() == "before 2024-01-01"


@pytest.mark.parametrize(
    "question",
    [
        "top 10 products by revenue",
        "top 2000 customers by sales",
        "which region sells the most",
        "more than 2024 orders",
        "sales may drop, which products",
        "orders in the past 0 days",
        "order 12345 details",
        "",
    ],
)
def test_questions_without_a_time_range_resolve_to_none(question: str) -> None:
    assert resolve_date_range(question, TODAY) is None


def test_huge_counts_are_bounded() -> None:
    found = resolve_date_range("the past 9999 years", TODAY)

    assert found is not None and found.start == date(1026, 11, 23)


@pytest.mark.parametrize(
    ("question", "grain"),
    [
        ("daily orders", "day"),
        ("orders per week", "week"),
        ("revenue by month", "month"),
        ("monthly revenue", "month"),
        ("quarterly sales", "quarter"),
        ("year over year growth", "year"),
        ("annual revenue", "year"),
        ("Analyze sales trends by region", "month"),
        ("revenue over time", "month"),
        ("top products", None),
        ("sales by region", None),
    ],
)
def test_time_grain_words(question: str, grain: str | None) -> None:
    assert resolve_time_grain(question) == grain


@pytest.mark.parametrize(
    ("question", "today", "expected"),
    [
        # Dates at the ends of the calendar: `date` arithmetic overflowed here (OverflowError escaped `ask`).
        ("revenue between 9999-12-01 and 9999-12-31", TODAY, None),
        ("revenue from 9999-01-01 to 9999-12-31", TODAY, None),
        ("orders since 9999-12-31", TODAY, None),
        ("orders between 0001-01-01 and 0001-01-02", TODAY, None),
        ("from 1899-12-31 to 1900-01-05", TODAY, None),
        # The accepted edges (years 1900..2200) still resolve.
        ("revenue between 1900-01-01 and 2200-12-31", TODAY, ("1900-01-01", "2200-12-31")),
        ("revenue from 2200-12-31 to 2200-12-31", TODAY, ("2200-12-31", "2200-12-31")),
        # A `today` at the end of the calendar: every rule that adds a day would overflow; none raises.
        ("orders today", date(9999, 12, 31), None),
        ("sales this month", date(9999, 12, 31), None),
        ("since 2024", date(9999, 12, 31), None),
        ("past 1000 years", date(1, 1, 1), None),
    ],
)
def test_edge_dates_never_raise(question: str, today: date, expected: tuple[str, str] | None) -> None:
    found = resolve_date_range(question, today)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (found.start, found.last_day) == (d(expected[0]), d(expected[1]))
