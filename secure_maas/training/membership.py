"""`privacy attack`: a membership-inference check of a published model, stored on its version.

The sealed model is opened in memory (as the service does), the registered data is read again
(and must still have its fingerprint), and the train/test split of the run that made the
version is reproduced from the seed and test fraction kept in the ledger: training examples
are the members, held-out examples the non-members (`attack.run_attacks`). The strongest
attack's AUC, advantage and empirical ε lower bound are stored on the model version next to
its accounted ε, with the full report, and the check is an audit event; both commit together.

TensorFlow is imported by this module (to load the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.actions import AdminAction
from secure_maas.audit import AuditKeys
from secure_maas.db.session import session_factory, session_scope, write_scope
from secure_maas.errors import SecureMaasError
from secure_maas.keys import Keyring
from secure_maas.registry import artifacts, catalog, codec
from secure_maas.registry.models import ModelVersion
from secure_maas.registry.store import ArtifactStore
from secure_maas.timeutil import utcnow
from secure_maas.training import attack, dataset_catalog, events
from secure_maas.training.datasets import SPLIT_METHOD, split
from secure_maas.training.models import RegisteredDataset, RunStatus, TrainingRun


class NoTrainingRun(SecureMaasError):
    """The version was not made by a training run here, so its members are unknown."""


@dataclass(frozen=True)
class MembershipCheck:
    model: str
    version: int
    dataset: str
    accounted_epsilon: float | None  # None for a model trained without DP
    delta: float
    report: attack.AttackReport

    @property
    def best(self) -> attack.AttackResult:
        return max(self.report.results, key=lambda r: r.auc)


def check_membership(
    engine: Engine,
    store: ArtifactStore,
    keyring: Keyring,
    audit_keys: AuditKeys,
    ref: str,
    *,
    actor: str,
    seed: int = 0,
    confidence: float = 0.95,
    now: datetime | None = None,
) -> MembershipCheck:
    """Attack `ref` (NAME, NAME:VERSION or NAME@LABEL) and store the results on its version."""
    parsed = catalog.ModelRef.parse(ref)
    audit_keys.active()
    with session_scope(session_factory(engine)) as session:
        row = catalog.resolve(session, parsed, include_disabled=True)
        name, version = row.model.name, row.version
        run = session.execute(
            sa.select(TrainingRun).where(
                TrainingRun.model_name == name,
                TrainingRun.model_version == version,
                TrainingRun.status == RunStatus.FINISHED.value,
            )
        ).scalar_one_or_none()
        if run is None:
            raise NoTrainingRun(
                f"{name}:{version} was not made by a training run of this instance; its "
                "training examples are unknown, so membership cannot be tested"
            )
        dataset = session.get(RegisteredDataset, run.dataset_id)
        if dataset is None:
            raise NoTrainingRun(f"the dataset of training run {run.id} is gone")
        if run.config.get("split") != SPLIT_METHOD:
            raise NoTrainingRun(
                f"{name}:{version} was trained before record-local splits; which examples it "
                "trained on cannot be redrawn, so membership cannot be tested"
            )
        seed_split, fraction = run.seed, run.test_fraction
        owner = dataset_catalog.budget_owner(session, dataset)
        delta = float(run.delta if run.delta is not None else owner.delta or 0.0)
    data = dataset_catalog.load_registered(dataset)
    train_idx, test_idx = split(data, test_fraction=fraction, seed=seed_split)
    opened = artifacts.open_version(store, keyring, row)
    try:
        loaded = codec.decode_model(opened.plaintext)
    finally:
        opened.wipe()
    if not isinstance(loaded, codec.LoadedModel):  # made from a trained one, never by a run
        raise NoTrainingRun(f"{name}:{version} is a quantized model: attack the one it came from")
    report = attack.run_attacks(
        loaded.model,
        data.x[train_idx],
        data.y[train_idx],
        data.x[test_idx],
        data.y[test_idx],
        delta=delta,
        seed=seed,
        confidence=confidence,
    )
    result = MembershipCheck(name, version, dataset.name, row.dp_epsilon, delta, report)
    _store(engine, audit_keys, row.id, result, actor, now or utcnow())
    return result


def _store(
    engine: Engine,
    keys: AuditKeys,
    version_id: int,
    check: MembershipCheck,
    actor: str,
    moment: datetime,
) -> None:
    best = check.best
    with write_scope(engine) as session:
        row = session.execute(
            sa.select(ModelVersion).where(ModelVersion.id == version_id).with_for_update()
        ).scalar_one()
        row.mia_auc = check.report.max_auc
        row.mia_advantage = max(r.advantage for r in check.report.results)
        row.mia_epsilon_lower_bound = check.report.max_epsilon_lower_bound
        row.mia_report = {**check.report.to_dict(), "dataset": check.dataset}
        row.mia_at = moment
        accounted = (
            "no DP" if check.accounted_epsilon is None else f"ε={check.accounted_epsilon:.4g}"
        )
        events.record(
            session,
            keys,
            events.event(
                AdminAction.PRIVACY_ATTACK,
                actor,
                reason_code="membership-inference",
                reason=(
                    f"AUC {check.report.max_auc:.3f} ({best.attack}), empirical ε lower bound "
                    f"{check.report.max_epsilon_lower_bound:.3g}, accounted {accounted}"
                ),
                model=check.model,
                model_version=check.version,
                detail={
                    "dataset": check.dataset,
                    "auc": events.number(check.report.max_auc),
                    "epsilon_lower_bound": events.number(check.report.max_epsilon_lower_bound),
                },
            ),
            now=moment,
        )
