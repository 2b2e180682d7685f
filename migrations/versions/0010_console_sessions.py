"""The web console's sessions: `console_sessions`.

One row per signed-in browser, keyed by the SHA-256 of the random session id its cookie carries
(the id itself is never stored, nor the bearer token pasted at sign-in): the subject, roles,
token id (`jti`), issuer and expiry the verifier found in that token, when it was made and
last used. Rows are deleted at sign-out and when found expired, idle, revoked or disabled.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", ID, nullable=False),
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("roles", sa.String(length=1024), nullable=False),
        sa.Column("token_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=256), nullable=False),
        sa.Column("external", sa.Boolean(), nullable=False),
        sa.Column("external_subject", sa.String(length=128), nullable=True),
        sa.Column("claim_roles", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
        sa.UniqueConstraint("id_hash", name=op.f("uq_console_sessions_id_hash")),
    )
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_console_sessions_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_console_sessions_subject"), ["subject"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_console_sessions_token_id"), ["token_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_console_sessions_token_id"))
        batch_op.drop_index(batch_op.f("ix_console_sessions_subject"))
        batch_op.drop_index(batch_op.f("ix_console_sessions_expires_at"))

    op.drop_table("console_sessions")
