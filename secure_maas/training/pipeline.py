"""A training run end to end: registered data, plan, budget, DP-SGD, seal, publish, ledger.

Order, and why:

1. Everything that can fail without touching the data fails first: the model name, the keys
   (audit, service, publisher), the hyperparameters, the architecture against the dataset's
   shape. Budget is only reserved for a run that can run.
2. The registered data is read again and must have the fingerprint it was registered with
   (else a `deny` event and `DataChanged`).
3. The privacy of the whole run is computed before any training (noise calibrated from a target
   ε, or ε from a given noise multiplier), from public quantities only: n, batch size, epochs,
   and the noise of the preprocessing statistics' release when there is one.
4. The ledger reserves that ε or refuses the run (`ledger.reserve`), in one transaction. A run
   whose model could carry no guarantee (`--no-dp`, a fixed `--noise-seed`: anyone who knows
   it can subtract the noise) reserves nothing and needs data registered to allow it.
5. DP-SGD trains in memory (`train.train`); the steps run must be the steps accounted.
6. The model is encoded in memory and published; the run is marked finished, with its audit
   events, inside the publishing transaction: a version exists exactly when its run finished.
   Any failure after step 4 marks the run aborted (its ε stays counted); a killed process
   leaves it `started` (counted too) and nothing published.

TensorFlow is imported by this module; the CLI imports it only inside `secure-maas train`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
from secure_maas.training import (
    accounting,
    architectures,
    auto,
    dataset_catalog,
    events,
    ledger,
    options,
    train,
)
from secure_maas.training.accounting import PrivacyReport
from secure_maas.training.datasets import (
    SPLIT_METHOD,
    Dataset,
    resolve_preprocessing,
    split,
)
from secure_maas.training.models import RegisteredDataset
from secure_maas.training.options import COVERED_PREPROCESSING, PREPROCESSING
from secure_maas.training.train import (
    ProgressCallback,
    TrainingError,
    TrainResult,
    stats_noise_for,
)

logger = logging.getLogger(__name__)

DEFAULT_EPOCHS = 60
DEFAULT_LEARNING_RATE = 0.05
DEFAULT_OPTIMIZER = "momentum"
DEFAULT_CLIP = 1.0


@dataclass(frozen=True)
class TrainingRequest:
    """What the operator asked for; None means "the default" (or `--auto`'s choice)."""

    dataset: str
    model_name: str
    arch: str
    dp: bool = True
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    auto: bool = False
    l2_norm_clip: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    seed: int = 0
    noise_seed: int | None = None
    test_fraction: float = 0.2
    preprocessing: str = "auto"
    clipping_path: str = "auto"
    sizes: dict[str, Any] = field(default_factory=dict)
    stats_noise_multiplier: float | None = None


@dataclass(frozen=True)
class Plan:
    """The run as it will train, fixed before training; `privacy` is its exact guarantee."""

    request: TrainingRequest
    dataset: str
    n_train: int
    n_test: int
    batch_size: int
    epochs: int
    steps: int
    learning_rate: float
    optimizer: str
    l2_norm_clip: float
    noise_multiplier: float | None
    delta: float | None
    privacy: PrivacyReport | None  # the mechanism's (ε, δ); None without DP-SGD
    preprocessing: str  # resolved: public-range, dp-standardize, standardize or none
    stats_noise_multiplier: float | None
    auto_reason: str | None = None

    @property
    def private(self) -> bool:
        """Whether the model will carry the guarantee: DP-SGD with secret noise (a fixed
        noise seed publishes the noise) and preprocessing the guarantee covers."""
        return (
            self.privacy is not None
            and self.request.noise_seed is None
            and self.preprocessing in COVERED_PREPROCESSING
        )

    @property
    def guarantee(self) -> PrivacyReport | None:
        """The privacy report the model and the ledger carry: None unless `private`."""
        return self.privacy if self.private else None


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
) -> Outcome:
    """Train, publish and account one run (see the module docstring for the order)."""
    check_name(request.model_name)
    _check_request(request)
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
    # An impossible architecture or option fails here, before calibration and any reservation.
    architectures.build_model(request.arch, data.feature_shape, data.num_classes, **request.sizes)
    plan = make_plan(request, data, delta=delta)
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
        result = _train(data, plan, progress)
        version = _publish(
            engine, store, keyring, audit_keys, registered, plan, result, run_id, created_by
        )
    except BaseException as exc:
        _abort(engine, audit_keys, run_id, exc, created_by)
        raise
    with session_scope(session_factory(engine)) as session:
        spend = ledger.report(session, registered.name)[0].spend
    return Outcome(run_id, plan, result, version, spend)


