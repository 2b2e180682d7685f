"""`secure-maas dataset`: register training data with a privacy budget, list, show.

The data is read to fingerprint it and never copied: training reads the source again and
refuses it if the fingerprint changed. The training modules (dp_accounting, scikit-learn) are
imported inside the commands, so `secure-maas --help` does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from secure_maas.audit import KeyringAuditKeys
from secure_maas.cli.context import AppContext
from secure_maas.cli.output import emit, format_option
from secure_maas.cli.recording import os_user
from secure_maas.db.session import session_factory, session_scope
from secure_maas.timeutil import isoformat
from secure_maas.training.models import RegisteredDataset

if TYPE_CHECKING:
    from secure_maas.training import ledger

LIST_COLUMNS = ["name", "source", "n", "classes", "epsilon_budget", "delta", "spent", "remaining"]


def dataset_row(row: RegisteredDataset, spend: ledger.Spend | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": row.name,
        "source": row.source,
        "label_column": row.label_column,
        "fingerprint": row.fingerprint,
        "n": row.n,
        "feature_shape": list(row.feature_shape),
        "classes": len(row.classes),
        "class_names": list(row.classes),
        "epsilon_budget": row.epsilon_budget,
        "delta": row.delta,
        "created_by": row.created_by,
        "created_at": isoformat(row.created_at),
    }
    if spend is not None:
        data["spent"] = spend.epsilon_rdp
        data["remaining"] = spend.remaining
    return data


@click.group()
def dataset() -> None:
    """Register training data with a privacy budget (ε, δ), list and show it."""


@dataset.command("register")
@click.argument("name")
@click.option(
    "--source",
    required=True,
    help="csv:PATH, npz:PATH (arrays x and y) or sklearn:digits|breast_cancer|wine.",
)
@click.option("--label-column", help="The label column of a csv: source.")
@click.option(
    "--epsilon-budget",
    type=float,
    required=True,
    help="Total ε every DP training run on this data may spend together.",
)
@click.option(
    "--delta",
    type=float,
    help="δ of every run and of their composition; must be < 1/n. [default: min(1e-5, 0.1/n)]",
)
@click.pass_obj
def register(
    app: AppContext,
    name: str,
    source: str,
    label_column: str | None,
    epsilon_budget: float,
    delta: float | None,
) -> None:
    """Register NAME: read SOURCE once, record its fingerprint, size, shape, classes and budget.

    The data itself is not stored anywhere; training reads SOURCE again.

    \b
    Example:
        secure-maas dataset register digits --source sklearn:digits --epsilon-budget 6
        secure-maas dataset register churn --source csv:data/churn.csv \\
            --label-column churned --epsilon-budget 2 --delta 1e-6
    """
    from secure_maas.training import catalog

    registered = catalog.register_dataset(
        app.engine(),
        KeyringAuditKeys(app.keyring()),
        name=name,
        source=source,
        label_column=label_column,
        epsilon_budget=epsilon_budget,
        delta=delta,
        actor=os_user(),
    )
    row = registered.row
    click.echo(
        f"registered dataset {row.name}: {row.n} examples, features {tuple(row.feature_shape)}, "
        f"{len(row.classes)} classes, budget ε={row.epsilon_budget:g} at δ={row.delta:g}"
    )
    click.echo(f"fingerprint {row.fingerprint}")


@dataset.command("list")
@format_option
@click.pass_obj
def list_datasets(app: AppContext, fmt: str) -> None:
    """List registered datasets with their budget and how much of it is spent.

    \b
    Example:
        secure-maas dataset list --format json
    """
    from secure_maas.training import ledger

    with session_scope(session_factory(app.engine())) as session:
        rows = [dataset_row(item.dataset, item.spend) for item in ledger.report(session)]
    if fmt == "table":
        rows = [
            {**row, "spent": round(row["spent"], 4), "remaining": round(row["remaining"], 4)}
            for row in rows
        ]
    emit(rows, LIST_COLUMNS, fmt)


@dataset.command("show")
@click.argument("name")
@format_option
@click.pass_obj
def show(app: AppContext, name: str, fmt: str) -> None:
    """Show one dataset: source, fingerprint, shape, classes, budget and spend.

    \b
    Example:
        secure-maas dataset show digits
    """
    from secure_maas.training import ledger

    with session_scope(session_factory(app.engine())) as session:
        item = ledger.report(session, name)[0]
        data = dataset_row(item.dataset, item.spend)
        data["spend"] = item.spend.to_dict()
    if fmt == "json":
        emit([data], [], fmt)
        return
    click.echo(data["name"])
    for key, value in data.items():
        if key not in ("name", "spend", "spent", "remaining"):
            click.echo(f"  {key:16} {value if value is not None else '-'}")
    spend = item.spend
    click.echo(
        f"  {'spent':16} ε={spend.epsilon_rdp:.4g} (RDP composition of {spend.counted} run(s); "
        f"plain sum ε={spend.epsilon_sum:.4g}), remaining ε={spend.remaining:.4g}"
    )
