"""Review queries in the library: filters, keyset paging, streaming and stats on both databases."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from secure_maas.audit import AuditFilter
from secure_maas.audit.export import write_jsonl
from secure_maas.audit.query import (
    bounds,
    get_event,
    iter_events,
    latest_events,
    list_events,
    read_snapshot,
)
from secure_maas.audit.stats import stats
from tests.functional.audit_support import KEYS, START, fill


def test_filters_and_pages(migrated_engine: Engine) -> None:
    fill(migrated_engine, 30)
    with read_snapshot(migrated_engine) as connection:
        assert bounds(connection) == (1, 30, 30)
        everything = AuditFilter()
        first = list_events(connection, everything, limit=10)
        second = list_events(connection, everything, after=first[-1].seq, limit=10)
        assert [r.seq for r in first + second] == list(range(1, 21))
        window = AuditFilter(
            since=START + timedelta(hours=10), until=START + timedelta(hours=20), actor="alice"
        )
        assert [r.seq for r in list_events(connection, window)] == [13, 16, 19]
        denied_iris = AuditFilter(model="iris", decision="deny", action="model:predict")
        assert [r.seq for r in iter_events(connection, denied_iris)] == [
            1,
            5,
            9,
            13,
            17,
            21,
            25,
            29,
        ]
        assert [r.seq for r in latest_events(connection, everything, count=3)] == [28, 29, 30]
        record = get_event(connection, 7)
        assert record is not None and record.actor == "alice" and record.latency_ms == 8.5
        assert record.at == START + timedelta(hours=6)
        assert get_event(connection, 31) is None


def test_streaming_reads_every_event(migrated_engine: Engine) -> None:
    fill(migrated_engine, 2500)
    with read_snapshot(migrated_engine) as connection:
        seen = [r.seq for r in iter_events(connection, AuditFilter(), after=100)]
    assert seen == list(range(101, 2501))


def test_stats_group_in_the_database(migrated_engine: Engine) -> None:
    fill(migrated_engine, 24)
    with read_snapshot(migrated_engine) as connection:
        result = stats(connection, AuditFilter(model="digits"), bucket=timedelta(hours=12), top=2)
    assert result.total == 12
    assert result.counts["model"] == [("digits", 12)]
    assert len(result.counts["actor"]) == 2
    assert dict(result.counts["decision"]) == {"allow": 12}
    assert [(b.start, b.total) for b in result.buckets] == [
        (START, 6),
        (START + timedelta(hours=12), 6),
    ]


def _independent_encoding(event: dict[str, object]) -> bytes:
    """Versions 1 and 2 written from their documentation alone, as an auditor's own tool would:
    version 2 takes the exported time text as it is, version 1 its microseconds."""
    moment = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
    latency = event["latency_ms"]
    detail = event["detail"]
    version = event["encoding"]
    assert version in (1, 2)
    fields: list[object] = [
        event["seq"],
        event["time"]
        if version == 2
        else (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1),
        *(event[name] for name in ("request_id", "actor", "actor_kind", "action", "model")),
        event["model_version"],
        *(event[name] for name in ("decision", "reason_code", "reason")),
        event["http_status"],
        event["client"],
        None if latency is None else round(float(str(latency)) * 1000),
        event["rows"],
        event["body_sha256"],
        None if detail is None else json.dumps(detail, sort_keys=True, separators=(",", ":")),
        event["key_id"],
    ]
    out = b"secure-maas/audit/%d\n" % version
    for value in fields:
        if value is None:
            out += b"~"
        elif isinstance(value, int):
            out += b"i%d;" % value
        else:
            data = str(value).encode()
            out += b"s%d:" % len(data) + data
    return out


def test_an_export_is_verifiable_with_the_key_alone(migrated_engine: Engine) -> None:
    fill(migrated_engine, 20, checkpoint_every=6)
    stream = io.StringIO()
    with read_snapshot(migrated_engine) as connection:
        write_jsonl(iter_events(connection, AuditFilter()), stream)
    _key_id, key = KEYS.active()
    previous = bytes(32)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 23
    for line in lines:
        exported = json.loads(line)
        expected = hmac.new(key, _independent_encoding(exported) + previous, hashlib.sha256)
        assert expected.hexdigest() == exported["mac"], exported["seq"]
        previous = bytes.fromhex(exported["mac"])
