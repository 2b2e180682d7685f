"""Access rules may require finite inputs: `access_rules.finite_inputs`.

An allow rule with `finite_inputs` true holds only for requests whose float inputs are all
finite (no NaN or ±Infinity, which the prediction APIs accept as TF Serving does). Existing
rules keep allowing what they allowed: the column defaults to false.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "access_rules",
        sa.Column("finite_inputs", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("access_rules") as batch:
        batch.drop_column("finite_inputs")
