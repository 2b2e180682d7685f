"""The console's charts from its data: `audit.stats` queries in, `charts` SVG out; no Flask.

The audit page's charts use the table's filter (`AuditFilter`; the HTTP status filter is the
table's alone) over its time range, 24 hours back when the filter has no `since`, in about 48
buckets. The privacy page draws each dataset's budget gauge and its runs' timeline.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from markupsafe import Markup
from sqlalchemy.engine import Connection

from secure_maas.audit import stats
from secure_maas.console import charts
from secure_maas.console.pages import AuditQuery, DatasetView

DEFAULT_SPAN = timedelta(hours=24)
BUCKETS = 48
TOP = 10


def bucket_for(span: timedelta) -> timedelta:
    """A bucket giving about `BUCKETS` bars over `span`, in whole minutes (at least one)."""
    minutes = max(1, int(span.total_seconds() // 60 // BUCKETS))
    return timedelta(minutes=minutes)


def _label(moment: datetime, bucket: timedelta) -> str:
    return moment.strftime("%m-%d %H:%M" if bucket < timedelta(days=1) else "%Y-%m-%d")


def audit_charts(connection: Connection, query: AuditQuery, now: datetime) -> dict[str, Markup]:
    """The five charts of the audit page, by their element id."""
    audit_filter = query.filter
    if audit_filter.since is None:
        audit_filter = replace(audit_filter, since=(audit_filter.until or now) - DEFAULT_SPAN)
    since = audit_filter.since or now - DEFAULT_SPAN
    span = max((audit_filter.until or now) - since, timedelta(minutes=1))
    bucket = bucket_for(span)
    counted = stats.stats(connection, audit_filter, bucket=bucket, top=TOP)
    labels = [_label(b.start, bucket) for b in counted.buckets]
    names = sorted({name for b in counted.buckets for name in b.decisions})
    series = {name: [b.decisions.get(name, 0) for b in counted.buckets] for name in names}
    found = {
        "chart-requests": charts.stacked_bars(
            labels, series, chart_id="chart-requests", title="Requests by decision"
        )
    }
    for by, chart_id, title in (
        ("actor", "chart-denials-actor", "Denials by subject"),
        ("model", "chart-denials-model", "Denials by model"),
    ):
        rows = stats.denials(connection, audit_filter, by=by, top=TOP)
        items = [(name if name is not None else "(none)", float(n)) for name, n in rows]
        found[chart_id] = charts.hbars(items, chart_id=chart_id, title=title)
    reasons = stats.top_reasons(connection, audit_filter, top=TOP)
    found["chart-reasons"] = charts.hbars(
        [(code if code is not None else "(none)", float(n)) for code, n in reasons],
        chart_id="chart-reasons",
        title="Top reasons of refusals",
    )
    latency = stats.latency_percentiles(connection, audit_filter, bucket=bucket)
    starts = sorted({b.start for buckets in latency.models.values() for b in buckets})
    lines: dict[str, list[float | None]] = {}
    for model, buckets in latency.models.items():
        by_start = {b.start: b for b in buckets}
        for percentile in latency.percentiles:
            lines[f"{model} p{percentile}"] = [
                by_start[s].percentiles.get(percentile) if s in by_start else None for s in starts
            ]
    found["chart-latency"] = charts.lines(
        [_label(s, bucket) for s in starts],
        lines,
        chart_id="chart-latency",
        title="Latency percentiles per model",
    )
    return found


def privacy_charts(dataset: DatasetView) -> dict[str, Markup]:
    """A dataset's budget gauge and runs timeline, by their element id."""
    gauge_id, runs_id = f"gauge-{dataset.name}", f"runs-{dataset.name}"
    items = [
        charts.TimelineItem(
            label=f"{run.model}" + (f":{run.version}" if run.version is not None else ""),
            start=run.started_at,
            end=run.finished_at,
            value=run.epsilon,
            status=run.status,
        )
        for run in dataset.runs
    ]
    return {
        "gauge": charts.gauge(
            dataset.spent, dataset.budget, chart_id=gauge_id, title=f"ε budget of {dataset.name}"
        ),
        "timeline": charts.timeline(items, chart_id=runs_id, title=f"Runs on {dataset.name}"),
    }
