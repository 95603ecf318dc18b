"""The chart of an AI job's answer (`GET /api/v1/ai/jobs/{jobId}/vis`): a PNG drawn with Pillow.

Chartable is one dimension (any column that is not numeric) and one numeric column: a line chart when the
dimension looks like dates or times (in order), else a bar chart; or a date-like column, one category column and
one numeric column (revenue by month by region): one line per category, the MAX_SERIES largest, with a legend.
Anything else raises `NotChartable`, which the API answers with 422 `{"error"}` as Omni does for visualizations
it cannot render. The value axis is scaled so any finite numbers draw (1e308 and -1e308 together too).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 800, 480
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 90, 20, 40, 90
MAX_POINTS = 200
MAX_SERIES = 8  # lines in a chart split by a category: the largest by total, named in a legend
MAX_SERIES_ROWS = 5_000
LEGEND_WIDTH = 120
PALETTE = [(66, 110, 200), (220, 120, 40), (60, 160, 90), (200, 60, 70), (130, 90, 190), (140, 100, 60),
           (210, 100, 170), (110, 110, 110)]  # fmt: skip
_DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?([ T].*)?$")
COLOR = (66, 110, 200)
AXIS = (60, 60, 60)
GRID = (225, 225, 225)


class NotChartable(Exception):
    """Why the rows cannot be drawn."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