def make_plan(request: TrainingRequest, data: Dataset, *, delta: float) -> Plan:
    """Hyperparameters and the exact (ε, δ) of the run, from public quantities only."""
    _check_request(request)
    train_idx, test_idx = split(data, test_fraction=request.test_fraction, seed=request.seed)
    n = len(train_idx)
    preprocessing = resolve_preprocessing(data, request.preprocessing)
    stats_noise = stats_noise_for(preprocessing, request.stats_noise_multiplier)
    if request.dp and preprocessing not in COVERED_PREPROCESSING:
        raise TrainingError(
            f"preprocessing {preprocessing!r} stores exact statistics of the training data, "
            "which no DP guarantee covers: use dp-standardize (the default without a public "
            "range), declare public feature ranges at registration, or train with --no-dp"
        )
    suggestion = None
    if request.auto:
        if request.target_epsilon is None:
            raise TrainingError("--auto chooses hyperparameters for a target ε: give one")
        suggestion = auto.suggest(
            n, request.target_epsilon, delta, stats_noise_multiplier=stats_noise
        )
    batch = _first(request.batch_size, suggestion and suggestion.batch_size)
    batch = auto.auto_batch_size(n) if batch is None else int(batch)
    epochs = int(_first(request.epochs, suggestion and suggestion.epochs, DEFAULT_EPOCHS))
    rate = float(
        _first(
            request.learning_rate, suggestion and suggestion.learning_rate, DEFAULT_LEARNING_RATE
        )
    )
    optimizer = str(
        _first(request.optimizer, suggestion and suggestion.optimizer, DEFAULT_OPTIMIZER)
    )
    clip = float(_first(request.l2_norm_clip, suggestion and suggestion.l2_norm_clip, DEFAULT_CLIP))
    sampling_rate, _, steps = train.plan_steps(n, batch, epochs)
    sigma: float | None = None
    privacy: PrivacyReport | None = None
    if request.dp:
        if not 0 < delta < 1 / n:
            raise TrainingError(f"δ={delta:g} is not below 1/n = {1 / n:.3g} for {n} examples")
        if not clip > 0 or not math.isfinite(clip):
            raise TrainingError("the clip norm must be a positive number")
        if request.target_epsilon is not None:
            sigma = accounting.calibrate_noise(
                request.target_epsilon,
                sampling_rate,
                steps,
                delta,
                stats_noise_multiplier=stats_noise,
            )
        else:
            sigma = float(request.noise_multiplier or 0.0)
        privacy = accounting.epsilon(
            sigma,
            sampling_rate,
            steps,
            delta,
            l2_norm_clip=clip,
            batch_size=batch,
            number_of_examples=n,
            stats_noise_multiplier=stats_noise,
        )
    return Plan(
        request=request,
        dataset=request.dataset,
        n_train=n,
        n_test=len(test_idx),
        batch_size=batch,
        epochs=epochs,
        steps=steps,
        learning_rate=rate,
        optimizer=optimizer,
        l2_norm_clip=clip,
        noise_multiplier=sigma,
        delta=delta if request.dp else None,
        privacy=privacy,
        preprocessing=preprocessing,
        stats_noise_multiplier=stats_noise,
        auto_reason=suggestion.why if suggestion else None,
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
    if report.statement:
        lines += [
            "",
            "TF Privacy's statement for the DP-SGD steps alone (RDP, no microbatching):",
            report.statement.strip(),
        ]
    return "\n".join(lines)


def _train(data: Dataset, plan: Plan, progress: ProgressCallback | None) -> TrainResult:
    request = plan.request
    result = train.train(
        data,
        request.arch,
        noise_multiplier=plan.noise_multiplier,
        l2_norm_clip=plan.l2_norm_clip,
        batch_size=plan.batch_size,
        epochs=plan.epochs,
        learning_rate=plan.learning_rate,
        optimizer=plan.optimizer,
        delta=plan.delta,
        seed=request.seed,
        dp=request.dp,
        progress=progress,
        test_fraction=request.test_fraction,
        preprocessing=request.preprocessing,
        noise_seed=request.noise_seed,
        sizes=dict(request.sizes),
        clipping_path=request.clipping_path,
        stats_noise_multiplier=plan.stats_noise_multiplier,
    )
    if result.preprocessing.kind != plan.preprocessing:
        raise TrainingError("the run's preprocessing differs from its plan")
    planned, got = plan.privacy, result.privacy
    if (planned is None) != (got is None):
        raise TrainingError("the run's privacy differs from its plan")
    if (
        planned is not None
        and got is not None
        and (got.steps != planned.steps or got.epsilon > planned.epsilon * (1 + 1e-9))
    ):
        raise TrainingError(
            f"the run spent ε={got.epsilon:.6g} in {got.steps} steps; it planned "
            f"ε={planned.epsilon:.6g} in {planned.steps}"
        )
    return result


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
    report = result.privacy if plan.private else None
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
                "config": result.config.to_dict(),
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
                    None if plan.private or result.privacy is None else result.privacy.to_dict()
                ),
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


