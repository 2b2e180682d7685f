"""The privacy ledger: budget check, reservation, finish and abort of training runs.

What counts as spent. Every DP run that reached training, however it ended: `finished`
(published), `started` (still running, or killed: the process may have died anywhere after it
touched the data) and `aborted` (it failed after training began). A model that was never
published leaks nothing through the model, but the operator saw its progress, and a guarantee
must not depend on how a run ended; refusing to count those runs would let a crash or a
Ctrl-C buy budget back. `refused` runs never started and spend nothing. Runs without a
DP guarantee (`--no-dp`, a fixed `--noise-seed`, exact statistics) have no ε: they are recorded
and reported (their models carry no guarantee at all) but they are outside the budget, which
bounds what the DP models on the data reveal together; so they are refused, and the refusal
recorded, unless the budget's owner was registered with `allow_non_private`.

One budget, one ledger. Datasets that share a budget (`catalog`: the same data registered
again, on purpose) compose their runs together, against the owner's (ε, δ).

Composition. Two figures are reported for the runs that count: the basic composition theorem,
Σε at Σδ (`accounting.sum_epsilon`), and RDP composition, their RDP curves added order by
order and converted to ε at the dataset's δ (`accounting.compose_rdp`). Both are valid upper
bounds; the RDP figure is the tighter one, holds at the dataset's own δ (the sum only at k·δ)
and is the one the budget is checked against.

Concurrency. The check and the reservation are one write transaction (`write_scope`: BEGIN
IMMEDIATE on SQLite; on PostgreSQL the dataset's row is locked FOR UPDATE before the runs are
read), so of two runs that together exceed the budget only one can pass. The reservation's
row and its audit event commit together; a run is refused before any training, and its
refusal is recorded (a `refused` row and a `deny` event) before the error is raised.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.audit import AuditDecision, AuditEvent, AuditKeys
from secure_maas.db.session import write_scope
from secure_maas.errors import SecureMaasError
from secure_maas.timeutil import utcnow
from secure_maas.training import accounting, dataset_catalog, events
from secure_maas.training.accounting import PrivacyReport, RdpCurve
from secure_maas.training.models import RegisteredDataset, RunStatus, TrainingRun

COMPOSITION_RULE = "RDP"


class LedgerError(SecureMaasError):
    """The ledger cannot record what was asked (unknown run, run in the wrong state)."""


class NonPrivateRefused(SecureMaasError):
    """A run without a DP guarantee on data whose registration does not allow one."""


class BudgetExceeded(SecureMaasError):
    """The run would take its dataset past its privacy budget; nothing was trained."""

    def __init__(self, message: str, *, before: Spend, after: Spend, requested: float) -> None:
        super().__init__(message)
        self.before = before
        self.after = after
        self.requested = requested


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, fixed before it trains; `privacy` is None for `--no-dp`."""

    model_name: str
    arch: str
    privacy: PrivacyReport | None
    requested_epsilon: float | None
    batch_size: int
    epochs: int
    steps: int
    seed: int
    test_fraction: float
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spend:
    """A dataset's budget and what its counted runs spent, by both composition rules."""

    dataset: str
    budget: float
    delta: float
    epsilon_rdp: float  # RDP composition at `delta`: the figure the budget is checked against
    epsilon_sum: float  # basic composition: Σε, which holds at `delta_sum`
    delta_sum: float
    counted: int  # DP runs whose ε counts (started + finished + aborted)
    statuses: dict[str, int]  # every run by status (DP and not)
    non_private: int  # runs trained without DP

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.epsilon_rdp)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "epsilon_budget": self.budget,
            "delta": self.delta,
            "spent_epsilon_rdp": self.epsilon_rdp,
            "spent_epsilon_sum": self.epsilon_sum,
            "spent_delta_sum": self.delta_sum,
            "remaining_epsilon": self.remaining,
            "composition_rule": COMPOSITION_RULE,
            "counted_runs": self.counted,
            "runs_by_status": dict(self.statuses),
            "non_private_runs": self.non_private,
        }


@dataclass(frozen=True)
class Reservation:
    run_id: int
    dataset: str
    before: Spend
    after: Spend


def spend_of(owner: RegisteredDataset, runs: Sequence[TrainingRun]) -> Spend:
    """Compose the counted runs of `owner`'s budget (see the module docstring)."""
    if owner.epsilon_budget is None or owner.delta is None:
        raise LedgerError(f"dataset {owner.name!r} shares another's budget; ask its owner")
    counted = [run for run in runs if run.spends]
    curves = [curve_of(run) for run in counted]
    epsilons = [float(run.epsilon or 0.0) for run in counted]
    return Spend(
        dataset=owner.name,
        budget=float(owner.epsilon_budget),
        delta=float(owner.delta),
        epsilon_rdp=accounting.compose_rdp(curves, owner.delta),
        epsilon_sum=accounting.sum_epsilon(epsilons),
        delta_sum=math.fsum(float(run.delta or 0.0) for run in counted),
        counted=len(counted),
        statuses=dict(Counter(run.status for run in runs)),
        non_private=sum(1 for run in runs if not run.dp),
    )


