"""Budgets follow the data: dataset identities, shared budgets, split keys, public ranges.

`datasets` gains the identity of its data (an order-independent hash of its feature vectors;
NULL on rows registered before, whose fingerprint stays the order-dependent v1), a random key
for the record-local train/test split (filled for existing rows here), the dataset whose budget
it shares (`budget_owner_id`, with `epsilon_budget` and `delta` then NULL), whether runs without
a DP guarantee may use it (`allow_non_private`, false for existing rows: fail closed) and the
public value ranges declared at registration. `dataset_identities` holds each identity once.
`model_versions` gains the preprocessing a DP guarantee covers and the noise multiplier of its
statistics' release. A version published as DP before this revision whose preprocessing no
guarantee covers (exact standardisation: what `auto` meant for every dataset without a public
range) is relabelled `non-private`, since its label was not true; one scaled by a public range
(digits) or not at all keeps its label and gets its preprocessing recorded. A downgrade leaves
the relabelled versions non-private.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ONE_BUDGET = (
    "(budget_owner_id IS NULL AND epsilon_budget IS NOT NULL AND delta IS NOT NULL) OR "
    "(budget_owner_id IS NOT NULL AND epsilon_budget IS NULL AND delta IS NULL)"
)


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("identity", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("budget_owner_id", ID, nullable=True))
        batch_op.add_column(sa.Column("allow_non_private", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("feature_range", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("split_key", sa.String(length=64), nullable=True))
        batch_op.alter_column("epsilon_budget", existing_type=sa.Float(), nullable=True)
        batch_op.alter_column("delta", existing_type=sa.Float(), nullable=True)
        batch_op.create_foreign_key(
            batch_op.f("fk_datasets_budget_owner_id_datasets"),
            "datasets",
            ["budget_owner_id"],
            ["id"],
            ondelete="RESTRICT",
        )
        batch_op.create_check_constraint(batch_op.f("ck_datasets_one_budget"), ONE_BUDGET)

    datasets = sa.table(
        "datasets",
        sa.column("id", ID),
        sa.column("split_key", sa.String),
        sa.column("allow_non_private", sa.Boolean),
    )
    connection = op.get_bind()
    for (row_id,) in connection.execute(sa.select(datasets.c.id)).all():
        connection.execute(
            datasets.update()
            .where(datasets.c.id == row_id)
            .values(split_key=secrets.token_hex(32), allow_non_private=False)
        )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.alter_column("split_key", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("allow_non_private", existing_type=sa.Boolean(), nullable=False)

    op.create_table(
        "dataset_identities",
        sa.Column("identity", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_dataset_identities_dataset_id_datasets"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("identity", name=op.f("pk_dataset_identities")),
    )

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dp_preprocessing", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("dp_stats_noise_multiplier", sa.Float(), nullable=True))
    _relabel_uncovered_dp_versions(connection)


#: Bundled datasets with a public value range before this revision (what `auto` scaled by it).
PUBLIC_RANGE_SOURCES = ("sklearn:digits",)


def _relabel_uncovered_dp_versions(connection: sa.Connection) -> None:
    models = sa.table("models", sa.column("id", ID), sa.column("name", sa.String))
    versions = sa.table(
        "model_versions",
        sa.column("id", ID),
        sa.column("model_id", ID),
        sa.column("version", sa.Integer),
        sa.column("privacy", sa.String),
        sa.column("dp_preprocessing", sa.String),
    )
    runs = sa.table(
        "training_runs",
        sa.column("dataset_id", ID),
        sa.column("model_name", sa.String),
        sa.column("model_version", sa.Integer),
        sa.column("status", sa.String),
        sa.column("config", sa.JSON),
    )
    datasets = sa.table("datasets", sa.column("id", ID), sa.column("source", sa.Text))
    found = connection.execute(
        sa.select(versions.c.id, runs.c.config, datasets.c.source)
        .select_from(versions)
        .join(models, models.c.id == versions.c.model_id)
        .outerjoin(
            runs,
            (runs.c.model_name == models.c.name)
            & (runs.c.model_version == versions.c.version)
            & (runs.c.status == "finished"),
        )
        .outerjoin(datasets, datasets.c.id == runs.c.dataset_id)
        .where(versions.c.privacy == "dp", versions.c.dp_preprocessing.is_(None))
    ).all()
    for version_id, config, source in found:
        asked = (config or {}).get("preprocessing", "auto")
        if asked == "auto":
            asked = "public-range" if source in PUBLIC_RANGE_SOURCES else "standardize"
        change: dict[str, str] = (
            {"dp_preprocessing": asked}
            if asked in ("public-range", "none")
            else {"privacy": "non-private"}
        )
        connection.execute(versions.update().where(versions.c.id == version_id).values(**change))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("dp_stats_noise_multiplier")
        batch_op.drop_column("dp_preprocessing")

    op.drop_table("dataset_identities")

    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_datasets_one_budget"), type_="check")
    # The old schema has no shared budgets: a sharing row gets a copy of its owner's (ε, δ).
    op.execute(
        "UPDATE datasets SET "
        "epsilon_budget = (SELECT o.epsilon_budget FROM datasets o "
        "WHERE o.id = datasets.budget_owner_id), "
        "delta = (SELECT o.delta FROM datasets o WHERE o.id = datasets.budget_owner_id) "
        "WHERE budget_owner_id IS NOT NULL"
    )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_datasets_budget_owner_id_datasets"), type_="foreignkey"
        )
        batch_op.alter_column("delta", existing_type=sa.Float(), nullable=False)
        batch_op.alter_column("epsilon_budget", existing_type=sa.Float(), nullable=False)
        batch_op.drop_column("split_key")
        batch_op.drop_column("feature_range")
        batch_op.drop_column("allow_non_private")
        batch_op.drop_column("budget_owner_id")
        batch_op.drop_column("identity")
