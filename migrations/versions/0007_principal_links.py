"""External subjects are namespaced by issuer; `principal_links` joins one to a local principal.

An external identity provider's `sub` used to be looked up as a local principal's name, so an
external token with `sub=bob` held local bob's roles and grants (OIDC makes `sub` unique per
issuer only). It is now the principal `ext:<alias>:<sub>` (see `secure_maas/auth/external.py`)
and speaks for a local principal only through a row here, which an admin adds with
`secure-maas principal link` and removes with `principal unlink` (or by removing the principal:
ON DELETE CASCADE). `external_subject` is unique: one external subject speaks for at most one
principal. No row is written here: a deployment that relied on the old matching links each such
subject explicitly (until then its external tokens get only what rules name it by its new name:
fail closed).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "principal_links",
        sa.Column("id", ID, nullable=False),
        sa.Column("external_subject", sa.String(length=128), nullable=False),
        sa.Column("principal_id", ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_principal_links_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_principal_links")),
        sa.UniqueConstraint("external_subject", name=op.f("uq_principal_links_external_subject")),
    )
    with op.batch_alter_table("principal_links", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_principal_links_principal_id"), ["principal_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("principal_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_principal_links_principal_id"))

    op.drop_table("principal_links")