def curve_of(run: TrainingRun) -> RdpCurve:
    if run.rdp_orders is None or run.rdp_values is None:
        raise LedgerError(f"training run {run.id} counts against its budget but has no RDP curve")
    return RdpCurve.from_dict({"orders": run.rdp_orders, "values": run.rdp_values})


def runs_of(session: Session, owner: RegisteredDataset) -> list[TrainingRun]:
    """Every run on `owner`'s budget: on the owner and on each dataset sharing it."""
    ids = [member.id for member in dataset_catalog.budget_members(session, owner)]
    return list(
        session.execute(
            sa.select(TrainingRun).where(TrainingRun.dataset_id.in_(ids)).order_by(TrainingRun.id)
        ).scalars()
    )


def reserve(
    engine: Engine,
    keys: AuditKeys,
    dataset_name: str,
    plan: RunPlan,
    *,
    actor: str,
    now: datetime | None = None,
) -> Reservation:
    """Check the budget and reserve the run's ε in one transaction, or refuse.

    Raises `BudgetExceeded` (after committing the refusal's row and audit event) when the RDP
    composition of the counted runs and this one exceeds the budget, and `NonPrivateRefused`
    for a run without a guarantee (`plan.privacy` None) on data that does not allow one.
    """
    moment = now or utcnow()
    refusal: BudgetExceeded | NonPrivateRefused | None = None
    with write_scope(engine) as session:
        dataset = dataset_catalog.get_dataset(session, dataset_name, lock=True)
        owner = dataset_catalog.budget_owner(session, dataset, lock=True)
        runs = runs_of(session, owner)
        before = spend_of(owner, runs)
        row = _new_run(dataset, plan, actor, moment)
        after = spend_of(owner, [*runs, row]) if plan.privacy is not None else before
        if plan.privacy is None and not owner.allow_non_private:
            refusal = NonPrivateRefused(
                f"refused before training: dataset {dataset_name!r} was registered without "
                "--allow-non-private, so every model trained on it must carry a DP guarantee; "
                "this run would not (--no-dp, --noise-seed or exact statistics)"
            )
        elif plan.privacy is not None and after.epsilon_rdp > before.budget:
            refusal = BudgetExceeded(
                refusal_message(before, after, plan.privacy.epsilon),
                before=before,
                after=after,
                requested=plan.privacy.epsilon,
            )
        if refusal is not None:
            row.status = RunStatus.REFUSED.value
            row.finished_at = moment
            row.reason = str(refusal)
        session.add(row)
        session.flush()
        events.record(session, keys, _reserve_event(row, before, after, refusal, actor), now=moment)
    if refusal is not None:
        raise refusal
    return Reservation(row.id, dataset.name, before, after)


def refusal_message(before: Spend, after: Spend, requested: float) -> str:
    return (
        f"refused before training: dataset {before.dataset!r} has budget "
        f"ε={before.budget:g} (δ={before.delta:g}); spent ε={before.epsilon_rdp:.4f} by "
        f"{COMPOSITION_RULE} composition of {before.counted} run(s) (plain sum "
        f"ε={before.epsilon_sum:.4f}), remaining ε={before.remaining:.4f}; this run requests "
        f"ε={requested:.4f}, which would bring the total to ε={after.epsilon_rdp:.4f} "
        f"({COMPOSITION_RULE}; plain sum ε={after.epsilon_sum:.4f}). The budget is checked "
        f"against the {COMPOSITION_RULE}-composed total, the tighter valid bound"
    )


def finish(
    session: Session,
    keys: AuditKeys,
    run_id: int,
    *,
    privacy: PrivacyReport | None,
    model_version: int,
    path_used: str,
    test_accuracy: float,
    actor: str,
    now: datetime | None = None,
) -> TrainingRun:
    """Mark a started run finished with the version it published, inside the publishing
    transaction (so a version exists exactly when its run is finished).

    The report of the finished run must not spend more than was reserved.
    """
    moment = now or utcnow()
    row = _locked_run(session, run_id)
    if row.status != RunStatus.STARTED.value:
        raise LedgerError(f"training run {run_id} is {row.status}, not started")
    if (privacy is None) == row.dp:
        raise LedgerError(f"training run {run_id}: a DP run needs its report, and only one does")
    if privacy is not None:
        if row.epsilon is None or privacy.epsilon > row.epsilon * (1 + 1e-9):
            raise LedgerError(
                f"training run {run_id} spent ε={privacy.epsilon:.6g}, more than the "
                f"ε={row.epsilon} it reserved; not publishing"
            )
        _set_privacy(row, privacy)
    row.status = RunStatus.FINISHED.value
    row.model_version = model_version
    row.path_used = path_used
    row.test_accuracy = test_accuracy
    row.finished_at = moment
    session.flush()
    guarantee = f"ε={row.epsilon:.4g}, δ={row.delta:g}" if row.dp else "no DP guarantee"
    events.record(
        session,
        keys,
        events.event(
            AdminAction.TRAIN_RUN,
            actor,
            reason_code="finished",
            reason=f"run {row.id} published {row.model_name}:{model_version} ({guarantee})",
            model=row.model_name,
            model_version=model_version,
            detail={"run": row.id, "epsilon": events.number(row.epsilon), "path": path_used},
        ),
        events.event(
            AdminAction.MODEL_PUBLISH,
            actor,
            reason_code="trained",
            reason=f"published by training run {row.id} ({guarantee})",
            model=row.model_name,
            model_version=model_version,
            detail={"run": row.id},
        ),
        now=moment,
    )
    return row


