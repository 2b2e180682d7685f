"""The one escaping rule: no control, format or separator character survives
it; printable text passes unchanged; different texts stay distinguishable; it holds for audit
events, error messages and log lines alike."""

from __future__ import annotations

import ast
import io
import logging
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from secure_maas.audit import AuditEvent, InvalidAuditEvent
from secure_maas.audit.encoding import canonical_v1
from secure_maas.audit.events import REASON_MAX
from secure_maas.audit.text import EscapingFormatter, escape_controls, quote

#: Categories a terminal or a line-oriented reader acts on: controls (C0, DEL, C1), format
#: characters (bidi overrides, zero-width), surrogates, line and paragraph separators.
UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
HOSTILE = [
    "x\n2026-01-01 forged line\x1b[31m",
    "\r\x00\x07\x7f\x85\x9b",
    "\u2028\u2029\u202e\u2066\u200b\u200d\ufeff\U000e0001",
    "\ud800 lone surrogate",
]


def is_safe(text: str) -> bool:
    return all(unicodedata.category(char) not in UNSAFE for char in text)


any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
printable_text = st.text(st.characters().filter(str.isprintable), max_size=60)


@given(any_text)
@example("".join(HOSTILE))
def test_no_unsafe_character_survives(text: str) -> None:
    assert is_safe(escape_controls(text))
    assert is_safe(quote(text))


@given(printable_text)
@example("naïve 東京 ≤ 3 \\ \"quoted\" 'single' 🙂")
def test_printable_text_is_unchanged(text: str) -> None:
    assert escape_controls(text) == text


@given(any_text)
def test_escaping_is_idempotent(text: str) -> None:
    """A message that becomes an audit reason passes twice: the second pass changes nothing."""
    once = escape_controls(text)
    assert escape_controls(once) == once


@given(any_text.filter(lambda t: "\\" not in t), any_text.filter(lambda t: "\\" not in t))
@example("a\nb", "a\\nb".replace("\\", ""))
def test_different_texts_stay_distinguishable(first: str, second: str) -> None:
    """Without a backslash in the input (which `escape_controls` keeps as it is, to stay
    idempotent), no two texts escape the same."""
    if first != second:
        assert escape_controls(first) != escape_controls(second)


@given(any_text, any_text)
@example("\x1b", "\\x1b")
@example('a"', 'a\\"')
def test_quote_is_injective_and_reads_back(first: str, second: str) -> None:
    """`quote` is a string literal: it reads back to the exact value, so no two values (a raw
    ESC and the text `\\x1b` included) quote the same, and none ends the quotation early."""
    for text in (first, second):
        quoted = quote(text)
        assert quoted.startswith('"') and quoted.endswith('"')
        assert ast.literal_eval(quoted) == text
    if first != second:
        assert quote(first) != quote(second)


def test_escapes_are_spelled_as_python_spells_them() -> None:
    assert escape_controls("a\nb\r\tc\x1b[31m\x85\u2028\u202e\U000e0001") == (
        "a\\nb\\r\\tc\\x1b[31m\\x85\\u2028\\u202e\\U000e0001"
    )
    assert quote('sig"\\\n') == '"sig\\"\\\\\\n"'
    assert quote("x" * 100, limit=5) == '"xxxxx"...'


@pytest.mark.parametrize("hostile", HOSTILE)
def test_audit_events_store_no_raw_control_character(hostile: str) -> None:
    event = AuditEvent(
        action="model:predict",
        actor="alice" + hostile.replace("\x00", "").replace("\ud800", ""),
        model="digits\x1b[2J",
        reason=f"Serving signature name: {hostile} not found",
        reason_code="bad_request\n",
        client="127.0.0.1\u2028",
        request_id="r\x85",
    )
    for name in ("actor", "model", "reason", "reason_code", "client", "request_id"):
        value = getattr(event, name)
        assert type(value) is str and is_safe(value), (name, value)
    assert event.reason == escape_controls(f"Serving signature name: {hostile} not found")
    values = [1, 0, event.request_id, event.actor, "user", "model:predict", event.model, None,
              "allow", event.reason_code, event.reason, None, event.client, None, None, None,
              None, "k"]  # fmt: skip
    assert canonical_v1(values).decode("utf-8")  # the stored text encodes as before


def test_limits_apply_to_the_escaped_text_and_nul_stays_refused_in_names() -> None:
    with pytest.raises(InvalidAuditEvent, match="longer than 64"):
        AuditEvent(action="model:predict", actor="a", model="\x1b" * 20)  # 80 once escaped
    with pytest.raises(InvalidAuditEvent, match="NUL"):
        AuditEvent(action="model:predict", actor="a", model="m\x00")
    # A reason may quote anything a caller sent: escaped, never refused, then cut.
    event = AuditEvent(action="model:predict", actor="a", reason="\x00\ud800" + "\x1b" * 999)
    assert event.reason is not None and event.reason.startswith("\\x00\\ud800\\x1b")
    assert len(event.reason) == REASON_MAX and is_safe(event.reason)


def test_log_lines_are_escaped_and_tracebacks_keep_their_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.audit_text")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("refused %s", "x\nWARNING forged\x1b[31m")
        try:
            raise ValueError("bad\nvalue\x1b[2J")
        except ValueError:
            logger.exception("failed on %s", "\u202eevil")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING refused x\\nWARNING forged\\x1b[31m"
    assert lines[1] == "ERROR failed on \\u202eevil"
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad\\nvalue\\x1b[2J"
    assert all(is_safe(line) for line in lines)


def test_a_chained_traceback_reads_as_the_interpreter_prints_it() -> None:
    formatter = EscapingFormatter()
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("outer\n2026-01-01 INFO forged") from inner
    except RuntimeError as error:
        text = formatter.formatException((RuntimeError, error, error.__traceback__))
    lines = text.split("\n")
    assert lines[0] == "Traceback (most recent call last):"
    assert "KeyError: 'inner'" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines[-1] == "RuntimeError: outer\\n2026-01-01 INFO forged"
    assert not any(line.startswith("2026") for line in lines)
