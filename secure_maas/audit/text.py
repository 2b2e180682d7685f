"""Untrusted text made safe to store, show and log: the one escaping rule of the service.

Callers choose what they send: a signature name, a model name in a path, a JSON key. Echoed
raw into an error message, an audit record or a log line, a newline forges a line, `ESC [`
drives the reader's terminal, U+202E reverses what an auditor reads. So every character that
`str.isprintable()` rejects (C0 and C1 controls, DEL, format characters such as bidi overrides
and zero-width joiners, line and paragraph separators, surrogates, unassigned and private-use
code points, and every space but U+0020) is written as Python writes it in a string literal:
`\\n`, `\\x1b`, `\\u202e`, `\\U000e0001`. Printable text, however non-ASCII, is left alone.

Two spellings, for two jobs:
- `escape_controls` for whole texts (messages, stored fields, printed lines). It is idempotent,
  so text that passes several layers (a message that becomes an audit reason) is escaped once
  in effect. The price: a backslash is kept as it is, so a raw ESC and the four characters
  `\\x1b` read the same; text without a backslash is never ambiguous.
- `quote` for one caller-supplied value inside a message: quoted, with `\\` and `"` escaped as
  well, so no two values read the same and none can end the quotation early.
"""

from __future__ import annotations

import logging
import traceback
from functools import lru_cache

__all__ = ["EscapingFormatter", "escape_controls", "quote"]

_QUOTED = {"\\": "\\\\", '"': '\\"'}


@lru_cache(maxsize=1024)
def _escape(char: str) -> str:
    """The literal spelling of one unprintable character (`repr` without its quotes)."""
    return repr(char)[1:-1]


def escape_controls(text: str) -> str:
    """`text` with every unprintable character spelled out; `text` itself when it has none."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def quote(text: str, *, limit: int | None = None) -> str:
    """`text` as a double-quoted literal for a message: `"x\\n\\x1b[31m"`.

    With `limit`, only the first `limit` characters are shown, followed by `...` after the
    closing quote (a caller's value may be megabytes long).
    """
    shown = text if limit is None or len(text) <= limit else text[:limit]
    body = "".join(
        _QUOTED.get(char) or (char if char.isprintable() else _escape(char)) for char in shown
    )
    return f'"{body}"' + ("" if shown is text else "...")


class EscapingFormatter(logging.Formatter):
    """A log formatter that escapes what a log line holds, so a message formatted from request
    data cannot forge a line or reach the terminal.

    A traceback keeps its own line breaks (frames, the `Traceback` header, the chaining
    sentences: the interpreter's text), while each exception's message, which may quote
    anything, is escaped as one line.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        kind, error, tb = ei
        if kind is None or error is None:
            return super().formatException(ei)
        lines: list[str] = []
        for chunk in traceback.format_exception(kind, error, tb):
            if chunk.startswith((" ", "\n")) or chunk == _TRACEBACK_HEADER:
                lines.extend(escape_controls(line) for line in chunk.rstrip("\n").split("\n"))
            else:  # "ValueError: <message>" or a note: what the program was told
                lines.append(escape_controls(chunk.removesuffix("\n")))
        return "\n".join(lines)

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(escape_controls(line) for line in stack_info.split("\n"))


_TRACEBACK_HEADER = "Traceback (most recent call last):\n"
