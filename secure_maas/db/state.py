"""Change counters: how every worker of every instance notices a change within a second.

A writer that changes shared state (rules, principals, revocations, model labels) bumps the
counter of its scope in the same transaction; readers poll `current()` (one indexed row read) and
rebuild their caches only when the number moved. This is cheaper than notifications and works
identically on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from secure_maas.db.base import Base, UTCDateTime
from secure_maas.db.dialect import insert
from secure_maas.timeutil import utcnow


class StateVersion(Base):
    __tablename__ = "state_versions"

    scope: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


def bump(session: Session, scope: str) -> int:
    """Increase `scope`'s counter inside the caller's transaction and return the new value.

    One `INSERT ... ON CONFLICT DO UPDATE` statement, so concurrent writers on either backend
    each get a distinct number and a missing row is created without a race.
    """
    now = utcnow()
    upsert = (
        insert(session, StateVersion)
        .values(scope=scope, version=1, updated_at=now)
        .on_conflict_do_update(
            index_elements=[StateVersion.scope],
            set_={"version": StateVersion.version + 1, "updated_at": now},
        )
        .returning(StateVersion.version)
    )
    return int(session.execute(upsert).scalar_one())


def current(session: Session, scope: str) -> int:
    """The counter of `scope`, 0 if nothing ever changed it."""
    value = session.execute(
        sa.select(StateVersion.version).where(StateVersion.scope == scope)
    ).scalar_one_or_none()
    return int(value or 0)
