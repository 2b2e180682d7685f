"""Server-side SVG charts for the console: pure functions from numbers to escaped markup.

The console's Content-Security-Policy is `default-src 'self'` without 'unsafe-inline', so a
chart can carry neither a `style=` attribute nor a script: shapes are placed and coloured with
SVG presentation attributes (`x`, `width`, `fill`...), which CSP does not govern, and carry CSS
classes the console's stylesheet may refine. Nothing here touches Flask, a clock or a file, so
every chart is a function of its arguments and is tested as one.

Every label comes from the audit log or the registry, which means from callers: each one is
escaped (markupsafe, the same escaping Jinja applies) and stripped of the characters XML 1.0
cannot hold, so the output is well-formed XML whatever the text. Each chart keeps its raw
numbers in `data-*` attributes next to the shapes that draw them, for tests and for people
reading the page's source; the drawn text is rounded.

An empty chart (no buckets, no series, no items) is still an `<svg>` with its id and title,
holding `<text class="empty">no data</text>`, so the page's layout and ids never depend on the
data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

WIDTH = 640
#: The gauge is a half circle: narrower, so it keeps its size beside a wide chart.
GAUGE_WIDTH = 320
#: Longest label drawn in full; the whole text stays in the `data-*` attribute and tooltip.
LABEL_CHARS = 28
#: Decisions keep their colour whatever order the series come in.
DECISION_FILLS = {"allow": "#2e7d32", "deny": "#c62828", "error": "#ef6c00"}
PALETTE = (
    "#1565c0",
    "#6a1b9a",
    "#00838f",
    "#9e9d24",
    "#4e342e",
    "#ad1457",
    "#37474f",
    "#5d4037",
)
STATUS_FILLS = {
    "succeeded": "#2e7d32",
    "finished": "#2e7d32",
    "ok": "#2e7d32",
    "refused": "#c62828",
    "failed": "#c62828",
    "started": "#1565c0",
    "running": "#1565c0",
}
#: Code points XML 1.0 cannot carry (C0 controls but tab/newline/return, surrogates, U+FFFE/F).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

#: The widest column: a few buckets still read as columns, not as a wall.
BAR_MAX = 48.0
#: The least height or width of a mark for a value above zero, so a small count still shows.
MIN_MARK = 1.0
_TOP = 28
_LEFT = 56
_RIGHT = 16
_X_LABELS = 8


@dataclass(frozen=True)
class TimelineItem:
    """One training run on the privacy page's timeline: `end=None` is started, not finished;
    `value` is its ε (None while unknown)."""

    label: str
    start: datetime
    end: datetime | None
    value: float | None
    status: str


def _text(value: object) -> str:
    """`value` as text safe inside an element or a double-quoted attribute."""
    return str(escape(_NOT_XML.sub("\ufffd", str(value))))


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "\u2026"


def _finite(value: float | None) -> float | None:
    """A drawable number: None for None, NaN and infinities."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _data(value: float | None) -> str:
    """A number for a `data-*` attribute: exact (ints as ints, floats round-trip), '' if none."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        return ""
    return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)


def _shown(value: float) -> str:
    """A number as people read it on a chart: three significant digits, k/M/G from 10^4,
    an exponent from 10^12."""
    magnitude = abs(value)
    if magnitude >= 1e12:
        return f"{value:.3g}"
    if magnitude >= 1e4:
        for unit, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
            text = f"{value / unit:.3g}"
            if abs(float(text)) < 1000:  # 999,999 rounds to 1e+03k: take the next unit
                return text + suffix
        return f"{value:.3g}"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"


def _px(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _fill(name: str, index: int) -> str:
    return DECISION_FILLS.get(name, PALETTE[index % len(PALETTE)])


def _open(
    chart_id: str, title: str, height: float, css: str, extra: str = "", width: int = WIDTH
) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{_text(chart_id)}" class="{css}" '
        f'role="img" aria-label="{_text(title)}" viewBox="0 0 {width} {_px(height)}" '
        f'width="{width}" height="{_px(height)}"{extra}>',
        f"<title>{_text(title)}</title>",
        f'<text class="chart-title" x="12" y="18" font-size="13">{_text(title)}</text>',
    ]


def _empty(
    chart_id: str, title: str, css: str = "chart", extra: str = "", width: int = WIDTH
) -> Markup:
    height = 80
    parts = _open(chart_id, title, height, css, extra, width)
    parts.append(
        f'<text class="empty" x="{width // 2}" y="52" text-anchor="middle" '
        'font-size="13" fill="#616161">no data</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text went through _text


def _x_label_every(count: int) -> int:
    return max(1, math.ceil(count / _X_LABELS))


def _legend(names: Sequence[str], y: float) -> str:
    parts = ['<g class="legend">']
    x = float(_LEFT)
    for index, name in enumerate(names):
        shown = _short(name)
        parts.append(
            f'<g class="key"><rect x="{_px(x)}" y="{_px(y - 9)}" width="10" height="10" '
            f'fill="{_fill(name, index)}"/>'
            f'<text x="{_px(x + 14)}" y="{_px(y)}" font-size="11">{_text(shown)}</text></g>'
        )
        x += 24 + 7 * len(shown)
    parts.append("</g>")
    return "".join(parts)


def _y_axis(top: float, bottom: float, low: float, high: float, unit: str) -> str:
    """Gridlines and labels at the low end, the middle and the high end of the scale."""
    parts = ['<g class="axis">']
    for fraction in (0.0, 0.5, 1.0):
        value = low + (high - low) * fraction
        y = bottom - (bottom - top) * fraction
        label = _shown(value) + (f" {unit}" if unit else "")
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{_px(y)}" y2="{_px(y)}" '
            'stroke="#e0e0e0"/>'
            f'<text x="{_LEFT - 4}" y="{_px(y + 4)}" text-anchor="end" font-size="10">'
            f"{_text(label)}</text>"
        )
    parts.append("</g>")
    return "".join(parts)


def _x_axis(labels: Sequence[str], centre: Sequence[float], y: float) -> str:
    every = _x_label_every(len(labels))
    parts = ['<g class="axis x">']
    for index in range(0, len(labels), every):
        parts.append(
            f'<text x="{_px(centre[index])}" y="{_px(y)}" text-anchor="middle" font-size="10">'
            f"{_text(_short(labels[index]))}</text>"
        )
    parts.append("</g>")
    return "".join(parts)


def _check_lengths(count: int, series: Mapping[str, Sequence[object]]) -> None:
    for name, values in series.items():
        if len(values) != count:
            raise ValueError(
                f"series {name!r} has {len(values)} values for {count} buckets; "
                "each series needs one value per bucket"
            )


def stacked_bars(
    buckets: Sequence[str],
    series: Mapping[str, Sequence[int]],
    *,
    chart_id: str,
    title: str,
) -> Markup:
    """Requests per interval by decision: one column per bucket, the series stacked in the
    order given. A series holds one count per bucket; None, negative and non-finite counts
    are drawn as zero, and a zero draws no rectangle."""
    _check_lengths(len(buckets), series)
    if not buckets or not series:
        return _empty(chart_id, title)
    counts = {
        name: [max(0.0, _finite(v) or 0.0) for v in values] for name, values in series.items()
    }
    totals = [sum(values[i] for values in counts.values()) for i in range(len(buckets))]
    high = max(totals) or 1.0
    plot_top, plot_bottom = float(_TOP + 8), 200.0
    height = plot_bottom + 46
    slot = (WIDTH - _LEFT - _RIGHT) / len(buckets)
    bar = min(BAR_MAX, max(1.0, slot * 0.8))
    centres = [_LEFT + slot * (i + 0.5) for i in range(len(buckets))]
    scale = (plot_bottom - plot_top) / high
    parts = _open(chart_id, title, height, "chart")
    parts.append(_y_axis(plot_top, plot_bottom, 0.0, high, ""))
    stacked = [0.0] * len(buckets)
    for index, (name, values) in enumerate(counts.items()):
        parts.append(
            f'<g class="series series-{index}" data-series="{_text(name)}" '
            f'fill="{_fill(name, index)}">'
        )
        for i, value in enumerate(values):
            if value <= 0:
                continue
            h = max(MIN_MARK, value * scale)  # a count too small to see still shows
            y = plot_bottom - stacked[i] - h
            stacked[i] += h
            raw = series[name][i]
            parts.append(
                f'<rect class="bar" data-bucket="{_text(buckets[i])}" data-value="{_data(raw)}" '
                f'x="{_px(centres[i] - bar / 2)}" y="{_px(y)}" width="{_px(bar)}" '
                f'height="{_px(h)}"><title>{_text(buckets[i])}: {_text(name)} '
                f"{_text(_shown(value))}</title></rect>"
            )
        parts.append("</g>")
    parts.append(_x_axis(buckets, centres, plot_bottom + 14))
    parts.append(_legend(list(series), plot_bottom + 38))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text went through _text


def hbars(
    items: Sequence[tuple[str, float]],
    *,
    chart_id: str,
    title: str,
    unit: str = "",
) -> Markup:
    """Horizontal bars, one per (label, value), longest scale first as given (denials by
    subject or model, top reasons). None, negative and non-finite values draw no bar."""
    if not items:
        return _empty(chart_id, title)
    row = 22
    label_width = 200
    value_width = 70
    top = _TOP + 6
    height = top + row * len(items) + 8
    values = [max(0.0, _finite(value) or 0.0) for _label, value in items]
    high = max(values) or 1.0
    span = WIDTH - label_width - value_width - _RIGHT
    parts = _open(chart_id, title, height, "chart")
    for index, ((label, raw), value) in enumerate(zip(items, values, strict=True)):
        y = top + row * index
        width = max(MIN_MARK, value * span / high) if value > 0 else 0.0
        number = _finite(raw)
        shown = "" if number is None else _shown(number) + (f" {unit}" if unit else "")
        parts.append(
            f'<g class="item" data-label="{_text(label)}" data-value="{_data(number)}">'
            f"<title>{_text(label)}: {_text(shown or 'no value')}</title>"
            f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end" font-size="11">'
            f"{_text(_short(label))}</text>"
        )
        if width > 0:
            parts.append(
                f'<rect class="bar" x="{label_width}" y="{y + 4}" width="{_px(width)}" '
                f'height="{row - 8}" fill="{PALETTE[0]}"/>'
            )
        parts.append(
            f'<text class="value" x="{_px(label_width + width + 6)}" y="{y + 15}" '
            f'font-size="11">{_text(shown)}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text went through _text


def _runs(points: Sequence[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    """The unbroken stretches of a series: a missing value ends a line."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for point in points:
        if point is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(point)
    if current:
        runs.append(current)
    return runs


