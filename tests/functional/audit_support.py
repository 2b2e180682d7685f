"""Helpers shared by the audit tests: events, a filled log, and tampering by plain SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.audit import AuditEvent, AuditKeys, StaticAuditKeys, body_digest
from secure_maas.audit.chain import append_events, write_transaction
from secure_maas.audit.models import events_table
from secure_maas.audit.parallel import verify_database
from secure_maas.audit.verify import VerifyReport

START = datetime(2026, 11, 1, tzinfo=UTC)
KEYS = StaticAuditKeys({"audit-test": b"t" * 32}, "audit-test")


def event(i: int, **fields: Any) -> AuditEvent:
    """A realistic prediction event, varied by `i`, an hour after the previous one."""
    values: dict[str, Any] = {
        "action": "model:predict",
        "actor": ("alice", "bob", "carol")[i % 3],
        "model": ("iris", "digits")[i % 2],
        "model_version": 1 + i % 2,
        "decision": "deny" if i % 4 == 0 else "allow",
        "http_status": 403 if i % 4 == 0 else 200,
        "reason_code": "no-rule" if i % 4 == 0 else "rule:1",
        "client": "10.0.0.7",
        "latency_ms": 2.5 + i,
        "rows": 1 + i % 5,
        "body_sha256": body_digest(f"body {i}".encode()),
        "request_id": f"req-{i:05d}",
        "at": START + timedelta(hours=i),
    }
    values.update(fields)
    return AuditEvent(**values)


def fill(
    engine: Engine, count: int, *, keys: AuditKeys = KEYS, start: int = 0, **options: Any
) -> None:
    """Append events `start`..`start + count - 1` in one transaction."""
    events = [event(i) for i in range(start, start + count)]
    write_transaction(
        engine, lambda c: append_events(c, events, keys, now=START + timedelta(days=60), **options)
    )


def sql(engine: Engine, statement: str, **params: Any) -> None:
    """Tamper with the database as an attacker with write access would."""
    with engine.begin() as connection:
        connection.execute(sa.text(statement), params)


def seqs(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(events_table.c.seq).order_by(events_table.c.seq))
        return [int(seq) for seq in rows.scalars()]


def head(engine: Engine) -> tuple[int, bytes]:
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT seq, mac FROM audit_head")).one()
        return int(row.seq), bytes(row.mac)


def check(engine: Engine, keys: AuditKeys = KEYS, **options: Any) -> VerifyReport:
    return verify_database(engine, keys, **options)


def assert_bad(report: VerifyReport, seq: int | None, reason: str) -> None:
    assert not report.intact, report
    assert report.problem is not None
    assert report.problem.seq == seq, report.problem
    assert reason in report.problem.reason, report.problem
