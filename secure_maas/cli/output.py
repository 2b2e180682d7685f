"""Rendering rows for people (`table`) or programs (`json`), shared by every list command.

A table cell may hold text a caller chose (a model name, an audit reason, possibly stored raw by
an older release): it is printed escaped (`audit.text.escape_controls`), so a cell can neither
break the table's lines nor send escape sequences to the terminal. JSON is ASCII-escaped by
`json.dumps` already.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from secure_maas.audit.text import escape_controls

F = TypeVar("F", bound=Callable[..., Any])


def format_option(func: F) -> F:
    """The `--format table|json` option every list command takes."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> None:
    """Print `rows` as an aligned table or as a JSON array (all keys, not only `columns`)."""
    if fmt == "json":
        click.echo(json.dumps(list(rows), indent=2, default=str))
        return
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    click.echo(header.rstrip())
    for line in cells:
        text = "  ".join(value.ljust(w) for value, w in zip(line, widths, strict=True))
        click.echo(text.rstrip())


def _cell(value: Any) -> str:
    return "-" if value is None else escape_controls(str(value))
