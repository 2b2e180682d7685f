"""`secure-maas privacy`: the privacy ledger, and membership-inference checks of models.

Both import the training modules inside the command (dp_accounting takes a second to import;
`attack` also loads TensorFlow), so `secure-maas --help` stays fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from secure_maas.audit import KeyringAuditKeys
from secure_maas.cli.context import AppContext
from secure_maas.cli.output import emit, format_option
from secure_maas.cli.recording import os_user
from secure_maas.db.session import session_factory, session_scope
from secure_maas.timeutil import isoformat
from secure_maas.training.models import RunStatus, TrainingRun

if TYPE_CHECKING:
    from secure_maas.training import ledger

SUMMARY_COLUMNS = [
    "dataset",
    "epsilon_budget",
    "delta",
    "spent_epsilon_rdp",
    "spent_epsilon_sum",
    "remaining_epsilon",
    "finished",
    "started",
    "aborted",
    "refused",
    "non_private",
]
RUN_COLUMNS = ["run", "model", "version", "status", "counted", "epsilon", "requested", "started_at"]
STATUS_TEXT = {
    RunStatus.STARTED.value: "started, not finished",
    RunStatus.FINISHED.value: "finished",
    RunStatus.ABORTED.value: "aborted",
    RunStatus.REFUSED.value: "refused",
}


def run_row(run: TrainingRun) -> dict[str, Any]:
    return {
        "run": run.id,
        "model": run.model_name,
        "version": run.model_version,
        "status": STATUS_TEXT.get(run.status, run.status),
        "counted": "yes" if run.spends else "no",
        "dp": run.dp,
        "epsilon": run.epsilon,
        "delta": run.delta,
        "requested": run.requested_epsilon,
        "noise_multiplier": run.noise_multiplier,
        "clip_norm": run.clip_norm,
        "batch_size": run.batch_size,
        "sampling_rate": run.sampling_rate,
        "epochs": run.epochs,
        "steps": run.steps,
        "accountant": run.accountant,
        "path_used": run.path_used,
        "test_accuracy": run.test_accuracy,
        "created_by": run.created_by,
        "started_at": isoformat(run.started_at),
        "finished_at": isoformat(run.finished_at) if run.finished_at else None,
        "reason": run.reason,
    }


def summary_row(item: ledger.DatasetLedger) -> dict[str, Any]:
    spend = item.spend
    data = spend.to_dict()
    # A dataset sharing another's budget reports that budget's spend, under its own name.
    data["dataset"] = item.dataset.name
    data["budget_of"] = spend.dataset if spend.dataset != item.dataset.name else None
    for status in RunStatus:
        data[status.value] = spend.statuses.get(status.value, 0)
    data["non_private"] = spend.non_private
    return data


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    """ε figures to 4 decimals for a table (JSON keeps every digit)."""
    return {
        k: round(v, 4) if isinstance(v, float) and "epsilon" in k else v for k, v in row.items()
    }


@click.group()
def privacy() -> None:
    """The privacy ledger (budgets and spend) and membership-inference checks."""


@privacy.command("report")
@click.option("--dataset", "dataset_name", help="Only this dataset, with every one of its runs.")
@format_option
@click.pass_obj
def report(app: AppContext, dataset_name: str | None, fmt: str) -> None:
    """Budget, spend and remaining ε per dataset, composed over its runs.

    Spent ε is reported two ways: RDP composition of the runs' curves at the dataset's δ (what
    the budget is checked against) and the plain sum of their ε. Every DP run that began
    training counts, finished or not: a run shown "started, not finished" is running or was
    killed, and its ε is spent. Refused runs spend nothing; --no-dp runs are outside the budget
    and listed as non-private.

    \b
    Example:
        secure-maas privacy report --dataset digits --format json
    """
    from secure_maas.training import ledger

    with session_scope(session_factory(app.engine())) as session:
        items = ledger.report(session, dataset_name)
        summaries = [summary_row(item) for item in items]
        runs = [[run_row(run) for run in item.runs] for item in items]
    if fmt == "json":
        emit(
            [{**summary, "runs": rows} for summary, rows in zip(summaries, runs, strict=True)],
            [],
            fmt,
        )
        return
    emit([rounded(row) for row in summaries], SUMMARY_COLUMNS, fmt)
    if dataset_name is not None:
        click.echo("")
        emit([rounded(row) for row in runs[0]], RUN_COLUMNS, fmt)
    for summary in summaries:
        if summary["started"]:
            click.echo(
                f"note: {summary['dataset']} has {summary['started']} run(s) started, not "
                "finished (running or killed); their ε is counted as spent"
            )
        if summary["non_private"]:
            click.echo(
                f"note: {summary['dataset']} has {summary['non_private']} run(s) trained "
                "without DP; their models carry no privacy guarantee"
            )


@privacy.command("attack")
@click.argument("ref", metavar="MODEL[:VERSION]")
@click.option("--seed", type=int, default=0, show_default=True, help="Attack randomness.")
@click.option(
    "--confidence",
    type=click.FloatRange(0.5, 0.999),
    default=0.95,
    show_default=True,
    help="Clopper-Pearson confidence of the ε lower bound.",
)
@format_option
@click.pass_obj
def attack(app: AppContext, ref: str, seed: int, confidence: float, fmt: str) -> None:
    """Run membership-inference attacks on a published model and store the results on it.

    Members are the run's training examples, non-members its held-out ones (the split is
    reproduced from the ledger). Prints each attack's AUC, advantage and empirical ε lower
    bound next to the accounted ε.

    \b
    Example:
        secure-maas privacy attack digits-dp:1
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from secure_maas.training.membership import check_membership

    keyring = app.keyring()
    check = check_membership(
        app.engine(),
        app.store(),
        keyring,
        KeyringAuditKeys(keyring),
        ref,
        actor=os_user(),
        seed=seed,
        confidence=confidence,
    )
    if fmt == "json":
        emit(
            [
                {
                    "model": check.model,
                    "version": check.version,
                    "dataset": check.dataset,
                    "accounted_epsilon": check.accounted_epsilon,
                    "delta": check.delta,
                    **check.report.to_dict(),
                }
            ],
            [],
            fmt,
        )
        return
    rows = [
        {
            "attack": r.attack,
            "auc": round(r.auc, 4),
            "advantage": round(r.advantage, 4),
            "epsilon_lower_bound": round(r.epsilon_lower_bound, 4),
            "members": r.members,
            "non_members": r.non_members,
        }
        for r in check.report.results
    ]
    emit(rows, ["attack", "auc", "advantage", "epsilon_lower_bound", "members", "non_members"], fmt)
    accounted = (
        "none (trained without DP)"
        if check.accounted_epsilon is None
        else f"ε={check.accounted_epsilon:.4g} at δ={check.delta:g}"
    )
    click.echo(
        f"{check.model}:{check.version}: best AUC {check.report.max_auc:.4f}, empirical ε lower "
        f"bound {check.report.max_epsilon_lower_bound:.4g} ({confidence:.0%} confidence); "
        f"accounted {accounted}; stored on the version"
    )
