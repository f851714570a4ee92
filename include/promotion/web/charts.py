"""Line charts as inline SVG, drawn on the server: no script, no library, nothing loaded from elsewhere.

The Content-Security-Policy of the pages allows no inline code, so a chart is markup only: lines, points and text,
coloured by classes of ``static/page.css`` (CSS variables and ``currentColor``: light and dark mode), never by a
``style`` attribute. Every text and attribute value written here goes through ``html.escape``; the result is
``Markup`` so the templates insert it without marking anything safe themselves. A chart is an image to assistive
technology (``role="img"``, a ``<title>`` and a ``<desc>``); the page shows its figures in a table as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 360, 200
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 44, 12, 28, 26
INSET = 6  # between the plot's border and the lowest (highest) value


@dataclass(frozen=True)
class Series:
    """A line: (time, value) points, oldest first; a None value is left out (the line breaks there)."""

    name: str
    points: Sequence[tuple[datetime, float | None]]


@dataclass(frozen=True)
class Level:
    """A horizontal line across the chart, e.g. a minimum (``kind`` "minimum") or the offline value ("offline")."""

    label: str
    value: float
    kind: str


@dataclass(frozen=True)
class Mark:
    """A moment to point out, as a vertical line (e.g. a check that found the model degraded)."""

    at: datetime
    label: str
    kind: str = "degraded"


@dataclass(frozen=True)
class Frame:
    """Where the plot area lies in the SVG and which times and values it spans: times left to right, values bottom
    to top."""

    start: datetime
    end: datetime
    low: float
    high: float
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def left(self) -> float:
        return MARGIN_LEFT

    @property
    def right(self) -> float:
        return self.width - MARGIN_RIGHT

    @property
    def top(self) -> float:
        return MARGIN_TOP

    @property
    def bottom(self) -> float:
        return self.height - MARGIN_BOTTOM

    def x(self, moment: datetime) -> float:
        span = (self.end - self.start).total_seconds()
        share = (moment - self.start).total_seconds() / span if span > 0 else 0.5
        return self.left + min(1.0, max(0.0, share)) * (self.right - self.left)

    def y(self, value: float) -> float:
        """Values from ``low`` to ``high`` span the plot's height less ``INSET`` at each end (a line at a limit of the
        range stays clear of the plot's border)."""
        span = self.high - self.low
        share = (value - self.low) / span if span > 0 else 0.5
        return self.bottom - INSET - min(1.0, max(0.0, share)) * (self.bottom - self.top - 2 * INSET)


def value_range(values: Sequence[float]) -> tuple[float, float]:
    """The values' range widened to tenths (at least 0.1 wide), kept within [0, 1] when the values are."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = math.floor(min(finite) * 10) / 10, math.ceil(max(finite) * 10) / 10
    if high - low < 0.1:
        low, high = low - 0.1, high + 0.1
    if min(finite) >= 0 and max(finite) <= 1:
        low, high = max(0.0, low), min(1.0, high)
    return round(low, 6), round(high, 6)


def _n(value: float) -> str:
    return f"{value:.1f}"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%m-%d %H:%M")


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _segments(points: Sequence[tuple[datetime, float | None]]) -> list[list[tuple[datetime, float]]]:
    """Runs of points with a value; a None (or NaN) value ends a run."""
    runs: list[list[tuple[datetime, float]]] = [[]]
    for moment, value in points:
        if value is None or not math.isfinite(value):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((moment, float(value)))
    return [run for run in runs if run]


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    levels: Sequence[Level] = (),
    marks: Sequence[Mark] = (),
    start: datetime | None = None,
    end: datetime | None = None,
) -> Markup:
    """An SVG line chart of ``series`` over [``start``, ``end``] (default: the points' own span), with a horizontal
    line per level and a vertical line per mark. ``chart_id`` names the chart's elements (unique on the page)."""
    moments = [m for s in series for m, _ in s.points] + [m.at for m in marks]
    start = start or min(moments, default=datetime.now(UTC))
    end = end or max(moments, default=start)
    values = [v for s in series for _, v in s.points if v is not None] + [lv.value for lv in levels]
    low, high = value_range(values)
    frame = Frame(start, end, low, high)
    cid = _attr(chart_id)
    drawn = sum(1 for s in series for _, v in s.points if v is not None and math.isfinite(v))
    description = f"{drawn} point(s) from {_stamp(start)} to {_stamp(end)} UTC" + "".join(
        f"; {lv.label} {lv.value:.3f}" for lv in levels
    )
    out = [
        f'<svg class="chart" id="{cid}" viewBox="0 0 {frame.width} {frame.height}" width="{frame.width}" '
        f'height="{frame.height}" role="img" aria-labelledby="{cid}-title {cid}-desc">',
        f'<title id="{cid}-title">{escape(title)}</title><desc id="{cid}-desc">{escape(description)}</desc>',
        f'<rect class="plot" x="{_n(frame.left)}" y="{_n(frame.top)}" width="{_n(frame.right - frame.left)}" '
        f'height="{_n(frame.bottom - frame.top)}"/>',
    ]
    for tick in (low, (low + high) / 2, high):
        y = _n(frame.y(tick))
        out.append(f'<text class="tick" x="{_n(frame.left - 4)}" y="{y}" text-anchor="end">{tick:.2f}</text>')
    for moment, anchor in ((start, "start"), (end, "end")):
        out.append(
            f'<text class="tick" x="{_n(frame.x(moment))}" y="{_n(frame.bottom + 16)}" text-anchor="{anchor}">'
            f"{escape(_stamp(moment))}</text>"
        )
    for level in levels:
        y = _n(frame.y(level.value))
        out.append(
            f'<line class="level level-{_attr(level.kind)}" x1="{_n(frame.left)}" x2="{_n(frame.right)}" y1="{y}" '
            f'y2="{y}" data-level="{_attr(level.label)}" data-value="{level.value:.4f}">'
            f"<title>{escape(f'{level.label} {level.value:.3f}')}</title></line>"
        )
    for mark in marks:
        x = _n(frame.x(mark.at))
        out.append(
            f'<line class="mark mark-{_attr(mark.kind)}" x1="{x}" x2="{x}" y1="{_n(frame.top)}" '
            f'y2="{_n(frame.bottom)}"><title>{escape(mark.label)}</title></line>'
        )
    for number, line in enumerate(series, start=1):
        css = f"series series-{number}"
        for run in _segments(line.points):
            coords = " ".join(f"{_n(frame.x(m))},{_n(frame.y(v))}" for m, v in run)
            out.append(f'<polyline class="{css}" data-series="{_attr(line.name)}" points="{coords}"/>')
            if len(run) == 1:  # a lone point draws no line: show it as a dot
                ((m, v),) = run
                out.append(f'<circle class="{css}" cx="{_n(frame.x(m))}" cy="{_n(frame.y(v))}" r="2.5"/>')
    legend = [(f"series-{i}", s.name) for i, s in enumerate(series, start=1)]
    legend += [(f"level-{lv.kind}", lv.label) for lv in levels]
    x = frame.left
    for css, label in legend:
        out.append(
            f'<line class="key {_attr(css)}" x1="{_n(x)}" x2="{_n(x + 14)}" y1="12" y2="12"/>'
            f'<text class="tick" x="{_n(x + 18)}" y="16">{escape(label)}</text>'
        )
        x += 26 + 6.5 * len(label)
    if not drawn:
        middle = _n((frame.top + frame.bottom) / 2)
        out.append(f'<text class="tick" x="{_n(frame.width / 2)}" y="{middle}" text-anchor="middle">no values</text>')
    out.append("</svg>")
    return Markup("".join(out))
