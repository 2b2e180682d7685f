"""Audit events are checked when built; time and head arguments parse as documented, and any
other text is a `ValueError` (never an `OverflowError`, nor a digit that is not ASCII read as
one)."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_maas.actions import Action, AdminAction
from secure_maas.audit import (
    ActorKind,
    AuditDecision,
    AuditEvent,
    InvalidAuditEvent,
    body_digest,
    parse_head,
    parse_time,
)
from secure_maas.audit.chain import GENESIS_MAC, Head, seal
from secure_maas.audit.events import REASON_MAX, AuditRecord
from secure_maas.timeutil import MAX_DURATION

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_a_valid_event_keeps_plain_strings() -> None:
    event = AuditEvent(
        action=Action.MODEL_PREDICT,
        actor="alice",
        actor_kind=ActorKind.USER,
        decision=AuditDecision.DENY,
        body_sha256=body_digest(b'{"instances": [[1, 2]]}'),
        latency_ms=12.3456,
    )
    assert type(event.action) is str and event.action == "model:predict"
    assert type(event.decision) is str and event.decision == "deny"
    assert event.latency_us == 12346
    assert len(event.body_sha256 or "") == 64


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "model:delete"}, "unknown action"),
        ({"actor_kind": "robot"}, "unknown actor kind"),
        ({"decision": "maybe"}, "unknown decision"),
        ({"actor": ""}, "actor must not be empty"),
        ({"actor": "a" * 129}, "actor is longer than 128"),
        ({"model": "m\x00"}, "NUL"),
        ({"client": "\ud800"}, "not valid Unicode"),
        ({"body_sha256": "ABC"}, "64 lowercase hex"),
        ({"http_status": True}, "http_status must be an integer"),
        ({"rows": 2**63}, "out of range"),
        ({"latency_ms": -1.0}, "non-negative"),
        ({"at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"detail": {"k": 1.5}}, "only str or int"),
    ],
)
def test_malformed_events_are_refused(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"action": "model:predict", "actor": "alice", **fields}
    with pytest.raises(InvalidAuditEvent, match=message):
        AuditEvent(**values)  # type: ignore[arg-type]


def test_long_reasons_are_cut_not_refused() -> None:
    event = AuditEvent(action=AdminAction.TRAIN_RUN, actor="ml", reason="x" * 5000)
    assert event.reason is not None and len(event.reason) == REASON_MAX
    assert event.reason.endswith("...")


def test_seal_stamps_time_only_when_the_event_has_none() -> None:
    stamped = seal(
        AuditEvent(action="model:list", actor="a"),
        seq=1,
        at=NOW,
        key_id="k",
        key=b"k" * 32,
        previous=GENESIS_MAC,
    )
    own = seal(
        AuditEvent(action="model:list", actor="a", at=NOW - timedelta(hours=1)),
        seq=1,
        at=NOW,
        key_id="k",
        key=b"k" * 32,
        previous=GENESIS_MAC,
    )
    assert stamped.at == NOW and own.at == NOW - timedelta(hours=1)
    assert stamped.mac != own.mac


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", NOW - timedelta(hours=1)),
        ("30m", NOW - timedelta(minutes=30)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T10:30:00Z", datetime(2026, 11, 1, 10, 30, tzinfo=UTC)),
        ("2026-11-01T10:30:00+02:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T10:30", datetime(2026, 11, 1, 10, 30, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1y", "", "2026-13-01"])
def test_parse_time_refuses_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="1h, 30m, 7d"):
        parse_time(text, now=NOW)


@pytest.mark.parametrize(
    "text",
    [
        "999999999d",
        "99999999999999999999999d",
        "9" * 5000 + "s",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "\u0661h",  # ARABIC-INDIC DIGIT ONE: `\d` matches it, `int()` reads 1
        "\uff11h",  # FULLWIDTH DIGIT ONE
        "²h",
        "1h\x00",
    ],
)
def test_times_out_of_range_or_not_ascii_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_time(text, now=NOW)
    assert "\x00" not in str(caught.value) and len(str(caught.value)) < 200


def test_the_edges_that_a_datetime_holds_are_accepted() -> None:
    assert parse_time("0001-01-01T00:00:00Z", now=NOW) == datetime(1, 1, 1, tzinfo=UTC)
    assert parse_time("9999-12-31T23:59:59Z", now=NOW).year == 9999
    assert parse_time("36525d", now=NOW) == NOW - MAX_DURATION
    assert parse_time(" 7d\t", now=NOW) == NOW - timedelta(days=7)


@given(st.text(max_size=30))
def test_any_text_is_a_time_or_a_value_error(text: str) -> None:
    try:
        moment = parse_time(text, now=NOW)
    except ValueError:
        return
    assert moment.tzinfo is UTC or moment.utcoffset() == timedelta(0)


def test_parse_head_round_trips() -> None:
    head = Head(42, bytes(range(32)))
    assert parse_head(head.text()) == Head(42, bytes(range(32)))
    for bad in ("42", "42:abcd", "x:" + "00" * 32, "-1:" + "00" * 32):
        with pytest.raises(ValueError, match="SEQ:MACHEX"):
            parse_head(bad)


def test_the_record_the_table_and_the_exports_follow_the_one_field_declaration() -> None:
    from dataclasses import fields as record_fields

    from secure_maas.audit.encoding import FIELDS_V2
    from secure_maas.audit.export import EXPORT_COLUMNS
    from secure_maas.audit.models import CANONICAL_COLUMNS, events_table
    from secure_maas.audit.query import RECORD_COLUMNS

    declared = tuple(name for name, _kind in FIELDS_V2)
    assert declared == CANONICAL_COLUMNS
    assert tuple(f.name for f in record_fields(AuditRecord)) == RECORD_COLUMNS
    assert (*declared, "mac", "encoding") == RECORD_COLUMNS
    assert set(events_table.c.keys()) == set(RECORD_COLUMNS)
    assert EXPORT_COLUMNS[1] == "time" and EXPORT_COLUMNS[13] == "latency_ms"
    assert len(EXPORT_COLUMNS) == len(RECORD_COLUMNS)
