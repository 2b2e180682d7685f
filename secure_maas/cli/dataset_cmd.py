"""`secure-maas dataset`: register training data with a privacy budget, list, show.

The data is read to fingerprint it and never copied: training reads the source again and
refuses it if the fingerprint changed. Data already registered under another name is refused
(a budget belongs to the data), unless `--budget-of` shares that registration's budget. The
training modules (dp_accounting, scikit-learn) are imported inside the commands, so
`secure-maas --help` does not pay for them.
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

LIST_COLUMNS = [
    "name",
    "source",
    "n",
    "classes",
    "budget_of",
    "epsilon_budget",
    "delta",
    "spent",
    "remaining",
]


def dataset_row(row: RegisteredDataset, spend: ledger.Spend | None = None) -> dict[str, Any]:
    """What the operator sees of a dataset (never its split key); budget figures are those of
    the budget it spends, its own or the one it shares."""
    data: dict[str, Any] = {
        "name": row.name,
        "source": row.source,
        "label_column": row.label_column,
        "fingerprint": row.fingerprint,
        "identity": row.identity,
        "n": row.n,
        "feature_shape": list(row.feature_shape),
        "classes": len(row.classes),
        "class_names": list(row.classes),
        "budget_of": spend.dataset if spend is not None and spend.dataset != row.name else None,
        "epsilon_budget": spend.budget if spend is not None else row.epsilon_budget,
        "delta": spend.delta if spend is not None else row.delta,
        "allow_non_private": row.allow_non_private,
        "feature_range": row.feature_range,
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
    help="Total ε every DP training run on this data may spend together (unless --budget-of).",
)
@click.option(
    "--delta",
    type=float,
    help="δ of every run and of their composition; must be < 1/n. "
    "[default: 1e-5, or a power of ten ≤ 0.1/n]",
)
@click.option(
    "--budget-of",
    metavar="DATASET",
    help="Share DATASET's budget and ledger instead of getting one: for the same data "
    "registered again (required then) or overlapping extracts of the same people.",
)
@click.option(
    "--allow-non-private",
    is_flag=True,
    help="Let runs without a DP guarantee (--no-dp, --noise-seed) use this data.",
)
@click.option(
    "--feature-range",
    "feature_ranges",
    multiple=True,
    metavar="[NAME=]LO:HI",
    help="Declare a PUBLIC value range (known without the data): LO:HI for every feature, "
    "NAME=LO:HI for one (column name, or flat index). Repeatable. Training then scales by it, "
    "at no privacy cost.",
)
@click.pass_obj
def register(
    app: AppContext,
    name: str,
    source: str,
    label_column: str | None,
    epsilon_budget: float | None,
    delta: float | None,
    budget_of: str | None,
    allow_non_private: bool,
    feature_ranges: tuple[str, ...],
) -> None:
    """Register NAME: read SOURCE once, record its fingerprint, size, shape, classes and budget.

    The data itself is not stored anywhere; training reads SOURCE again. A budget belongs to
    the data: registering data that is already registered (the same examples in any order,
    under any label names) is refused unless --budget-of names that registration.

    \b
    Example:
        secure-maas dataset register digits --source sklearn:digits --epsilon-budget 6
        secure-maas dataset register churn --source csv:data/churn.csv \\
            --label-column churned --epsilon-budget 2 --delta 1e-6 \\
            --feature-range 0:1 --feature-range age=18:120
        secure-maas dataset register digits-copy --source npz:digits.npz --budget-of digits
    """
    from secure_maas.training import dataset_catalog

    if budget_of is None and epsilon_budget is None:
        raise click.UsageError("give --epsilon-budget, or --budget-of DATASET to share one")
    registered = dataset_catalog.register_dataset(
        app.engine(),
        KeyringAuditKeys(app.keyring()),
        name=name,
        source=source,
        label_column=label_column,
        epsilon_budget=epsilon_budget,
        delta=delta,
        budget_of=budget_of,
        allow_non_private=allow_non_private,
        feature_ranges=list(feature_ranges) or None,
        actor=os_user(),
    )
    row, owner = registered.row, registered.owner
    budget = (
        f"budget ε={owner.epsilon_budget:g} at δ={owner.delta:g}"
        if owner is row
        else f"sharing the budget of {owner.name} (ε={owner.epsilon_budget:g}, δ={owner.delta:g})"
    )
    click.echo(
        f"registered dataset {row.name}: {row.n} examples, features {tuple(row.feature_shape)}, "
        f"{len(row.classes)} classes, {budget}"
    )
    if row.feature_range is not None:
        click.echo("declared public value ranges: training scales by them (covered by DP)")
    if row.allow_non_private:
        click.echo("runs without a DP guarantee are allowed on it (--allow-non-private)")
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
    shared = f" of the budget of {spend.dataset}" if spend.dataset != name else ""
    click.echo(
        f"  {'spent':16} ε={spend.epsilon_rdp:.4g}{shared} (RDP composition of {spend.counted} "
        f"run(s); plain sum ε={spend.epsilon_sum:.4g}), remaining ε={spend.remaining:.4g}"
    )
