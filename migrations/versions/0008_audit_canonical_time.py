"""Audit times are one canonical text: `audit_events.at` becomes `2026-12-02T17:21:01.123456Z`.

Filters (`audit list --since`, `/admin/audit`) and `audit prune` compared `at` as the database
stored it: on SQLite a text in whatever form was written, so an event whose time was rewritten
to the same instant in another offset still verified (encoding 1 MACs the instant) but dropped
out of `--since` and moved where prune cut. From here `at` is text in one form everywhere (UTC,
microseconds, `Z`; see `secure_maas/audit/times.py`): new events MAC that text (encoding 2) and
`verify` refuses any other spelling whatever the encoding.

Existing events cannot be re-MAC'd here (a migration has no audit key, and must not), and need
not be: encoding 1 MACs the instant, which the canonical text keeps, so this rewrites every
stored time into the canonical text and old events keep verifying under encoding 1. A time
already rewritten to another spelling of the same instant is normalised (nothing is lost: its
MAC never covered the spelling); a text that names no instant is left as it is, and `verify`
names it. PostgreSQL converts in one statement; SQLite rebuilds the table (batch mode) and
rewrites the texts, the usual SQLAlchemy form by one statement, any other form row by row.

Downgrade turns the text back into a timestamp; events written with encoding 2 then read as
an unknown encoding to the older release's `verify`, so downgrade only to read old events.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEXT = sa.String(length=27)
#: SQLAlchemy's SQLite form of a UTC datetime: `2026-12-02 17:21:01.123456`.
_D = "[0-9]"
_SQLITE_FORM = f"{_D * 4}-{_D * 2}-{_D * 2} {_D * 2}:{_D * 2}:{_D * 2}.{_D * 6}"
_CANONICAL_FORM = _SQLITE_FORM.replace(" ", "T") + "Z"


def _canonical(text: str) -> str | None:
    """The canonical text of any ISO 8601 time (naive: UTC), or None when it names none."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE audit_events ALTER COLUMN at TYPE VARCHAR(27) USING "
            """to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
        )
        return
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column(
            "at", existing_type=sa.DateTime(timezone=True), type_=TEXT, existing_nullable=False
        )
    op.execute(
        f"UPDATE audit_events SET at = replace(at, ' ', 'T') || 'Z' WHERE at GLOB '{_SQLITE_FORM}'"
    )
    others = bind.execute(
        sa.text(
            "SELECT seq, at FROM audit_events WHERE typeof(at) <> 'text' "
            f"OR NOT at GLOB '{_CANONICAL_FORM}'"
        )
    ).all()
    for seq, stored in others:
        fixed = _canonical(stored) if isinstance(stored, str) else None
        if fixed is not None:
            bind.execute(
                sa.text("UPDATE audit_events SET at = :at WHERE seq = :seq"),
                {"at": fixed, "seq": seq},
            )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE audit_events ALTER COLUMN at TYPE TIMESTAMP WITH TIME ZONE "
            "USING at::timestamptz"
        )
        return
    op.execute(
        "UPDATE audit_events SET at = replace(substr(at, 1, 26), 'T', ' ') "
        f"WHERE at GLOB '{_CANONICAL_FORM}'"
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column(
            "at", existing_type=TEXT, type_=sa.DateTime(timezone=True), existing_nullable=False
        )
