"""The console's SVG charts are well-formed XML whatever their labels and numbers, escape every
text, carry no inline style or script (the page's CSP forbids both), and keep the raw numbers
in the `data-*` attributes the browser tests and readers rely on."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from markupsafe import Markup

from secure_maas.console.charts import (
    TimelineItem,
    gauge,
    hbars,
    lines,
    stacked_bars,
    timeline,
)

SVG = "{http://www.w3.org/2000/svg}"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
HOSTILE = [
    "<script>alert(1)</script>",
    '"onload="alert(1)',
    "' onmouseover='x",
    "]]><x/>",
    "&amp;&lt;",
    "nul\x00bell\x07esc\x1b[31m",
    "lone \ud800 surrogate",
    "\ufffe\uffff",
    "ε δ 漢字 🙂",
    "x" * 5000,
]


def parse(markup: Markup) -> ET.Element:
    assert isinstance(markup, Markup)
    root = ET.fromstring(str(markup))
    assert root.tag == f"{SVG}svg"
    return root


def every(root: ET.Element, tag: str, css: str | None = None) -> list[ET.Element]:
    found = root.iter(f"{SVG}{tag}")
    return [e for e in found if css is None or css in e.get("class", "").split()]


def no_inline_code(markup: Markup) -> None:
    """CSP `default-src 'self'`: no style attribute, no script, no event handler attribute."""
    root = parse(markup)
    for element in root.iter():
        assert element.tag != f"{SVG}script"
        assert element.tag != f"{SVG}style"
        assert element.tag != f"{SVG}foreignObject"
        for name in element.attrib:
            assert name != "style"
            assert not name.lower().startswith("on"), name
            assert "javascript:" not in element.attrib[name].lower()


def texts(root: ET.Element) -> str:
    return " ".join("".join(e.itertext()) for e in root)


# Every chart, given a hostile label, for the checks that hold for all of them.
CHARTS: dict[str, Callable[[str], Markup]] = {
    "stacked_bars": lambda label: stacked_bars(
        [label, "b"], {label: [1, 2], "deny": [0, 3]}, chart_id=label, title=label
    ),
    "hbars": lambda label: hbars(
        [(label, 3.0), ("x", 1.0)], chart_id=label, title=label, unit=label
    ),
    "lines": lambda label: lines(
        [label, "b"], {label: [1.0, 2.0]}, chart_id=label, title=label, unit=label
    ),
    "gauge": lambda label: gauge(1.0, 3.0, chart_id=label, title=label),
    "timeline": lambda label: timeline(
        [TimelineItem(label, START, START + timedelta(hours=1), 1.0, label)],
        chart_id=label,
        title=label,
    ),
}


@pytest.mark.parametrize("chart", sorted(CHARTS))
@pytest.mark.parametrize("label", HOSTILE)
def test_hostile_labels_stay_text(chart: str, label: str) -> None:
    markup = CHARTS[chart](label)
    root = parse(markup)
    no_inline_code(markup)
    assert "<script" not in markup
    assert '"onload=' not in markup
    assert "<x/>" not in markup
    # What XML can hold comes back exactly; the rest is replaced, never passed through.
    readable = "".join(
        "\ufffd"
        if (ord(c) < 32 and c not in "\t\n\r") or 0xD800 <= ord(c) <= 0xDFFF or c in "\ufffe\uffff"
        else c
        for c in label
    )
    assert root.get("id") == readable
    assert root.get("aria-label") == readable
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == readable


def test_stacked_bars_one_group_per_series_one_rect_per_non_zero_value() -> None:
    markup = stacked_bars(
        ["09:00", "10:00", "11:00"],
        {"allow": [5, 0, 2], "deny": [1, 4, 0], "error": [0, 0, 0]},
        chart_id="chart-requests",
        title="Requests by decision",
    )
    root = parse(markup)
    no_inline_code(markup)
    assert root.get("id") == "chart-requests"
    assert root.get("class") == "chart" and root.get("role") == "img"
    groups = every(root, "g", "series")
    assert [g.get("data-series") for g in groups] == ["allow", "deny", "error"]
    bars = {
        g.get("data-series"): [
            (r.get("data-bucket"), r.get("data-value")) for r in every(g, "rect")
        ]
        for g in groups
    }
    assert bars == {
        "allow": [("09:00", "5"), ("11:00", "2")],
        "deny": [("09:00", "1"), ("10:00", "4")],
        "error": [],
    }
    # Stacked: in the first column deny sits on top of allow, and the tallest column fills
    # the plot's height.
    allow, deny = every(groups[0], "rect")[0], every(groups[1], "rect")[0]
    assert float(deny.get("y", "")) + float(deny.get("height", "")) == pytest.approx(
        float(allow.get("y", ""))
    )
    heights = [float(r.get("height", "")) for g in groups for r in every(g, "rect")]
    assert all(h > 0 for h in heights)


def test_stacked_bars_keeps_huge_counts_exact_and_inside_the_plot() -> None:
    huge = 10**15 + 7
    root = parse(stacked_bars(["a", "b"], {"allow": [huge, 1]}, chart_id="c", title="t"))
    rects = every(root, "rect", "bar")
    assert [r.get("data-value") for r in rects] == [str(huge), "1"]
    _x, _y, width, height = (float(v) for v in (root.get("viewBox") or "").split())
    for rect in rects:
        top = float(rect.get("y", ""))
        assert 0 <= top <= height
        assert 0 < float(rect.get("height", "")) <= height
        assert 0 <= float(rect.get("x", "")) <= width
    assert "1e+15" in texts(root)


def test_stacked_bars_draw_no_bar_for_none_negative_or_nan() -> None:
    series = {"allow": [None, -3, math.nan, 2]}
    root = parse(stacked_bars(["a", "b", "c", "d"], series, chart_id="c", title="t"))  # type: ignore[dict-item]
    assert [r.get("data-bucket") for r in every(root, "rect", "bar")] == ["d"]


def test_stacked_bars_one_bucket_and_all_zero() -> None:
    one = parse(stacked_bars(["only"], {"allow": [7]}, chart_id="c", title="t"))
    assert [r.get("data-value") for r in every(one, "rect", "bar")] == ["7"]
    # One column stays a column (not the plot's whole width).
    assert float(every(one, "rect", "bar")[0].get("width", "")) <= 48
    zero = parse(stacked_bars(["a", "b"], {"allow": [0, 0]}, chart_id="c", title="t"))
    assert every(zero, "rect", "bar") == [] and every(zero, "text", "empty") == []
    assert [g.get("data-series") for g in every(zero, "g", "series")] == ["allow"]


def test_stacked_bars_refuse_a_series_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="one value per bucket"):
        stacked_bars(["a", "b"], {"allow": [1]}, chart_id="c", title="t")


@pytest.mark.parametrize(
    "markup",
    [
        stacked_bars([], {}, chart_id="c", title="t"),
        stacked_bars(["a"], {}, chart_id="c", title="t"),
        stacked_bars([], {"allow": []}, chart_id="c", title="t"),
        hbars([], chart_id="c", title="t"),
        lines([], {}, chart_id="c", title="t"),
        lines(["a", "b"], {"p50": [None, None]}, chart_id="c", title="t"),
        lines(["a"], {"p50": [math.inf]}, chart_id="c", title="t"),
        timeline([], chart_id="c", title="t"),
    ],
)
def test_empty_data_says_so(markup: Markup) -> None:
    root = parse(markup)
    no_inline_code(markup)
    assert root.get("id") == "c"
    empty = every(root, "text", "empty")
    assert len(empty) == 1 and empty[0].text == "no data"
    assert every(root, "g", "series") == [] and every(root, "rect") == []


def test_hbars_items_in_order_with_exact_values() -> None:
    items = [("user:mallory", 40.0), ("user:eve", 12.5), ("user:bob", 1.0)]
    root = parse(hbars(items, chart_id="chart-denials-actor", title="Denials", unit="denials"))
    groups = every(root, "g", "item")
    assert [(g.get("data-label"), g.get("data-value")) for g in groups] == [
        ("user:mallory", "40"),
        ("user:eve", "12.5"),
        ("user:bob", "1"),
    ]
    widths = [float(every(g, "rect", "bar")[0].get("width", "")) for g in groups]
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[0] / widths[2] == pytest.approx(40.0)
    assert "12.5 denials" in texts(root)
    thousands = parse(hbars([("a", 2619.6), ("b", 12_345.0)], chart_id="c", title="t"))
    assert "2,620" in texts(thousands) and "12.3k" in texts(thousands)
    rounded = parse(hbars([("a", 999_999.0), ("b", 999.9e9)], chart_id="c", title="t"))
    assert "1M" in texts(rounded) and "1e+12" in texts(rounded)


def test_hbars_none_negative_and_nan_have_no_bar() -> None:
    items = [("a", None), ("b", -5.0), ("c", math.nan), ("d", 2.0), ("e", 0.0)]
    root = parse(hbars(items, chart_id="c", title="t"))  # type: ignore[arg-type]
    groups = every(root, "g", "item")
    assert [g.get("data-value") for g in groups] == ["", "-5", "", "2", "0"]
    assert [len(every(g, "rect", "bar")) for g in groups] == [0, 0, 0, 1, 0]


def test_hbars_long_labels_are_shortened_on_screen_only() -> None:
    label = "reason " * 40
    root = parse(hbars([(label, 1.0)], chart_id="c", title="t"))
    group = every(root, "g", "item")[0]
    assert group.get("data-label") == label
    drawn = [e.text or "" for e in every(group, "text")]
    assert any(t.endswith("\u2026") and len(t) < 40 for t in drawn)


def test_lines_one_polyline_per_unbroken_stretch() -> None:
    x = ["09:00", "10:00", "11:00", "12:00"]
    series = {"digits p50": [1.0, 2.0, None, 4.0], "digits p99": [10.0, 30.0, 20.0, 25.0]}
    root = parse(lines(x, series, chart_id="chart-latency", title="Latency"))
    groups = every(root, "g", "series")
    assert [g.get("data-series") for g in groups] == ["digits p50", "digits p99"]
    assert groups[0].get("data-values") == "1,2,,4"
    p50 = [p.get("points", "").split() for p in every(groups[0], "polyline")]
    p99 = [p.get("points", "").split() for p in every(groups[1], "polyline")]
    assert [len(run) for run in p50] == [2, 1]
    assert [len(run) for run in p99] == [4]
    # A point alone is also a dot, or it would not show.
    assert len(every(groups[0], "circle", "point")) == 1
    # Higher latency is higher on the chart (smaller y).
    ys = [float(p.split(",")[1]) for p in p99[0]]
    assert ys[1] < ys[3] < ys[2] < ys[0]
    assert "ms" in texts(root)


def test_lines_one_point_negative_and_huge_values() -> None:
    one = parse(lines(["only"], {"p50": [3.0]}, chart_id="c", title="t"))
    assert len(every(one, "polyline")) == 1 and len(every(one, "circle", "point")) == 1
    mixed = parse(lines(["a", "b"], {"v": [-5.0, 1e300]}, chart_id="c", title="t"))
    points = every(mixed, "polyline")[0].get("points", "").split()
    assert len(points) == 2
    _x, _y, _w, height = (float(v) for v in (mixed.get("viewBox") or "").split())
    for point in points:
        assert 0 <= float(point.split(",")[1]) <= height
    flat = parse(lines(["a", "b"], {"v": [2.0, 2.0]}, chart_id="c", title="t"))
    assert len(every(flat, "polyline")) == 1


def test_lines_refuse_a_series_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="one value per bucket"):
        lines(["a"], {"p50": [1.0, 2.0]}, chart_id="c", title="t")


def _arc_end(root: ET.Element) -> tuple[float, float] | None:
    arcs = every(root, "path", "arc")
    if not arcs:
        return None
    words = arcs[0].get("d", "").split()
    return float(words[-2]), float(words[-1])


def test_gauge_within_budget() -> None:
    markup = gauge(1.5, 3.0, chart_id="gauge-digits", title="Budget of digits")
    root = parse(markup)
    no_inline_code(markup)
    assert root.get("id") == "gauge-digits"
    assert root.get("class") == "gauge"
    assert (root.get("data-spent"), root.get("data-total")) == ("1.5", "3")
    # Half the budget: the arc ends at the top of the half circle.
    end = _arc_end(root)
    assert end is not None
    _x, _y, width, _height = (float(v) for v in (root.get("viewBox") or "").split())
    assert end[0] == pytest.approx(width / 2)
    shown = texts(root)
    assert "1.5 of 3" in shown and "1.5 remaining" in shown


def test_gauge_over_budget() -> None:
    root = parse(gauge(4.0, 3.0, chart_id="g", title="t"))
    assert root.get("class", "").split() == ["gauge", "over"]
    assert every(root, "path", "over") != []
    assert "over by 1" in texts(root)
    # The arc is full, never past its end.
    full = _arc_end(parse(gauge(3.0, 3.0, chart_id="g", title="t")))
    assert _arc_end(root) == full
    assert parse(gauge(3.0, 3.0, chart_id="g", title="t")).get("class") == "gauge"


def test_gauge_edges() -> None:
    nothing = parse(gauge(0.0, 3.0, chart_id="g", title="t"))
    assert _arc_end(nothing) is None and nothing.get("class") == "gauge"
    negative = parse(gauge(-1.0, 3.0, chart_id="g", title="t"))
    assert _arc_end(negative) is None and negative.get("data-spent") == "-1"
    no_budget = parse(gauge(0.5, 0.0, chart_id="g", title="t"))
    assert no_budget.get("class") == "gauge over"
    huge = parse(gauge(1e308, 1e308, chart_id="g", title="t"))
    assert huge.get("class") == "gauge" and _arc_end(huge) is not None
    for spent, total in ((math.nan, 3.0), (1.0, math.inf), (None, 1.0)):
        root = parse(gauge(spent, total, chart_id="g", title="t"))  # type: ignore[arg-type]
        assert root.get("class") == "gauge"
        assert [e.text for e in every(root, "text", "empty")] == ["no data"]


def test_timeline_runs_finished_and_not() -> None:
    items = [
        TimelineItem("run 1", START, START + timedelta(hours=1), 1.25, "succeeded"),
        TimelineItem(
            "run 2", START + timedelta(hours=2), START + timedelta(hours=3), None, "refused"
        ),
        TimelineItem("run 3", START + timedelta(hours=4), None, None, "started"),
    ]
    markup = timeline(items, chart_id="runs-digits", title="Runs")
    root = parse(markup)
    no_inline_code(markup)
    runs = every(root, "g", "run")
    assert [(r.get("data-status"), r.get("data-value")) for r in runs] == [
        ("succeeded", "1.25"),
        ("refused", ""),
        ("started", ""),
    ]
    assert ["open" in (r.get("class") or "").split() for r in runs] == [False, False, True]
    assert runs[2].get("data-end") == ""
    spans = [every(r, "rect", "span")[0] for r in runs]
    xs = [float(s.get("x", "")) for s in spans]
    assert xs[0] < xs[1] < xs[2]
    assert all(float(s.get("width", "")) > 0 for s in spans)
    assert "ε 1.25" in texts(root)


def test_timeline_one_unfinished_run_and_odd_times() -> None:
    alone = parse(
        timeline([TimelineItem("r", START, None, None, "started")], chart_id="t", title="t")
    )
    (run,) = every(alone, "g", "run")
    assert float(every(run, "rect", "span")[0].get("width", "")) > 0
    backwards = TimelineItem("r", START, START - timedelta(days=1), 0.5, "failed")
    naive = TimelineItem("n", datetime(2026, 12, 1, 10), datetime(2026, 12, 1, 11), 1.0, "ok")
    root = parse(timeline([backwards, naive], chart_id="t", title="t"))
    widths = [float(every(r, "rect", "span")[0].get("width", "")) for r in every(root, "g", "run")]
    assert all(w > 0 for w in widths)
