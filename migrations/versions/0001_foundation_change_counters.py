"""Foundation: change counters.

`state_versions` holds one monotonically increasing counter per scope (rules, principals,
revocations, models). Writers bump it in the same transaction as their change; every worker polls
it to refresh its caches within a second (invariant 7).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "state_versions",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_state_versions")),
    )


def downgrade() -> None:
    op.drop_table("state_versions")
