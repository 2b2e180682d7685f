"""Audit tables: the append-only event log and the one-row head of its chain.

`audit_events.seq` is assigned by the writer, not the database: it is contiguous (1, 2, 3, ...)
and part of each event's MAC, so a gap is a deleted event. `audit_head` holds the newest event's
sequence number and MAC; every append locks that row, which serialises all writers of all
processes and instances into one chain, and lets `verify` notice a truncated tail.

`audit_events.at` is text: the canonical time text (`audit.times`), the same on both databases,
so what is MAC'd (encoding 2), stored and compared by filters and prune is one string.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from secure_maas.audit.encoding import FIELDS_V2
from secure_maas.audit.events import LIMITS
from secure_maas.audit.times import TIME_TEXT_LENGTH, canonical_time, read_time
from secure_maas.db.base import Base, IdType, UTCDateTime

HEAD_ID = 1
MAC_BYTES = 32


class CanonicalTime(TypeDecorator[datetime]):
    """An aware datetime in Python, its canonical time text in the database.

    Every value bound to the column, a filter's bound included, goes through `canonical_time`,
    so `at >= since` compares canonical texts on both databases. A stored text in another
    form (written around the writer) is still read, so a review command shows the event;
    `verify` refuses it and names the event.
    """

    impl = sa.String(TIME_TEXT_LENGTH)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        return None if value is None else canonical_time(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> datetime | None:
        return None if value is None else read_time(value)


class AuditEventRow(Base):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=False)
    encoding: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False)
    at: Mapped[datetime] = mapped_column(CanonicalTime, nullable=False, index=True)
    request_id: Mapped[str | None] = mapped_column(sa.String(LIMITS["request_id"]))
    actor: Mapped[str] = mapped_column(sa.String(LIMITS["actor"]), nullable=False, index=True)
    actor_kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    action: Mapped[str] = mapped_column(sa.String(LIMITS["action"]), nullable=False, index=True)
    model: Mapped[str | None] = mapped_column(sa.String(LIMITS["model"]), index=True)
    model_version: Mapped[int | None] = mapped_column(sa.BigInteger)
    decision: Mapped[str] = mapped_column(sa.String(8), nullable=False)
    reason_code: Mapped[str | None] = mapped_column(sa.String(LIMITS["reason_code"]))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    http_status: Mapped[int | None] = mapped_column(sa.BigInteger)
    client: Mapped[str | None] = mapped_column(sa.String(LIMITS["client"]))
    latency_us: Mapped[int | None] = mapped_column(sa.BigInteger)
    rows: Mapped[int | None] = mapped_column(sa.BigInteger)
    body_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    detail: Mapped[str | None] = mapped_column(sa.Text)
    key_id: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    mac: Mapped[bytes] = mapped_column(sa.LargeBinary(MAC_BYTES), nullable=False)


class AuditHead(Base):
    __tablename__ = "audit_head"
    __table_args__ = (sa.CheckConstraint(f"id = {HEAD_ID}", name="single_row"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    mac: Mapped[bytes] = mapped_column(sa.LargeBinary(MAC_BYTES), nullable=False)
    key_id: Mapped[str | None] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


events_table: sa.Table = AuditEventRow.__table__  # type: ignore[assignment]
head_table: sa.Table = AuditHead.__table__  # type: ignore[assignment]

#: Columns in the order of the canonical encoding (`encoding.FIELDS_V2`, the one declaration
#: of the event's fields and their order), `key_id` last.
CANONICAL_COLUMNS: tuple[str, ...] = tuple(name for name, _kind in FIELDS_V2)
