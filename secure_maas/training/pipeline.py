"""A training run end to end: registered data, plan, budget, DP-SGD, seal, publish, ledger.

Order, and why:

1. What can fail without reading the data fails first: the model name and the keys (audit,
   service, publisher). Budget is only reserved for a run that can run.
2. The registered data is read again and must have the fingerprint it was registered with
   (else a `deny` event and `DataChanged`).
3. The run is planned (`plan.make_plan`, the one validator): every parameter and flag
   combination is checked, the noise is calibrated from a target ε (or taken as given) and the
   run's privacy is computed, once, before any training, from public quantities only: n, batch
   size, epochs, and the noise of the preprocessing statistics' release when there is one. A
   trial build of the architecture on the data's shape follows, so an architecture that cannot
   take the data fails here too. With `--init-from`, the public model is opened through the
   registry first (`pretrained.load_public_init`: its signed class must be `public`) and checked
   against the trial build; a refusal is a `deny` event, before any reservation.
4. The ledger reserves the plan's ε or refuses the run (`ledger.reserve`), in one transaction. A
   run whose model could carry no guarantee (`--no-dp`, a fixed `--noise-seed`: anyone who knows
   it can subtract the noise) reserves nothing and needs data registered to allow it.
5. DP-SGD trains the plan in memory (`train.train`, or the `trainer` given); it runs the steps
   accounted or fails.
6. The model is encoded in memory and published with the plan's guarantee, the same report
   the ledger reserved; the run is marked finished, with its audit events, inside the
   publishing transaction: a version exists exactly when its run finished. Any failure after
   step 4 marks the run aborted (its ε stays counted); a killed process leaves it `started`
   (counted too) and nothing published.

With `--distributed` (`distributed`, `cluster`) every process of the cluster runs the same
command: the chief runs all of the above with the distributed trainer; a worker runs only
`run_worker` (read the registration, check the data's fingerprint, make the same plan, train)
and touches neither the ledger nor the registry nor the audit log.

TensorFlow is imported by this module; the CLI imports it only inside `secure-maas train`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.audit import AuditDecision, AuditKeys
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import KeyKind, Keyring
from secure_maas.registry import codec
from secure_maas.registry.models import ModelVersion, Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.signature import ServingSignature
from secure_maas.registry.store import ArtifactStore, check_name
from secure_maas.training import architectures, dataset_catalog, events, ledger, train
from secure_maas.training.accounting import PrivacyReport
from secure_maas.training.datasets import SPLIT_METHOD, Dataset
from secure_maas.training.models import RegisteredDataset
from secure_maas.training.plan import Plan, TrainingRequest, make_plan, sizes_of
from secure_maas.training.train import ProgressCallback, TrainResult
from secure_maas.training.transfer import InitRefused, PublicInit

logger = logging.getLogger(__name__)


class Trainer(Protocol):
    """What trains a plan: `train.train`, or a stand-in where a test must not train."""

    def __call__(
        self, dataset: Dataset, plan: Plan, *, progress: ProgressCallback | None = None
    ) -> TrainResult: ...


@dataclass(eq=False)
class Outcome:
    run_id: int
    plan: Plan
    result: TrainResult
    version: int
    spend: ledger.Spend  # the dataset's spend after this run


Announce = Callable[[Plan, ledger.Reservation], None]


def run_training(
    engine: Engine,
    store: ArtifactStore,
    keyring: Keyring,
    audit_keys: AuditKeys,
    request: TrainingRequest,
    *,
    created_by: str,
    progress: ProgressCallback | None = None,
    announce: Announce | None = None,
    now: datetime | None = None,
    trainer: Trainer = train.train,
) -> Outcome:
    """Train, publish and account one run (see the module docstring for the order).

    Raises `plan.ConflictingOptions` / `plan.TrainingError` for a request that cannot run,
    `ledger.BudgetExceeded` / `ledger.NonPrivateRefused` for one the data's budget refuses, all
    before any training.
    """
    check_name(request.model_name)
    audit_keys.active()
    keyring.active(KeyKind.SERVICE)
    keyring.active(KeyKind.PUBLISHER)
    with session_scope(session_factory(engine)) as session:
        registered = dataset_catalog.get_dataset(session, request.dataset)
        delta = float(dataset_catalog.budget_owner(session, registered).delta or 0.0)
    try:
        data = dataset_catalog.load_registered(registered)
    except dataset_catalog.DataChanged as exc:
        events.record_alone(
            engine,
            audit_keys,
            events.event(
                AdminAction.TRAIN_RUN,
                created_by,
                decision=AuditDecision.DENY,
                reason_code="dataset-changed",
                reason=str(exc),
                model=request.model_name,
                detail={"dataset": registered.name, "fingerprint": registered.fingerprint},
            ),
            now=now,
        )
        raise
    try:
        init = _open_init(engine, store, keyring, request.init_from)
        plan = make_plan(request, data, delta=delta, init=init)
        # An architecture that cannot take this data fails here, before any reservation.
        trial = architectures.build_model(
            request.arch, data.feature_shape, data.num_classes, **plan.sizes
        )
        if init is not None:
            from secure_maas.training import pretrained

            pretrained.check_compatible(trial, init)
    except InitRefused as exc:
        _record_init_refusal(engine, audit_keys, request, exc, created_by, now)
        raise
    reservation = ledger.reserve(
        engine,
        audit_keys,
        registered.name,
        ledger.RunPlan(
            model_name=request.model_name,
            arch=request.arch,
            privacy=plan.guarantee,
            requested_epsilon=request.target_epsilon,
            batch_size=plan.batch_size,
            epochs=plan.epochs,
            steps=plan.steps,
            seed=request.seed,
            test_fraction=request.test_fraction,
            config=_run_config(plan),
        ),
        actor=created_by,
        now=now,
    )
    run_id = reservation.run_id
    try:
        if announce is not None:
            announce(plan, reservation)
        result = trainer(data, plan, progress=progress)
        version = _publish(
            engine, store, keyring, audit_keys, registered, plan, result, run_id, created_by
        )
    except BaseException as exc:
        _abort(engine, audit_keys, run_id, exc, created_by)
        raise
    with session_scope(session_factory(engine)) as session:
        spend = ledger.report(session, registered.name)[0].spend
    return Outcome(run_id, plan, result, version, spend)


def run_worker(
    engine: Engine,
    request: TrainingRequest,
    *,
    trainer: Trainer,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """A worker's part of a distributed run: the chief's plan, made from the same registered
    data, trained with the others. Reads the dataset's registration; writes nothing.

    With `--init-from` a worker cannot open the public model (only the service's key
    decrypts): it plans with the layout of the model it builds (the chief checked the public
    model against the same build), and training sets every weight to the chief's."""
    with session_scope(session_factory(engine)) as session:
        registered = dataset_catalog.get_dataset(session, request.dataset)
        delta = float(dataset_catalog.budget_owner(session, registered).delta or 0.0)
    data = dataset_catalog.load_registered(registered)
    layout = None
    if request.init_from is not None:
        from secure_maas.training import pretrained

        trial = architectures.build_model(
            request.arch, data.feature_shape, data.num_classes, **sizes_of(request)
        )
        layout = pretrained.public_init_of(trial, request.init_from, 0, "held by the chief")
    plan = make_plan(request, data, delta=delta, init=layout)
    return trainer(data, plan, progress=progress)


