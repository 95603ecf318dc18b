"""Time expressions in a question ("past year", "last quarter", "since March", "in 2024") resolved by code.

A small language model gets such ranges wrong often ("past year" became "last 30 days" in our measurements), and
they are easy to compute exactly, so the pipeline resolves them here relative to `today` and overrides whatever
the model proposes for dates. Ranges are half-open `[start, end)` in whole days; either side may be open.

The conventions (documented for users in the AI jobs docs):
- "past/last N days|weeks|months|quarters|years" and "past year|month|week" are rolling windows of complete days
  ending yesterday: with today 2026-11-23, "past year" is 2025-11-23 to 2026-11-22.
- "last year|quarter|month|week" (and "previous"/"prior") name the previous complete calendar period: "last year"
  is 2025. Weeks start on Monday.
- "this year|quarter|month|week", "year/quarter/month to date" (YTD, QTD, MTD) run from the period's start
  through today; "today" and "yesterday" are one day.
- "in 2024", "Q3 2024", "March 2024", "in March" (the latest March that has begun), "since March" / "since 2024"
  (through today), "before 2024", and ISO dates ("from 2024-01-01 to 2024-03-31", inclusive).
Words for a time grain: daily, weekly, monthly, quarterly, yearly/annual, "by day|week|month|quarter|year",
"per ...", "over time"/"trend" (month).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

MAX_QUESTION_CHARS = 4000
MAX_SPAN_UNITS = 1000  # "past 100000 years" is not a range anyone means; bounded so date arithmetic cannot overflow
# ISO dates outside these years are not read as a range: `date` arithmetic near 9999-12-31 overflows, and no
# question about business data means the year 9999 (or 0001).
MIN_YEAR = 1900
MAX_YEAR = 2200

_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fourteen": 14,
    "fifteen": 15,
    "eighteen": 18,
    "twenty": 20,
    "twenty-four": 24,
    "thirty": 30,
    "sixty": 60,
    "ninety": 90,
}
_UNIT = r"(day|week|month|quarter|year)s?"
_COUNT = r"(\d{1,4}|" + "|".join(sorted((re.escape(w) for w in _NUMBERS), key=len, reverse=True)) + r")"
_MONTH = r"(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_YEAR = r"((?:19|20|21)\d\d)"
_ISO = r"(\d{4}-\d{2}-\d{2})"

_ROLLING = re.compile(rf"\b(?:past|last|previous|prior|trailing)\s+{_COUNT}\s+{_UNIT}\b")
_ROLLING_ONE = re.compile(r"\b(?:past|trailing)\s+(day|week|month|quarter|year)\b")
_PREVIOUS = re.compile(r"\b(?:last|previous|prior)\s+(day|week|month|quarter|year)\b")
_CURRENT = re.compile(r"\b(?:this|current|the current)\s+(week|month|quarter|year)\b")
_TO_DATE = re.compile(r"\b(?:(year|quarter|month|week)[\s-]+to[\s-]+date|(ytd|qtd|mtd|wtd))\b")
_BETWEEN = re.compile(rf"\b(?:between|from)\s+{_ISO}\s+(?:and|to|until|through|-)\s+{_ISO}\b")
_SINCE_ISO = re.compile(rf"\b(?:since|after|from)\s+{_ISO}\b")
_SINCE_MONTH = re.compile(rf"\b(?:since|from)\s+{_MONTH}(?:\s+{_YEAR})?\b")
_SINCE_YEAR = re.compile(rf"\b(?:since|from)\s+{_YEAR}\b")
_BEFORE_YEAR = re.compile(rf"\bbefore\s+{_YEAR}\b")
_QUARTER_YEAR = re.compile(rf"\b(?:q([1-4])\s*(?:of\s+)?{_YEAR}|{_YEAR}\s*q([1-4]))\b")
_MONTH_YEAR = re.compile(rf"\b{_MONTH}\s+(?:of\s+)?{_YEAR}\b")
_IN_MONTH = re.compile(rf"\b(?:in|during|for)\s+{_MONTH}(?!\s*\d)\b")
# A bare year, unless it is a count ("top 2000 customers", "more than 2000 orders").
_YEAR_ALONE = re.compile(rf"(?<![\d-]){_YEAR}(?![\d-])(?!\s+(?:rows|records|items|results|customers|orders|products))")
_COUNT_BEFORE = re.compile(r"\b(?:top|first|bottom|limit|over|under|above|below|than|least|most)\s*$")
_DAY = re.compile(r"\b(today|yesterday)\b")

_GRAINS = [
    (re.compile(r"\b(daily|per day|by day|each day|day by day|day over day)\b"), "day"),
    (re.compile(r"\b(weekly|per week|by week|each week|week over week)\b"), "week"),
    (re.compile(r"\b(monthly|per month|by month|each month|month over month)\b"), "month"),
    (re.compile(r"\b(quarterly|per quarter|by quarter|each quarter|quarter over quarter)\b"), "quarter"),
    (re.compile(r"\b(yearly|annual|annually|per year|by year|each year|year over year|yoy)\b"), "year"),
    (re.compile(r"\b(trends?|trending|over time|time series)\b"), "month"),
]


@dataclass(frozen=True, slots=True)
class DateRange:
    """Days from `start` (inclusive) to `end` (exclusive); None on a side means open. `phrase` is what matched."""

    start: date | None
    end: date | None
    phrase: str

    @property
    def last_day(self) -> date | None:
        """The last day inside the range (`end` minus one day), for people and prompts."""
        return self.end - timedelta(days=1) if self.end is not None else None

    def describe(self) -> str:
        """`2025-11-23 to 2026-11-22`, `from 2024-01-01`, `before 2024-01-01`."""
        if self.start is not None and self.last_day is not None:
            return f"{self.start.isoformat()} to {self.last_day.isoformat()}"
        if self.start is not None:
            return f"from {self.start.isoformat()}"
        return f"before {self.end.isoformat() if self.end else '?'}"


def resolve_date_range(question: str, today: date) -> DateRange | None:
    """The time range a question names, relative to `today`, or None when it names none (first rule that matches).

    More specific expressions are tried first so "since March 2024" is not read as "in 2024". Never raises: a
    range that date arithmetic cannot express (a `today` near the ends of the calendar) reads as no range.
    """
    text = _normalize(question)
    for rule in _RULES:
        try:
            found = rule(text, today)
        except (OverflowError, ValueError):
            return None
        if found is not None:
            return found
    return None


def resolve_time_grain(question: str) -> str | None:
    """The time grain words in a question ask for (`day`, `week`, `month`, `quarter`, `year`), or None."""
    text = _normalize(question)
    for pattern, grain in _GRAINS:
        if pattern.search(text):
            return grain
    return None


def _normalize(question: str) -> str:
    return " ".join(question[:MAX_QUESTION_CHARS].lower().split())


def _between(text: str, today: date) -> DateRange | None:
    match = _BETWEEN.search(text)
    if match is None:
        return None
    first, last = _iso(match.group(1)), _iso(match.group(2))
    if first is None or last is None:
        return None
    first, last = min(first, last), max(first, last)
    return DateRange(first, last + timedelta(days=1), match.group(0))


def _since_iso(text: str, today: date) -> DateRange | None:
    match = _SINCE_ISO.search(text)
    day = _iso(match.group(1)) if match else None
    if match is None or day is None:
        return None
    return DateRange(day, today + timedelta(days=1), match.group(0))


def _rolling(text: str, today: date) -> DateRange | None:
    match = _ROLLING.search(text)
    if match is None:
        return None
    count = min(_count(match.group(1)), MAX_SPAN_UNITS)
    if count < 1:
        return None
    return DateRange(_back(today, match.group(2), count), today, match.group(0))


def _rolling_one(text: str, today: date) -> DateRange | None:
    match = _ROLLING_ONE.search(text)
    if match is None:
        return None
    return DateRange(_back(today, match.group(1), 1), today, match.group(0))


def _previous(text: str, today: date) -> DateRange | None:
    match = _PREVIOUS.search(text)
    if match is None:
        return None
    unit = match.group(1)
    current = _period_start(today, unit)
    return DateRange(_back(current, unit, 1), current, match.group(0))


def _current(text: str, today: date) -> DateRange | None:
    match = _CURRENT.search(text)
    if match is None:
        return None
    return DateRange(_period_start(today, match.group(1)), today + timedelta(days=1), match.group(0))


def _to_date(text: str, today: date) -> DateRange | None:
    match = _TO_DATE.search(text)
    if match is None:
        return None
    unit = match.group(1) or {"ytd": "year", "qtd": "quarter", "mtd": "month", "wtd": "week"}[match.group(2)]
    return DateRange(_period_start(today, unit), today + timedelta(days=1), match.group(0))


def _day(text: str, today: date) -> DateRange | None:
    match = _DAY.search(text)
    if match is None:
        return None
    day = today if match.group(1) == "today" else today - timedelta(days=1)
    return DateRange(day, day + timedelta(days=1), match.group(0))


def _since_month(text: str, today: date) -> DateRange | None:
    match = _SINCE_MONTH.search(text)
    if match is None:
        return None
    month = _MONTHS[match.group(1)]
    year = int(match.group(2)) if match.group(2) else _latest_year_of(month, today)
    return DateRange(date(year, month, 1), today + timedelta(days=1), match.group(0))


def _since_year(text: str, today: date) -> DateRange | None:
    match = _SINCE_YEAR.search(text)
    if match is None:
        return None
    return DateRange(date(int(match.group(1)), 1, 1), today + timedelta(days=1), match.group(0))


def _before_year(text: str, today: date) -> DateRange | None:
    match = _BEFORE_YEAR.search(text)
    if match is None:
        return None
    return DateRange(None, date(int(match.group(1)), 1, 1), match.group(0))


def _quarter_year(text: str, today: date) -> DateRange | None:
    match = _QUARTER_YEAR.search(text)
    if match is None:
        return None
    quarter = int(match.group(1) or match.group(4))
    year = int(match.group(2) or match.group(3))
    start = date(year, 3 * quarter - 2, 1)
    return DateRange(start, _back(start, "quarter", -1), match.group(0))


def _month_year(text: str, today: date) -> DateRange | None:
    match = _MONTH_YEAR.search(text)
    if match is None:
        return None
    start = date(int(match.group(2)), _MONTHS[match.group(1)], 1)
    return DateRange(start, _back(start, "month", -1), match.group(0))


def _in_month(text: str, today: date) -> DateRange | None:
    match = _IN_MONTH.search(text)
    # "may" is also a verb ("sales may ..."): only "in/during/for may" reaches here, which reads as the month.
    if match is None:
        return None
    month = _MONTHS[match.group(1)]
    start = date(_latest_year_of(month, today), month, 1)
    return DateRange(start, _back(start, "month", -1), match.group(0))


def _year_alone(text: str, today: date) -> DateRange | None:
    for match in _YEAR_ALONE.finditer(text):
        if _COUNT_BEFORE.search(text, 0, match.start()):
            continue
        year = int(match.group(1))
        return DateRange(date(year, 1, 1), date(year + 1, 1, 1), match.group(0))
    return None


_RULES = (
    _between,
    _since_iso,
    _since_month,
    _since_year,
    _before_year,
    _rolling,
    _rolling_one,
    _to_date,
    _current,
    _previous,
    _day,
    _quarter_year,
    _month_year,
    _in_month,
    _year_alone,
)


def _count(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBERS[word]


def _iso(text: str) -> date | None:
    """An ISO date in years MIN_YEAR..MAX_YEAR, else None (not a date, or too far off to be meant)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return day if MIN_YEAR <= day.year <= MAX_YEAR else None


def _latest_year_of(month: int, today: date) -> int:
    """The year of the latest `month` that has begun by `today` ("in March" in November is this year's March)."""
    return today.year if month <= today.month else today.year - 1


def _period_start(day: date, unit: str) -> date:
    """The first day of the calendar `unit` holding `day` (weeks start on Monday)."""
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    if unit == "quarter":
        return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return date(day.year, 1, 1)


def _back(day: date, unit: str, count: int) -> date:
    """`day` moved back `count` units (forward when negative); a month end clamps (March 31 minus 1 month = Feb 28)."""
    if unit == "day":
        return day - timedelta(days=count)
    if unit == "week":
        return day - timedelta(weeks=count)
    months = count * {"month": 1, "quarter": 3, "year": 12}[unit]
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, _days_in_month(year, month + 1)))


def _days_in_month(year: int, month: int) -> int:
    following = date(year + (month == 12), month % 12 + 1, 1)
    return (following - timedelta(days=1)).day