def abort(
    engine: Engine,
    keys: AuditKeys,
    run_id: int,
    reason: str,
    *,
    actor: str,
    now: datetime | None = None,
) -> None:
    """Mark a started run aborted (its ε stays counted) and record why."""
    moment = now or utcnow()
    with write_scope(engine) as session:
        row = _locked_run(session, run_id)
        if row.status != RunStatus.STARTED.value:
            return
        row.status = RunStatus.ABORTED.value
        row.finished_at = moment
        row.reason = reason
        events.record(
            session,
            keys,
            events.event(
                AdminAction.TRAIN_RUN,
                actor,
                decision=AuditDecision.ERROR,
                reason_code="aborted",
                reason=f"run {row.id} aborted, its ε stays counted: {reason}",
                model=row.model_name,
                detail={"run": row.id, "epsilon": events.number(row.epsilon)},
            ),
            now=moment,
        )


@dataclass(frozen=True)
class DatasetLedger:
    dataset: RegisteredDataset
    spend: Spend
    runs: list[TrainingRun]


def report(session: Session, dataset_name: str | None = None) -> list[DatasetLedger]:
    """Every dataset's (or one dataset's) spend and runs."""
    if dataset_name is not None:
        datasets = [dataset_catalog.get_dataset(session, dataset_name)]
    else:
        datasets = dataset_catalog.list_datasets(session)
    found = []
    for dataset in datasets:
        owner = dataset_catalog.budget_owner(session, dataset)
        runs = runs_of(session, owner)
        found.append(DatasetLedger(dataset, spend_of(owner, runs), runs))
    return found


def _new_run(
    dataset: RegisteredDataset, plan: RunPlan, actor: str, moment: datetime
) -> TrainingRun:
    row = TrainingRun(
        dataset_id=dataset.id,
        model_name=plan.model_name,
        status=RunStatus.STARTED.value,
        dp=plan.privacy is not None,
        arch=plan.arch,
        requested_epsilon=plan.requested_epsilon,
        batch_size=plan.batch_size,
        epochs=plan.epochs,
        steps=plan.steps,
        seed=plan.seed,
        test_fraction=plan.test_fraction,
        config=plan.config,
        created_by=actor,
        started_at=moment,
    )
    if plan.privacy is not None:
        _set_privacy(row, plan.privacy)
    return row


def _set_privacy(row: TrainingRun, privacy: PrivacyReport) -> None:
    row.epsilon = float(privacy.epsilon)
    row.delta = float(privacy.delta)
    row.rdp_orders = list(privacy.rdp.orders)
    row.rdp_values = list(privacy.rdp.values)
    row.noise_multiplier = float(privacy.noise_multiplier)
    row.clip_norm = privacy.l2_norm_clip
    row.sampling_rate = float(privacy.sampling_rate)
    row.accountant = privacy.accountant


def _locked_run(session: Session, run_id: int) -> TrainingRun:
    row = session.execute(
        sa.select(TrainingRun).where(TrainingRun.id == run_id).with_for_update()
    ).scalar_one_or_none()
    if row is None:
        raise LedgerError(f"no training run {run_id}")
    return row


def _reserve_event(
    row: TrainingRun,
    before: Spend,
    after: Spend,
    refusal: BudgetExceeded | NonPrivateRefused | None,
    actor: str,
) -> AuditEvent:
    detail: dict[str, str | int | None] = {
        "run": row.id,
        "dataset": before.dataset,
        "epsilon": events.number(row.epsilon),
        "spent_epsilon_rdp": events.number(before.epsilon_rdp),
        "total_epsilon_rdp": events.number(after.epsilon_rdp),
        "budget": events.number(before.budget),
    }
    init = (row.config or {}).get("init_from")
    if isinstance(init, dict):  # public pre-training: which model, exactly
        detail["init_from"] = f"{init['name']}:{init['version']} sha256:{init['plaintext_sha256']}"
    if refusal is not None:
        return events.event(
            AdminAction.TRAIN_RUN,
            actor,
            decision=AuditDecision.DENY,
            reason_code=(
                "budget-exceeded" if isinstance(refusal, BudgetExceeded) else "non-private-refused"
            ),
            reason=str(refusal),
            model=row.model_name,
            detail=detail,
        )
    what = f"ε={row.epsilon:.4g} reserved" if row.dp else "without DP (outside the budget)"
    return events.event(
        AdminAction.TRAIN_RUN,
        actor,
        reason_code="started",
        reason=f"run {row.id} on dataset {before.dataset!r} started, {what}",
        model=row.model_name,
        detail=detail,
    )