def _open_init(
    engine: Engine, store: ArtifactStore, keyring: Keyring, ref: str | None
) -> PublicInit | None:
    if ref is None:
        return None
    from secure_maas.training import pretrained

    return pretrained.load_public_init(engine, store, keyring, ref)


def _record_init_refusal(
    engine: Engine,
    audit_keys: AuditKeys,
    request: TrainingRequest,
    refusal: InitRefused,
    actor: str,
    now: datetime | None,
) -> None:
    from secure_maas.training.pretrained import NotPublic

    events.record_alone(
        engine,
        audit_keys,
        events.event(
            AdminAction.TRAIN_RUN,
            actor,
            decision=AuditDecision.DENY,
            reason_code="init-not-public" if isinstance(refusal, NotPublic) else "init-refused",
            reason=str(refusal)[:900],
            model=request.model_name,
            detail={"dataset": request.dataset, "init_from": request.init_from},
        ),
        now=now,
    )


def statement(plan: Plan, result: TrainResult) -> str | None:
    """What the model's guarantee says, in words, followed by TF Privacy's own statement.

    This is the operator's text (stored in the sealed header, shown by `models show`): it names
    the sampling rate and the training-set size. Callers get `registry.disclosure`'s instead.
    """
    report = plan.guarantee
    if report is None:
        return None
    prep = result.preprocessing
    stats = (
        f"; the preprocessing statistics' Gaussian release (noise multiplier "
        f"{report.stats_noise_multiplier:g}) is composed into every figure"
        if report.stats_noise_multiplier is not None
        else ""
    )
    lines = [
        f"DP-SGD, ({report.epsilon:.4g}, {report.delta:g})-DP for each example of the training "
        "split (add-or-remove-one adjacency), covering the whole model: every intermediate "
        "model's weights and the preprocessing.",
        f"Accounting: dp_accounting, {report.sampling} sampling at q={report.sampling_rate:.5g} "
        f"for {report.steps} steps, noise multiplier {report.noise_multiplier:.5g}, clip norm "
        f"{report.l2_norm_clip:g}; RDP ε={report.epsilon_rdp:.4g}, PLD ε={report.epsilon_pld:.4g}, "
        f"the larger ({report.accountant}) is the guarantee{stats}.",
        f"Preprocessing: {prep.description}.",
        f"Training-set size: {plan.n_train}. The analysis treats it as public (it fixes q and "
        "the number of steps, as in Abadi et al. 2016 and TF Privacy); it is not published to "
        "the model's callers.",
        "Split: each record is held out or not by a keyed hash of its own content, so a "
        "neighbouring dataset changes no other record's side; the held-out records are used "
        "only for the test accuracy and membership-inference checks, never for training.",
        "Not covered: the training loss/accuracy history and the test accuracy are computed "
        "without noise; they are for the operator and are not part of the model.",
    ]
    if plan.init is not None:
        lines.insert(1, _public_init_text(plan, result))
    if report.statement:
        lines += [
            "",
            "TF Privacy's statement for the DP-SGD steps alone (RDP, no microbatching):",
            report.statement.strip(),
        ]
    return "\n".join(lines)


