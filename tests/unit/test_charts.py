"""The server-side SVG line charts (``web/charts.py``): where points and lines land, gaps, an empty chart, and every
written value escaped."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from markupsafe import Markup

from include.promotion.web.charts import (
    HEIGHT,
    INSET,
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    WIDTH,
    Level,
    Mark,
    Series,
    line_chart,
    value_range,
)

START = datetime(2026, 12, 1, tzinfo=UTC)
END = START + timedelta(days=4)
LEFT, RIGHT, TOP, BOTTOM = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
LOWEST, HIGHEST = BOTTOM - INSET, TOP + INSET  # where the ends of the value range are drawn
HOSTILE = '"><script>alert(1)</script>&'


def svg(chart: Markup) -> ET.Element:
    """The chart parsed as XML: it must be well formed, whatever it was given."""
    return ET.fromstring(str(chart))


def polylines(root: ET.Element) -> list[list[tuple[float, float]]]:
    return [
        [tuple(float(n) for n in pair.split(",")) for pair in line.get("points").split()]
        for line in root.iter("polyline")
    ]


def test_points_land_where_their_time_and_value_say() -> None:
    # values 0.2..0.6: the value axis spans exactly that (tenths); times span START..END
    points = [(START, 0.2), (START + timedelta(days=2), 0.4), (END, 0.6)]
    root = svg(line_chart("c", "roc_auc", [Series("live roc_auc", points)], start=START, end=END))
    (line,) = polylines(root)
    assert line == [(LEFT, LOWEST), ((LEFT + RIGHT) / 2, (TOP + BOTTOM) / 2), (RIGHT, HIGHEST)]
    ticks = [t.text for t in root.iter("text")]
    assert ticks[:3] == ["0.20", "0.40", "0.60"] and "12-01 00:00" in ticks and "12-05 00:00" in ticks


def test_a_minimum_and_the_offline_value_are_horizontal_lines_at_their_value() -> None:
    points = [(START, 0.5), (END, 0.9)]
    levels = [Level("minimum", 0.6, "minimum"), Level("offline v3", 0.8, "offline")]
    root = svg(line_chart("c", "t", [Series("live", points)], levels, start=START, end=END))
    lines = {ln.get("data-level"): ln for ln in root.iter("line") if ln.get("data-level")}
    assert set(lines) == {"minimum", "offline v3"}
    for level in levels:  # the range is 0.5..0.9
        line = lines[level.label]
        expected = LOWEST - (level.value - 0.5) / 0.4 * (LOWEST - HIGHEST)
        assert float(line.get("y1")) == float(line.get("y2")) == round(expected, 1)
        assert (float(line.get("x1")), float(line.get("x2"))) == (LEFT, RIGHT)
        assert line.get("class") == f"level level-{level.kind}"
    assert "minimum 0.600" in root.find("desc").text and "offline v3 0.800" in root.find("desc").text


def test_a_level_outside_the_values_widens_the_range_so_it_stays_visible() -> None:
    root = svg(line_chart("c", "t", [Series("live", [(START, 0.85), (END, 0.9)])], [Level("minimum", 0.3, "minimum")]))
    (minimum,) = [ln for ln in root.iter("line") if ln.get("data-level") == "minimum"]
    assert float(minimum.get("y1")) == LOWEST  # the range starts at 0.3
    assert value_range([0.85, 0.9, 0.3]) == (0.3, 0.9)


def test_none_and_nan_values_are_left_out_and_break_the_line() -> None:
    points = [
        (START, 0.5),
        (START + timedelta(days=1), None),
        (START + timedelta(days=2), 0.6),
        (START + timedelta(days=3), 0.7),
        (END, math.nan),
    ]
    root = svg(line_chart("c", "t", [Series("live", points)], start=START, end=END))
    lines = polylines(root)
    assert [len(line) for line in lines] == [1, 2]
    (dot,) = root.iter("circle")  # a lone point has no line to show it: a dot
    assert (float(dot.get("cx")), float(dot.get("cy"))) == lines[0][0] == (LEFT, LOWEST)
    assert root.find("desc").text.startswith("3 point(s)")


def test_two_series_are_two_lines_told_apart_by_class() -> None:
    series = [Series("live roc_auc", [(START, 0.9), (END, 0.8)]), Series("live recall", [(START, 0.5), (END, 0.6)])]
    root = svg(line_chart("c", "t", series, start=START, end=END))
    drawn = [(p.get("data-series"), p.get("class")) for p in root.iter("polyline")]
    assert drawn == [("live roc_auc", "series series-1"), ("live recall", "series series-2")]


def test_a_mark_is_a_vertical_line_at_its_time() -> None:
    at = START + timedelta(days=1)
    chart = line_chart("c", "t", [Series("live", [(START, 0.5), (END, 0.6)])], marks=[Mark(at, "v3 degraded")])
    (mark,) = [ln for ln in svg(chart).iter("line") if "mark" in (ln.get("class") or "")]
    x = LEFT + 0.25 * (RIGHT - LEFT)
    assert float(mark.get("x1")) == float(mark.get("x2")) == x and mark.get("class") == "mark mark-degraded"
    assert (float(mark.get("y1")), float(mark.get("y2"))) == (TOP, BOTTOM) and mark.find("title").text == "v3 degraded"


def test_an_empty_chart_says_so_and_is_still_an_accessible_image() -> None:
    root = svg(line_chart("empty", "Live recall", [], start=START, end=END))
    assert root.get("role") == "img" and root.get("aria-labelledby") == "empty-title empty-desc"
    assert root.find("title").get("id") == "empty-title" and root.find("title").text == "Live recall"
    assert root.find("polyline") is None and root.find("circle") is None
    assert "no values" in [t.text for t in root.iter("text")]
    assert svg(line_chart("none", "t", [Series("live", [(START, None)])])).find("polyline") is None


def test_everything_written_is_escaped_and_nothing_can_run() -> None:
    chart = line_chart(
        HOSTILE,
        HOSTILE,
        [Series(HOSTILE, [(START, 0.5), (END, 0.6)])],
        [Level(HOSTILE, 0.55, HOSTILE)],
        [Mark(START, HOSTILE, HOSTILE)],
    )
    assert isinstance(chart, Markup)
    text = str(chart)
    assert "<script" not in text and "&lt;script&gt;" in text
    root = svg(chart)  # parsed back, every value is what was given, as text
    assert root.get("id") == HOSTILE and root.find("title").text == HOSTILE
    assert root.find("polyline").get("data-series") == HOSTILE
    assert {e.tag for e in root.iter()} <= {"svg", "title", "desc", "rect", "text", "line", "polyline", "circle"}
    assert not [name for e in root.iter() for name in e.attrib if name == "style" or name.startswith("on")]


def test_the_chart_draws_with_the_pages_colours_only() -> None:
    text = str(line_chart("c", "t", [Series("live", [(START, 0.5), (END, 0.6)])], [Level("minimum", 0.5, "minimum")]))
    assert re.search(r"#[0-9a-fA-F]{3,6}|rgb\(|fill=|stroke=", text) is None  # colours come from page.css classes
    assert 'class="chart"' in text
