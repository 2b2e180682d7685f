"""Access control: principals, roles, rules, quota counters, issued tokens.

`principals`, `roles` and `principal_roles` say who holds which role; `access_rules` holds the
allow/deny rules, unique by `rule_key` (a digest of effect, subject, model scope and actions) so
two workers cannot store the same rule twice; `quota_counters` is one row per subject, model,
period and window start, updated by an atomic conditional upsert from every worker (quotas are
shared across instances through it); `issued_tokens` records tokens by `jti` only, never the
token, with their revocation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "access_rules",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("rule_key", sa.String(length=64), nullable=False),
        sa.Column("effect", sa.String(length=8), nullable=False),
        sa.Column("subject", sa.String(length=140), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("model_label", sa.String(length=64), nullable=True),
        sa.Column("actions", sa.String(length=255), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_rows", sa.Integer(), nullable=True),
        sa.Column("max_epsilon", sa.Float(), nullable=True),
        sa.Column("quotas", sa.JSON(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_rules")),
        sa.UniqueConstraint("rule_key", name=op.f("uq_access_rules_rule_key")),
    )
    with op.batch_alter_table("access_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_access_rules_subject"), ["subject"], unique=False)

    op.create_table(
        "issued_tokens",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("roles", sa.String(length=1024), nullable=True),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_by", sa.String(length=128), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issued_tokens")),
        sa.UniqueConstraint("jti", name=op.f("uq_issued_tokens_jti")),
    )
    with op.batch_alter_table("issued_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_issued_tokens_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_issued_tokens_subject"), ["subject"], unique=False)

    op.create_table(
        "principals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_principals")),
        sa.UniqueConstraint("name", name=op.f("uq_principals_name")),
    )
    op.create_table(
        "quota_counters",
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("request_count", sa.BigInteger(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "subject", "model", "period", "window_start", name=op.f("pk_quota_counters")
        ),
    )
    with op.batch_alter_table("quota_counters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_quota_counters_window_start"), ["window_start"], unique=False
        )

    op.create_table(
        "roles",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roles")),
        sa.UniqueConstraint("name", name=op.f("uq_roles_name")),
    )
    op.create_table(
        "principal_roles",
        sa.Column(
            "principal_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("role_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_principal_roles_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["roles.id"],
            name=op.f("fk_principal_roles_role_id_roles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("principal_id", "role_id", name=op.f("pk_principal_roles")),
    )
    with op.batch_alter_table("principal_roles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_principal_roles_role_id"), ["role_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("principal_roles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_principal_roles_role_id"))

    op.drop_table("principal_roles")
    op.drop_table("roles")
    with op.batch_alter_table("quota_counters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quota_counters_window_start"))

    op.drop_table("quota_counters")
    op.drop_table("principals")
    with op.batch_alter_table("issued_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_issued_tokens_subject"))
        batch_op.drop_index(batch_op.f("ix_issued_tokens_expires_at"))

    op.drop_table("issued_tokens")
    with op.batch_alter_table("access_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_access_rules_subject"))

    op.drop_table("access_rules")