def _public_init_text(plan: Plan, result: TrainResult) -> str:
    """The statement's line on what was public: the init model, by name, version and digest."""
    init = plan.init
    if init is None:  # only called with one; kept as code, never as an assert
        return ""
    frozen = ", ".join(plan.frozen_layers) or "none"
    return (
        f"Public pre-training: training started from the weights of {init.ref} (plaintext "
        f"SHA-256 {init.plaintext_sha256}), a model published as public (trained on data "
        f"declared public, `models import --public`); its weights are public and cost no ε. "
        f"The guarantee above is that of the fine-tuning on this dataset alone. Head: "
        f"{result.init_head or 'copied'}; layers kept frozen at the public weights: {frozen}; "
        "the preprocessing is this run's own."
    )


def _publish(
    engine: Engine,
    store: ArtifactStore,
    keyring: Keyring,
    audit_keys: AuditKeys,
    registered: RegisteredDataset,
    plan: Plan,
    result: TrainResult,
    run_id: int,
    actor: str,
) -> int:
    payload = codec.encode_model(result.model)
    signature = ServingSignature.from_model(result.model).to_dict()
    report = plan.guarantee
    dp = None
    if report is not None:
        dp = {
            "epsilon": report.epsilon,
            "delta": report.delta,
            "noise_multiplier": report.noise_multiplier,
            "clip_norm": report.l2_norm_clip,
            "batch_size": report.batch_size,
            "sampling_rate": report.sampling_rate,
            "epochs": report.epochs,
            "steps": report.steps,
            "accountant": f"dp_accounting {report.accountant}, {report.sampling} sampling",
            "statement": statement(plan, result),
            "preprocessing": result.preprocessing.kind,
            "stats_noise_multiplier": report.stats_noise_multiplier,
        }
    provenance = Provenance(
        Privacy.DP if report is not None else Privacy.NON_PRIVATE,
        dp=dp,
        dataset_name=registered.name,
        dataset_fingerprint=registered.fingerprint,
        extra={
            "training": {
                "run": run_id,
                "config": _model_config(plan),
                "requested_epsilon": plan.request.target_epsilon,
                "path_used": result.path_used,
                "path_reason": result.path_reason,
                "preprocessing": {
                    "kind": result.preprocessing.kind,
                    "covered_by_dp": result.preprocessing.covered_by_dp,
                    "note": result.preprocessing.description,
                },
                "privacy": _privacy_extra(report),
                "no_guarantee": _why_no_guarantee(plan),
                "nominal_privacy": (
                    None if plan.private or plan.privacy is None else plan.privacy.to_dict()
                ),
                "init_from": _init_extra(plan, result),
            }
        },
    )

    def record(session: Session, row: ModelVersion) -> None:
        ledger.finish(
            session,
            audit_keys,
            run_id,
            privacy=report,
            model_version=row.version,
            path_used=result.path_used,
            test_accuracy=result.test_accuracy,
            actor=actor,
        )

    row = publish(
        engine,
        store,
        keyring,
        name=plan.request.model_name,
        payload=payload,
        signature=signature,
        provenance=provenance,
        created_by=actor,
        record=record,
    )
    return row.version