def _table(columns: Any, rows: Any) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows as lists, whether rows are lists or objects keyed by column."""
    if not isinstance(columns, Sequence) or isinstance(columns, str) or not isinstance(rows, Sequence):
        raise NotChartable("the job has no tabular result to chart")
    names = [str(column.get("name") if isinstance(column, dict) else column) for column in columns]
    table = []
    for row in rows:
        if isinstance(row, dict):
            table.append([row.get(name) for name in names])
        elif isinstance(row, Sequence) and not isinstance(row, str):
            table.append(list(row))
        else:
            raise NotChartable("the result's rows are not a table")
    return names, table


def chart_data(columns: Any, rows: Any) -> tuple[str, str, list[tuple[str, float]], bool]:
    """(dimension name, measure name, points, is a time series) of a chartable result; `NotChartable` otherwise."""
    names, table = _table(columns, rows)
    if not table:
        raise NotChartable("the query returned no rows")
    if len(names) != 2:
        raise NotChartable(f"a chart needs one dimension and one numeric column; the result has {len(names)} columns")
    numeric = [all(_number(row[i]) is not None for row in table if row[i] is not None) for i in range(2)]
    if numeric == [False, True]:
        dim, measure = 0, 1
    elif numeric == [True, False]:
        dim, measure = 1, 0
    elif numeric == [True, True]:
        dim, measure = 0, 1  # e.g. a year and a total: the first names the bars
    else:
        raise NotChartable("a chart needs a numeric column; the result has none")
    points = [(str(row[dim]), _number(row[measure]) or 0.0) for row in table[:MAX_POINTS]]
    is_time = all(_DATE.match(label) for label, _ in points)
    return names[dim], names[measure], points, is_time


class _Scale:
    """Values to pixel rows between `top` and `bottom`, finite for any finite values (1e308 and -1e308 too).

    The values are divided by their largest magnitude first, so the span (at most 2) never overflows to inf.
    """

    def __init__(self, values: list[float], top: float, bottom: float) -> None:
        self.factor = max((abs(v) for v in values), default=0.0) or 1.0
        scaled = [v / self.factor for v in values]
        self.low, high = min(0.0, *scaled), max(0.0, *scaled)
        self.span = (high - self.low) or 1.0
        self.top, self.bottom = top, bottom

    def y(self, value: float) -> float:
        return self.bottom - (value / self.factor - self.low) / self.span * (self.bottom - self.top)

    def tick(self, step: int, steps: int) -> float:
        return (self.low + self.span * step / steps) * self.factor


def series_data(columns: Any, rows: Any) -> tuple[str, str, str, list[str], dict[str, list[float | None]]] | None:
    """A time series split by one category: (time name, category name, measure name, time labels in order,
    values per category — at most MAX_SERIES, the largest by total), or None when the result is not that shape.

    The shape is three columns: one whose every value looks like a date, one other dimension, one numeric column
    (in any order), e.g. month, region, revenue ("sales trends by region").
    """
    names, table = _table(columns, rows)
    if len(names) != 3 or not table:
        return None
    table = table[:MAX_SERIES_ROWS]
    dates = [i for i in range(3) if all(isinstance(r[i], str) and _DATE.match(r[i]) for r in table)]
    numeric = [i for i in range(3) if all(_number(r[i]) is not None for r in table if r[i] is not None)]
    measures = [i for i in numeric if i not in dates]
    if len(dates) != 1 or not measures:
        return None
    time_i, measure_i = dates[0], measures[-1]
    category_i = 3 - time_i - measure_i
    times = sorted({str(r[time_i]) for r in table})[:MAX_POINTS]
    totals: dict[str, float] = {}
    for r in table:
        totals[str(r[category_i])] = totals.get(str(r[category_i]), 0.0) + abs(_number(r[measure_i]) or 0.0)
    kept = sorted(totals, key=lambda c: (-totals[c], c))[:MAX_SERIES]
    position = {t: i for i, t in enumerate(times)}
    series: dict[str, list[float | None]] = {c: [None] * len(times) for c in sorted(kept)}
    for r in table:
        category, at = str(r[category_i]), position.get(str(r[time_i]))
        if category in series and at is not None:
            series[category][at] = _number(r[measure_i])
    return names[time_i], names[category_i], names[measure_i], times, series


def render_chart(columns: Any, rows: Any, title: Any = None) -> bytes:
    """The PNG of the result's chart (bar, line for a time series, one line per category for a time series split
    by one dimension); `NotChartable` when there is none."""
    split = series_data(columns, rows)
    if split is not None:
        return _render_series(*split, title=title)
    dim_name, measure_name, points, is_time = chart_data(columns, rows)
    image, draw, font = _canvas()
    left, top, right, bottom = MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM
    scale = _Scale([value for _, value in points], top, bottom)
    _axes(draw, font, scale)
    slot = (right - left) / len(points)
    label_every = max(1, math.ceil(len(points) / 20))
    centers = []
    for index, (label, value) in enumerate(points):
        x = left + slot * (index + 0.5)
        centers.append((x, scale.y(value)))
        if not is_time:
            half = max(1.0, slot * 0.35)
            y0, y1 = scale.y(value), scale.y(0.0)
            draw.rectangle([x - half, min(y0, y1), x + half, max(y0, y1)], fill=COLOR)
        if index % label_every == 0:
            draw.text((x - 3, bottom + 6), label[:14], fill=AXIS, font=font, anchor=None)
    if is_time:
        if len(centers) > 1:
            draw.line(centers, fill=COLOR, width=2)
        for x, y in centers:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLOR)
    return _finish(image, draw, font, f"{measure_name} by {dim_name}", title)


def _render_series(
    time_name: str, category_name: str, measure_name: str, times: list[str],
    series: dict[str, list[float | None]], *, title: Any,
) -> bytes:  # fmt: skip
    image, draw, font = _canvas()
    left, top, right, bottom = MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT - LEGEND_WIDTH, HEIGHT - MARGIN_BOTTOM
    scale = _Scale([v for values in series.values() for v in values if v is not None], top, bottom)
    _axes(draw, font, scale, right=right)
    slot = (right - left) / len(times)
    monthly = all(re.match(r"^\d{4}-\d{2}-01$", t) for t in times)  # "2025-11" reads better than "2025-11-01"
    label_width = 48 if monthly else 66
    label_every = max(1, math.ceil(len(times) * label_width / (right - left)))
    for index, label in enumerate(times):
        if index % label_every == 0:
            x = left + slot * (index + 0.5) - label_width / 2 + 4
            draw.text((x, bottom + 6), label[:7] if monthly else label[:10], fill=AXIS, font=font)
    for number, (category, values) in enumerate(series.items()):
        color = PALETTE[number % len(PALETTE)]
        points = [(left + slot * (i + 0.5), scale.y(v)) for i, v in enumerate(values) if v is not None]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        legend_y = top + 16 * number
        draw.rectangle([right + 12, legend_y + 2, right + 22, legend_y + 12], fill=color)
        draw.text((right + 26, legend_y), category[:14], fill=AXIS, font=font)
    return _finish(image, draw, font, f"{measure_name} by {time_name} and {category_name}", title)


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw, Any]:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    return image, ImageDraw.Draw(image), ImageFont.load_default()


def _axes(draw: ImageDraw.ImageDraw, font: Any, scale: _Scale, *, right: float = WIDTH - MARGIN_RIGHT) -> None:
    left, top, bottom = MARGIN_LEFT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    for step in range(5):
        value = scale.tick(step, 4)
        y = scale.y(value)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.text((4, y - 6), f"{value:,.6g}", fill=AXIS, font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS)


def _finish(image: Image.Image, draw: ImageDraw.ImageDraw, font: Any, heading: str, title: Any) -> bytes:
    if isinstance(title, str):
        heading = f"{title}: {heading}"
    draw.text((MARGIN_LEFT, 12), heading[:110], fill=AXIS, font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