def lines(
    x: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    chart_id: str,
    title: str,
    unit: str = "ms",
) -> Markup:
    """Lines over labelled x positions (latency percentiles per bucket). A None or non-finite
    value leaves a gap; a point with no neighbour is also drawn as a dot so it shows."""
    _check_lengths(len(x), series)
    known = [v for values in series.values() for v in map(_finite, values) if v is not None]
    if not x or not known:
        return _empty(chart_id, title)
    low, high = min(0.0, min(known)), max(known)
    if high == low:
        high = low + 1.0
    plot_top, plot_bottom = float(_TOP + 8), 200.0
    height = plot_bottom + 46
    step = (WIDTH - _LEFT - _RIGHT) / len(x)
    centres = [_LEFT + step * (i + 0.5) for i in range(len(x))]
    scale = (plot_bottom - plot_top) / (high - low)
    parts = _open(chart_id, title, height, "chart")
    parts.append(_y_axis(plot_top, plot_bottom, low, high, unit))
    for index, (name, values) in enumerate(series.items()):
        colour = _fill(name, index)
        points: list[tuple[float, float] | None] = []
        for i, raw in enumerate(values):
            value = _finite(raw)
            points.append(
                None if value is None else (centres[i], plot_bottom - (value - low) * scale)
            )
        parts.append(
            f'<g class="series series-{index}" data-series="{_text(name)}" '
            f'data-values="{_text(",".join(_data(_finite(v)) for v in values))}">'
        )
        for run in _runs(points):
            coords = " ".join(f"{_px(px)},{_px(py)}" for px, py in run)
            parts.append(
                f'<polyline class="line" points="{coords}" fill="none" stroke="{colour}" '
                'stroke-width="2"/>'
            )
            if len(run) == 1:
                px, py = run[0]
                parts.append(
                    f'<circle class="point" cx="{_px(px)}" cy="{_px(py)}" r="3" fill="{colour}"/>'
                )
        parts.append("</g>")
    parts.append(_x_axis(x, centres, plot_bottom + 14))
    parts.append(_legend(list(series), plot_bottom + 38))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text went through _text