def _init_extra(plan: Plan, result: TrainResult) -> dict[str, Any] | None:
    if plan.init is None:
        return None
    return {
        **plan.init.record(),
        "frozen_layers": list(plan.frozen_layers),
        "head": result.init_head,
    }


def _why_no_guarantee(plan: Plan) -> str | None:
    """Why a model trained here carries no DP guarantee (None when it carries one)."""
    if plan.private:
        return None
    if plan.privacy is None:
        return "trained with --no-dp"
    if plan.request.noise_seed is not None:
        return (
            "DP-SGD with a fixed --noise-seed: anyone who knows the seed can subtract the "
            "noise, so the nominal ε holds for no one"
        )
    return f"preprocessing {plan.preprocessing!r} is not covered by any DP guarantee"


def _privacy_extra(report: PrivacyReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "epsilon_rdp": report.epsilon_rdp,
        "epsilon_pld": report.epsilon_pld,
        "epsilon_once_per_epoch_rdp": report.epsilon_once_per_epoch_rdp,
        "epsilon_once_per_epoch_pld": report.epsilon_once_per_epoch_pld,
        "sampling": report.sampling,
        "number_of_examples": report.number_of_examples,
        "stats_noise_multiplier": report.stats_noise_multiplier,
    }


def _model_config(plan: Plan) -> dict[str, Any]:
    """The hyperparameters the sealed artifact's provenance records."""
    request = plan.request
    return {
        "arch": request.arch,
        "dp": plan.dp,
        "l2_norm_clip": plan.l2_norm_clip,
        "noise_multiplier": plan.noise_multiplier,
        "target_epsilon": request.target_epsilon,
        "delta": plan.delta,
        "batch_size": plan.batch_size,
        "epochs": plan.epochs,
        "steps_per_epoch": plan.steps_per_epoch,
        "steps": plan.steps,
        "learning_rate": plan.learning_rate,
        "optimizer": plan.optimizer,
        "seed": request.seed,
        "test_fraction": request.test_fraction,
        "preprocessing": plan.preprocessing,
        "clipping_path": request.clipping_path,
        "sizes": _sizes(plan),
        "stats_noise_multiplier": plan.stats_noise_multiplier,
        "init_from": None if plan.init is None else plan.init.record(),
        "frozen_layers": list(plan.frozen_layers),
    }


def _sizes(plan: Plan) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in plan.sizes.items()}


def _run_config(plan: Plan) -> dict[str, Any]:
    """What the ledger's row records about the run (the privacy check redraws its split)."""
    request = plan.request
    return {
        "arch": request.arch,
        "sizes": _sizes(plan),
        "batch_size": plan.batch_size,
        "epochs": plan.epochs,
        "learning_rate": plan.learning_rate,
        "optimizer": plan.optimizer,
        "l2_norm_clip": plan.l2_norm_clip,
        "noise_multiplier": plan.noise_multiplier,
        "target_epsilon": request.target_epsilon,
        "auto": request.auto,
        "auto_reason": plan.auto_reason,
        "seed": request.seed,
        "noise_seed_fixed": request.noise_seed is not None,
        "test_fraction": request.test_fraction,
        "preprocessing": plan.preprocessing,
        "stats_noise_multiplier": plan.stats_noise_multiplier,
        "clipping_path": request.clipping_path,
        "n_train": plan.n_train,
        "split": SPLIT_METHOD,
        "init_from": None if plan.init is None else plan.init.record(),
        "frozen_layers": list(plan.frozen_layers),
    }


def _abort(engine: Engine, keys: AuditKeys, run_id: int, exc: BaseException, actor: str) -> None:
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        ledger.abort(engine, keys, run_id, reason[:900], actor=actor)
    except Exception:  # the run stays `started`, which counts its ε just the same
        logger.exception("could not mark training run %d aborted", run_id)