def _run_config(plan: Plan) -> dict[str, Any]:
    request = plan.request
    return {
        "arch": request.arch,
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in request.sizes.items()},
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
    }


def _abort(engine: Engine, keys: AuditKeys, run_id: int, exc: BaseException, actor: str) -> None:
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        ledger.abort(engine, keys, run_id, reason[:900], actor=actor)
    except Exception:  # the run stays `started`, which counts its ε just the same
        logger.exception("could not mark training run %d aborted", run_id)


def _check_request(request: TrainingRequest) -> None:
    if request.arch not in options.ARCHITECTURES:
        raise TrainingError(
            f"unknown architecture {request.arch!r}; choose one of "
            f"{', '.join(options.ARCHITECTURES)}"
        )
    if request.dp:
        if request.noise_multiplier is None and request.target_epsilon is None:
            raise TrainingError("give --noise-multiplier or --target-epsilon (or --no-dp)")
        if request.noise_multiplier is not None and request.target_epsilon is not None:
            raise TrainingError("give --noise-multiplier or --target-epsilon, not both")
        if request.noise_multiplier is not None and not (
            math.isfinite(request.noise_multiplier) and request.noise_multiplier > 0
        ):
            raise TrainingError("the noise multiplier must be a positive number")
        if request.target_epsilon is not None and not (
            math.isfinite(request.target_epsilon) and request.target_epsilon > 0
        ):
            raise TrainingError("the target ε must be a positive number")
    elif request.noise_multiplier is not None or request.target_epsilon is not None or request.auto:
        raise TrainingError("--no-dp takes no noise multiplier, target ε or --auto")
    if request.optimizer is not None and request.optimizer not in options.OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {request.optimizer!r}; use {options.OPTIMIZERS}")
    if request.learning_rate is not None and not (
        math.isfinite(request.learning_rate) and request.learning_rate > 0
    ):
        raise TrainingError("the learning rate must be a positive number")
    if request.clipping_path not in options.CLIPPING_PATHS:
        raise TrainingError(f"unknown clipping path {request.clipping_path!r}")
    if request.preprocessing not in PREPROCESSING:
        raise TrainingError(f"unknown preprocessing {request.preprocessing!r}")


def _first(*values: Any) -> Any:
    """The first value that is not None (an explicit flag beats `--auto`, which beats defaults)."""
    return next((value for value in values if value is not None), None)