def _arc_point(fraction: float, cx: float, cy: float, r: float) -> tuple[float, float]:
    angle = math.pi * (1 - fraction)  # from the left end (0) over the top to the right (1)
    return cx + r * math.cos(angle), cy - r * math.sin(angle)


def gauge(spent: float, total: float, *, chart_id: str, title: str) -> Markup:
    """A privacy budget as a half-circle gauge: the arc fills with `spent / total`; spent past
    the total fills it and marks the chart "over" (class and text). A total of zero or less
    counts any spending as over; None or non-finite numbers render as no data."""
    spent_n, total_n = _finite(spent), _finite(total)
    if spent_n is None or total_n is None:
        return _empty(chart_id, title, "gauge", width=GAUGE_WIDTH)
    over = spent_n > total_n
    used = max(0.0, spent_n)
    fraction = 1.0 if total_n <= 0 else min(1.0, used / total_n)
    css = "gauge over" if over else "gauge"
    extra = f' data-spent="{_data(spent)}" data-total="{_data(total)}"'
    cx, cy, r = GAUGE_WIDTH / 2, 150.0, 100.0
    height = 200
    parts = _open(chart_id, title, height, css, extra, width=GAUGE_WIDTH)
    x0, y0 = _arc_point(0.0, cx, cy, r)
    x1, y1 = _arc_point(1.0, cx, cy, r)
    parts.append(
        f'<path class="track" d="M {_px(x0)} {_px(y0)} A {_px(r)} {_px(r)} 0 0 1 '
        f'{_px(x1)} {_px(y1)}" fill="none" stroke="#e0e0e0" stroke-width="18"/>'
    )
    if fraction > 0:
        xf, yf = _arc_point(fraction, cx, cy, r)
        colour = DECISION_FILLS["deny"] if over else PALETTE[0]
        parts.append(
            f'<path class="{"arc over" if over else "arc"}" d="M {_px(x0)} {_px(y0)} '
            f'A {_px(r)} {_px(r)} 0 0 1 {_px(xf)} {_px(yf)}" fill="none" stroke="{colour}" '
            'stroke-width="18"/>'
        )
    remaining = total_n - spent_n
    summary = f"ε {_shown(spent_n)} of {_shown(total_n)}"
    status = f"over by {_shown(-remaining)}" if over else f"{_shown(remaining)} remaining"
    parts.append(
        f'<text class="spent" x="{_px(cx)}" y="{_px(cy - 12)}" text-anchor="middle" '
        f'font-size="18">{_text(summary)}</text>'
        f'<text class="{"remaining over" if over else "remaining"}" x="{_px(cx)}" '
        f'y="{_px(cy + 26)}" text-anchor="middle" font-size="13">{_text(status)}</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text went through _text


def _seconds(moment: datetime) -> float:
    """Seconds since the epoch; a naive time is taken as UTC (as `timeutil.as_utc` does)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def timeline(items: Sequence[TimelineItem], *, chart_id: str, title: str) -> Markup:
    """Training runs on one time axis, one row each, in the order given: a bar from start to
    end labelled with its ε and status. A run not finished (`end=None`) reaches to the latest
    time on the chart and is drawn open (class "open"); a run ending before it starts is drawn
    at its start."""
    if not items:
        return _empty(chart_id, title)
    starts = [_seconds(item.start) for item in items]
    ends = [None if item.end is None else _seconds(item.end) for item in items]
    first = min(starts)
    last = max([*starts, *(e for e in ends if e is not None)])
    span = (last - first) or 1.0
    row = 24
    label_width = 150
    top = _TOP + 6
    plot_right = WIDTH - _RIGHT - 90
    height = top + row * len(items) + 24
    scale = (plot_right - label_width) / span
    parts = _open(chart_id, title, height, "chart timeline")
    for index, (item, start, end) in enumerate(zip(items, starts, ends, strict=True)):
        y = top + row * index
        x0 = label_width + (start - first) * scale
        x1 = label_width + ((last if end is None else max(end, start)) - first) * scale
        width = max(3.0, x1 - x0)
        value = _finite(item.value)
        epsilon = "ε ?" if value is None else f"ε {_shown(value)}"
        state = "open" if item.end is None else "closed"
        fill = STATUS_FILLS.get(item.status, PALETTE[6])
        unfinished = (
            ' fill-opacity="0.45" stroke="#1565c0" stroke-dasharray="4 2"' if end is None else ""
        )
        parts.append(
            f'<g class="run {state}" data-status="{_text(item.status)}" '
            f'data-value="{_data(value)}" data-start="{_text(item.start.isoformat())}" '
            f'data-end="{"" if item.end is None else _text(item.end.isoformat())}">'
            f"<title>{_text(item.label)}: {_text(item.status)}, {_text(epsilon)}</title>"
            f'<text x="{label_width - 6}" y="{y + 16}" text-anchor="end" font-size="11">'
            f"{_text(_short(item.label))}</text>"
            f'<rect class="span" x="{_px(x0)}" y="{y + 5}" width="{_px(width)}" '
            f'height="{row - 10}" fill="{fill}"{unfinished}/>'
            f'<text class="value" x="{_px(x0 + width + 6)}" y="{y + 16}" font-size="11">'
            f"{_text(epsilon)} {_text(_short(item.status))}</text></g>"
        )
    axis_y = top + row * len(items) + 14
    shown = "%Y-%m-%d %H:%M:%S" if last - first < 3600 else "%Y-%m-%d %H:%M"
    for moment, anchor, x in (
        (first, "start", label_width),
        (last, "end", plot_right),
    ):
        text = datetime.fromtimestamp(moment, UTC).strftime(shown)
        parts.append(
            f'<text class="axis" x="{_px(x)}" y="{axis_y}" text-anchor="{anchor}" '
            f'font-size="10">{_text(text)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text went through _text
