"""`secure-maas audit`: review the audit log and prove it intact.

Review commands and `verify` only read: they work with a read-only database user and need no
key but the audit key (`verify`). `prune` and `verify --checkpoint` append to the log.

Whatever is printed for people (tables, `show`, `tail` lines, reports) is escaped
(`audit.text.escape_controls`): records written by an older release may hold raw control
characters, and a terminal must never receive them. JSON output is ASCII-escaped by `json.dumps`;
CSV and JSON exports carry the stored values exactly, as MAC recomputation needs.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click
from sqlalchemy.engine import Connection

from secure_maas.actions import Action, AdminAction
from secure_maas.audit import (
    AuditDecision,
    AuditFilter,
    AuditRecord,
    KeyringAuditKeys,
    VerifyReport,
    append_checkpoint,
    parse_head,
    parse_time,
    verify_database,
)
from secure_maas.audit.export import flat, summary_line, write_csv, write_jsonl
from secure_maas.audit.prune import plan_prune, prune
from secure_maas.audit.query import bounds, get_event, iter_events, latest_events, list_events
from secure_maas.audit.query import read_snapshot as snapshot
from secure_maas.audit.stats import stats as compute_stats
from secure_maas.audit.text import escape_controls
from secure_maas.cli.context import AppContext
from secure_maas.cli.output import emit
from secure_maas.timeutil import isoformat, parse_duration, utcnow

F = TypeVar("F", bound=Callable[..., Any])

LIST_COLUMNS = ["seq", "time", "actor", "action", "model", "decision", "status", "reason"]
ACTIONS = sorted([a.value for a in Action] + [a.value for a in AdminAction])


def _when(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text, now=utcnow())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def filter_options(func: F) -> F:
    """--since/--until/--actor/--model/--action/--decision, shared by the review commands."""
    options = [
        click.option("--since", help="From this time: 1h, 30m, 7d ago, or an ISO date/time."),
        click.option("--until", help="Before this time (same forms as --since)."),
        click.option("--actor", help="Only events by this actor (token subject or OS user)."),
        click.option("--model", help="Only events about this model."),
        click.option("--action", type=click.Choice(ACTIONS), help="Only this action."),
        click.option(
            "--decision",
            type=click.Choice([d.value for d in AuditDecision]),
            help="Only this outcome.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _filter(options: dict[str, Any]) -> AuditFilter:
    return AuditFilter(
        since=_when(options.get("since"), "--since"),
        until=_when(options.get("until"), "--until"),
        actor=options.get("actor"),
        model=options.get("model"),
        action=options.get("action"),
        decision=options.get("decision"),
    )


def _row(record: AuditRecord) -> dict[str, Any]:
    model = record.model
    if model and record.model_version is not None:
        model = f"{model}:{record.model_version}"
    return {
        **record.to_json(),
        "time": isoformat(record.at),
        "model": model,
        "status": record.http_status,
        "reason": record.reason_code,
    }


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@click.group()
def audit() -> None:
    """Review the audit log and prove it has not been tampered with."""


@audit.command("list")
@filter_options
@click.option("--after", type=int, help="Page on: only events with a seq above this one.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.pass_obj
def list_cmd(app: AppContext, /, after: int | None, limit: int, fmt: str, **options: Any) -> None:
    """List events, oldest first, one page at a time (the next page's --after goes to stderr).

    \b
    Example:
        secure-maas audit list --since 1h --decision deny --format json
    """
    audit_filter = _filter(options)
    with snapshot(app.engine()) as connection:
        records = list_events(connection, audit_filter, after=after, limit=limit)
    if fmt == "csv":
        write_csv(records, sys.stdout)
    elif fmt == "json":
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
    else:
        emit([_row(r) for r in records], LIST_COLUMNS, fmt)
    if len(records) == limit:
        click.echo(f"more: --after {records[-1].seq}", err=True)


@audit.command("tail")
@filter_options
@click.option("-n", "--lines", type=click.IntRange(0, 10_000), default=10, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they arrive.")
@click.option(
    "--interval", type=click.FloatRange(0.05, 60), default=1.0, show_default=True, help="Poll s."
)
@click.option("--format", "fmt", type=click.Choice(["line", "json"]), default="line")
@click.pass_obj
def tail(
    app: AppContext, /, lines: int, follow: bool, interval: float, fmt: str, **options: Any
) -> None:
    """Print the newest events, one per line; with -f, keep following the log.

    \b
    Example:
        secure-maas audit tail -f --model iris
    """
    audit_filter = _filter(options)
    engine = app.engine()

    def show(records: list[AuditRecord]) -> None:
        for record in records:
            text = json.dumps(record.to_json()) if fmt == "json" else summary_line(record)
            click.echo(escape_controls(text))
        sys.stdout.flush()

    with snapshot(engine) as connection:
        records = latest_events(connection, audit_filter, count=lines) if lines else []
        last = records[-1].seq if records else _last_seq(connection)
    show(records)
    try:
        while follow:
            time.sleep(interval)
            with snapshot(engine) as connection:
                records = list_events(connection, audit_filter, after=last, limit=1000)
            if records:
                last = records[-1].seq
                show(records)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        _quiet_broken_pipe()


def _last_seq(connection: Connection) -> int:
    return bounds(connection)[1] or 0


@audit.command("show")
@click.argument("seq", type=int)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
def show(app: AppContext, seq: int, fmt: str) -> None:
    """Show every field of event SEQ, its key id and MAC included.

    \b
    Example:
        secure-maas audit show 1234
    """
    with snapshot(app.engine()) as connection:
        record = get_event(connection, seq)
    if record is None:
        raise click.ClickException(f"no audit event with seq {seq}")
    if fmt == "json":
        click.echo(json.dumps(record.to_json(), indent=2))
        return
    for name, value in flat(record).items():
        click.echo(f"{name + ':':<14} {'-' if value is None else escape_controls(str(value))}")


@audit.command("stats")
@filter_options
@click.option("--bucket", default="1h", show_default=True, help="Time bucket: 15m, 1h, 1d...")
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def stats(app: AppContext, /, bucket: str, top: int, fmt: str, **options: Any) -> None:
    """Count events per actor, model, action and decision, and per time bucket.

    \b
    Example:
        secure-maas audit stats --since 7d --bucket 1d
    """
    try:
        size = parse_duration(bucket)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bucket") from None
    if size < timedelta(seconds=1):
        raise click.BadParameter("must be at least 1s", param_hint="--bucket")
    with snapshot(app.engine()) as connection:
        result = compute_stats(connection, _filter(options), bucket=size, top=top)
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"total: {result.total} events")
    for name, rows in result.counts.items():
        click.echo("")
        emit([{name: value, "count": n} for value, n in rows], [name, "count"], "table")
    click.echo("")
    emit(
        [{"start": isoformat(b.start), "total": b.total, **b.decisions} for b in result.buckets],
        ["start", "total", *[d.value for d in AuditDecision]],
        "table",
    )


@audit.command("export")
@filter_options
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "-o", "--output", type=click.File("w", encoding="utf-8"), default="-", help="File (- = stdout)."
)
@click.pass_obj
def export(app: AppContext, /, fmt: str, output: Any, **options: Any) -> None:
    """Stream events with every field, MAC included, as JSON lines or CSV (any size).

    \b
    Example:
        secure-maas audit export --since 30d --format csv -o audit.csv
    """
    with snapshot(app.engine()) as connection:
        records = iter_events(connection, _filter(options))
        try:
            count = (write_csv if fmt == "csv" else write_jsonl)(records, output)
        except BrokenPipeError:
            _quiet_broken_pipe()
            return
    if getattr(output, "name", "<stdout>") != "<stdout>":
        click.echo(f"exported {count} events", err=True)


def _quiet_broken_pipe() -> None:
    """The reader went away (`| head`): stop quietly, as `cat` does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _echo_report(report: VerifyReport) -> None:
    if report.intact:
        span = f"seq {report.first_seq}..{report.last_seq}" if report.checked else "empty log"
        click.echo(
            f"intact: {report.checked} events ({span}), {report.checkpoints} checkpoints, "
            f"keys {report.describe_keys()}"
        )
    else:
        problem = report.problem
        described = problem.describe() if problem else "unknown problem"
        click.echo(f"TAMPERED: {escape_controls(described)}")
        click.echo(f"checked: {report.checked} events verified before it")
    anchor = report.anchor
    click.echo(f"anchor: {anchor.seq}" + (" (start of log)" if anchor.seq == 0 else " (pruned)"))
    for note in report.notes:
        click.echo(f"note: {escape_controls(note)}")
    if report.head is not None:
        click.echo(f"head: {report.head.text()}")


@audit.command("verify")
@click.option(
    "--expect-head",
    metavar="SEQ:MACHEX",
    help="A head printed by an earlier verify: detects a tail truncated since then.",
)
@click.option("--checkpoint", is_flag=True, help="When intact, append a checkpoint event.")
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=min(4, os.cpu_count() or 1),
    show_default="CPUs, at most 4",
    help="Processes for large logs.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
def verify(app: AppContext, expect_head: str | None, checkpoint: bool, jobs: int, fmt: str) -> None:
    """Check every event's MAC and place in the chain; exit 0 if intact, else 1 naming the
    first bad event and why. Needs the audit key(s) and read access only.

    Store the printed head somewhere else and pass it back with --expect-head: that detects
    a truncated tail, which the database alone cannot prove.

    \b
    Example:
        secure-maas audit verify --expect-head 1234:9f86d081884c7d65...
    """
    expected = None
    if expect_head is not None:
        try:
            expected = parse_head(expect_head)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--expect-head") from None
    keys = KeyringAuditKeys(app.keyring())
    engine = app.engine()
    report = verify_database(engine, keys, expected=expected, jobs=jobs)
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _echo_report(report)
    if not report.intact:
        sys.exit(1)
    if checkpoint:
        record = append_checkpoint(engine, keys, actor=_os_user())
        if fmt == "text":
            click.echo(f"checkpoint: event {record.seq}")
            click.echo(f"head: {record.seq}:{record.mac.hex()}")


@audit.command("prune")
@click.option("--before", required=True, help="Remove events before: 90d (ago) or a date.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def prune_cmd(app: AppContext, before: str, dry_run: bool, yes: bool) -> None:
    """Remove events dated before a date; the rest still verifies (a prune event records
    the range removed and the anchor verification starts from).

    \b
    Example:
        secure-maas audit prune --before 365d --yes
    """
    cut = _when(before, "--before")
    if cut is None:  # not reachable: --before is required
        raise click.BadParameter("required", param_hint="--before")
    engine = app.engine()
    with snapshot(engine) as connection:
        plan = plan_prune(connection, cut)
    span = f"seq {plan.first}..{plan.last}" if plan.count else "nothing"
    click.echo(f"events dated before {isoformat(cut)}: {plan.count} ({span})")
    if dry_run:
        return
    if plan.count and not yes:
        click.confirm(f"Remove {plan.count} audit events?", abort=True)
    keys = KeyringAuditKeys(app.keyring())
    result = prune(engine, keys, before=cut, actor=_os_user())
    click.echo(
        f"removed {result.plan.count} events; prune recorded as event {result.record.seq}; "
        f"chain now anchored at {result.new_anchor.seq}"
    )
