"""DP-SGD training with TF Privacy's DP Keras model, Poisson sampling and exact accounting.

How a step is made private. Each step draws a Poisson sample of the training split (every
example joins independently with probability q = batch_size / n), which is the sampling the
accountant assumes. The batch goes to TF Privacy's `DPModel` (`keras_models.dp_keras_model`)
with a loss of reduction SUM and sample weight 1/b (b = batch_size, the EXPECTED batch size),
a clip norm C/b and noise multiplier sigma. Its update is therefore

    (1/b) * ( sum_i clip_C(grad loss_i) + N(0, sigma² C² I) ),

a fixed denominator: dividing by the realised batch size instead (what a mean loss does)
would make the noise scale reveal how many examples were sampled.

Clipping path. When every trainable layer has a fast gradient-norm function (`clipping`),
DPModel takes its fast path (ghost clipping: two passes, no per-example gradients). Otherwise
it takes its per-example path (`tf.vectorized_map` over one-example microbatches); the choice
is made before training, logged with its reason and reported in `TrainResult.path_used`. The
per-example path of DPModel averages over the realised batch; `_PoissonDPModel` overrides that
one reduction to the sum, matching the fast path. XLA stays off: Poisson batches vary in size
and XLA would recompile for every size.

What is covered. The DP guarantee is about the whole model (and every intermediate one): its
weights and its preprocessing layer. With `dp-standardize` the preprocessing statistics are a
Gaussian release composed into the same ε (`dpstats`, `accounting.run_event`); exact
standardisation is refused with DP. Training must not change any non-trainable weight (they
would carry exact statistics of the batches, as BatchNormalization's moving averages do):
that is checked after training. The per-epoch training loss and accuracy (history, progress
callback) are computed on training batches without noise, and the test accuracy on the
held-out split: they are for the operator and are not published with the model.

Randomness. `seed` fixes the train/test split and the initial weights. The batch sampling, the
DP-SGD noise and the statistics' noise come from the operating system unless `noise_seed` is
given: an adversary who knows it can subtract the noise, so a model trained with a fixed
`noise_seed` carries no guarantee (the pipeline publishes it as non-private); it exists to
reproduce figures.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from numpy.typing import NDArray
from tensorflow_privacy.privacy.keras_models import dp_keras_model

from secure_maas.errors import SecureMaasError
from secure_maas.training import accounting, architectures, clipping, dpstats, options
from secure_maas.training.accounting import PrivacyReport
from secure_maas.training.dataset_catalog import default_delta
from secure_maas.training.datasets import (
    Dataset,
    Preprocessing,
    preprocessing_for,
    resolve_preprocessing,
    split,
)
from secure_maas.training.options import (
    CLIPPING_PATHS,
    COVERED_PREPROCESSING,
    OPTIMIZERS,
)

logger = logging.getLogger(__name__)

NON_PRIVATE = "non-private"


class TrainingError(SecureMaasError):
    """Training parameters that cannot be honoured, or a run that broke its own contract."""


@dataclass(frozen=True)
class EpochProgress:
    """What the CLI shows after each epoch (`epoch` counts from 1)."""

    epoch: int
    epochs: int
    loss: float
    accuracy: float
    elapsed_s: float
    eta_s: float


ProgressCallback = Callable[[EpochProgress], None]


@dataclass(frozen=True)
class TrainConfig:
    """The hyperparameters of a run, as given or derived before training."""

    arch: str
    dp: bool
    l2_norm_clip: float
    noise_multiplier: float | None
    target_epsilon: float | None
    delta: float | None
    batch_size: int
    epochs: int
    steps_per_epoch: int
    steps: int
    learning_rate: float
    optimizer: str
    seed: int
    test_fraction: float
    preprocessing: str
    clipping_path: str = "auto"
    sizes: dict[str, Any] = field(default_factory=dict)
    stats_noise_multiplier: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class TrainResult:
    """A trained model (softmax output `probabilities`) and everything said about it."""

    model: tf.keras.Model
    history: list[dict[str, float]]
    test_accuracy: float
    privacy: PrivacyReport | None  # None exactly when dp is False
    path_used: str  # clipping.FAST, clipping.PER_EXAMPLE or NON_PRIVATE
    path_reason: str
    dp: bool
    config: TrainConfig
    preprocessing: Preprocessing
    train_indices: NDArray[np.int64]
    test_indices: NDArray[np.int64]
    duration_s: float


def plan_steps(n: int, batch_size: int, epochs: int) -> tuple[float, int, int]:
    """(sampling rate, steps per epoch, steps): an epoch is round(n / b) Poisson steps."""
    if not 1 <= batch_size <= n:
        raise TrainingError(f"batch size must be between 1 and {n} (training examples)")
    if epochs < 1:
        raise TrainingError("epochs must be at least 1")
    steps_per_epoch = max(1, round(n / batch_size))
    return batch_size / n, steps_per_epoch, steps_per_epoch * epochs


def train(
    dataset: Dataset,
    arch: str,
    *,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    l2_norm_clip: float = 1.0,
    batch_size: int = 256,
    epochs: int = 60,
    learning_rate: float = 0.05,
    optimizer: str = "momentum",
    delta: float | None = None,
    seed: int = 0,
    dp: bool = True,
    progress: ProgressCallback | None = None,
    test_fraction: float = 0.2,
    preprocessing: str = "auto",
    noise_seed: int | None = None,
    sizes: dict[str, Any] | None = None,
    clipping_path: str = "auto",
    stats_noise_multiplier: float | None = None,
) -> TrainResult:
    """Train `arch` on `dataset` with DP-SGD (or without privacy when `dp=False`).

    Give exactly one of `noise_multiplier` and `target_epsilon` when `dp` is true; a target ε
    is turned into the noise multiplier before any training (`accounting.calibrate_noise`), for
    the whole run: the preprocessing statistics' release (`dp-standardize`, noise multiplier
    `stats_noise_multiplier`) included. The privacy report is computed for the steps actually
    run, which are checked to be the steps planned. `clipping_path` is `auto` (fast when every
    layer allows it, else per-example, logged), `fast` (refuse if impossible) or `per-example`
    (force it).
    """
    started = time.monotonic()
    sizes = dict(sizes or {})
    if arch not in options.ARCHITECTURES:
        raise TrainingError(f"unknown architecture {arch!r}; choose one of {options.ARCHITECTURES}")
    if optimizer not in OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    if not learning_rate > 0:
        raise TrainingError("learning rate must be positive")
    if clipping_path not in CLIPPING_PATHS:
        raise TrainingError(f"unknown clipping path {clipping_path!r}; use one of {CLIPPING_PATHS}")
    train_idx, test_idx = split(dataset, test_fraction=test_fraction, seed=seed)
    n = len(train_idx)
    sampling_rate, steps_per_epoch, steps = plan_steps(n, batch_size, epochs)
    prep_kind = resolve_preprocessing(dataset, preprocessing)
    stats_noise = stats_noise_for(prep_kind, stats_noise_multiplier)
    if dp:
        if (noise_multiplier is None) == (target_epsilon is None):
            raise TrainingError("give exactly one of noise multiplier and target ε")
        if not l2_norm_clip > 0 or not math.isfinite(l2_norm_clip):
            raise TrainingError("the clip norm must be a positive number")
        if prep_kind not in COVERED_PREPROCESSING:
            raise TrainingError(
                f"preprocessing {prep_kind!r} stores exact statistics of the training data, "
                "which no DP guarantee covers: use dp-standardize (the default without a "
                "public range), declare public feature ranges, or train with --no-dp"
            )
        delta = default_delta(n) if delta is None else delta
        if not 0 < delta < 1 / n:
            raise TrainingError(f"δ must be in (0, 1/n) = (0, {1 / n:.3g}) for {n} examples")
        if target_epsilon is not None:
            noise_multiplier = accounting.calibrate_noise(
                target_epsilon,
                sampling_rate,
                steps,
                delta,
                stats_noise_multiplier=stats_noise,
            )
            logger.info(
                "calibrated noise multiplier %.4f for ε=%g at δ=%g (%d steps, q=%.4f)",
                noise_multiplier,
                target_epsilon,
                delta,
                steps,
                sampling_rate,
            )
        if noise_multiplier is None or not noise_multiplier > 0:
            raise TrainingError("the noise multiplier must be positive (use dp=False for none)")
    config = TrainConfig(
        arch=arch,
        dp=dp,
        l2_norm_clip=l2_norm_clip,
        noise_multiplier=noise_multiplier if dp else None,
        target_epsilon=target_epsilon if dp else None,
        delta=delta if dp else None,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        steps=steps,
        learning_rate=learning_rate,
        optimizer=optimizer,
        seed=seed,
        test_fraction=test_fraction,
        preprocessing=prep_kind,
        clipping_path=clipping_path,
        sizes=sizes,
        stats_noise_multiplier=stats_noise,
    )

    sample_seed, tf_seed, stats_seed = _secret_seeds(noise_seed)
    prep = preprocessing_for(
        dataset,
        train_idx,
        kind=prep_kind,
        rng=np.random.default_rng(stats_seed),
        stats_noise_multiplier=stats_noise,
    )
    tf.keras.utils.set_random_seed(seed)
    model = architectures.build_model(
        arch, dataset.feature_shape, dataset.num_classes, preprocessing=prep, **sizes
    )
    x_train, y_train = dataset.x[train_idx], dataset.y[train_idx]
    tf.random.set_seed(tf_seed)
    callbacks = [_Progress(epochs, progress)]

    if dp:
        if noise_multiplier is None or delta is None:  # narrowed above; keeps mypy honest
            raise TrainingError("internal: DP parameters missing")
        trainer, plan = make_dp_trainer(
            model,
            l2_norm_clip=l2_norm_clip,
            noise_multiplier=noise_multiplier,
            batch_size=batch_size,
            optimizer=optimizer,
            learning_rate=learning_rate,
            path=clipping_path,
        )
        data = _poisson_batches(
            x_train, y_train, sampling_rate, batch_size, steps, np.random.default_rng(sample_seed)
        )
        frozen = _non_trainable_values(model)
        history = trainer.fit(
            data, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0, callbacks=callbacks
        )
        done = int(trainer.optimizer.iterations.numpy())
        if done != steps:
            raise TrainingError(f"training ran {done} steps, the accountant assumed {steps}")
        _check_unchanged(model, frozen)
        privacy: PrivacyReport | None = accounting.epsilon(
            noise_multiplier,
            sampling_rate,
            steps,
            delta,
            l2_norm_clip=l2_norm_clip,
            batch_size=batch_size,
            number_of_examples=n,
            stats_noise_multiplier=stats_noise,
        )
        path, reason = plan.path, plan.reason
    else:
        logger.warning("training WITHOUT differential privacy (dp=False)")
        trainer = architectures.logits_model(model)
        trainer.compile(
            optimizer=_optimizer(optimizer, learning_rate),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        history = trainer.fit(
            x_train,
            y_train,
            batch_size=batch_size,
            epochs=epochs,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
        privacy, path, reason = None, NON_PRIVATE, "dp=False: trained without privacy"

    test_accuracy = evaluate(model, dataset.x[test_idx], dataset.y[test_idx])
    return TrainResult(
        model=model,
        history=callbacks[0].rows(history.history),
        test_accuracy=test_accuracy,
        privacy=privacy,
        path_used=path,
        path_reason=reason,
        dp=dp,
        config=config,
        preprocessing=prep,
        train_indices=train_idx,
        test_indices=test_idx,
        duration_s=time.monotonic() - started,
    )


def evaluate(model: tf.keras.Model, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    """Accuracy of the argmax prediction."""
    if len(x) == 0:
        return float("nan")
    predicted = np.argmax(model.predict(x, batch_size=1024, verbose=0), axis=-1)
    return float(np.mean(predicted == y))


class _PoissonDPModel(dp_keras_model.DPModel):  # type: ignore[misc]
    """TF Privacy's DPModel whose per-example path sums, like its fast path with a SUM loss."""

    def _reduce_per_example_grads(self, stacked_grads: tf.Tensor) -> tf.Tensor:
        summed = tf.reduce_sum(stacked_grads, axis=0)
        noise_stddev = self._l2_norm_clip * self._noise_multiplier
        return summed + tf.random.normal(tf.shape(summed), stddev=noise_stddev)


def make_dp_trainer(
    model: tf.keras.Model,
    *,
    l2_norm_clip: float,
    noise_multiplier: float,
    batch_size: int,
    optimizer: str,
    learning_rate: float,
    path: str = "auto",
) -> tuple[tf.keras.Model, clipping.ClippingPlan]:
    """The compiled DP Keras model that trains `model`'s layers, and the clipping path it takes.

    Fed batches `(x, y, 1/batch_size)`, each step applies (1/b)(sum of clipped gradients +
    N(0, sigma²C²)), see the module docstring. `path`: `auto`, `fast` or `per-example`.
    """
    incompatible = clipping.dp_incompatible_reason(model)
    if incompatible is not None:
        raise TrainingError(incompatible)
    registry = clipping.make_layer_registry()
    plan = clipping.plan_clipping(model, registry)
    if path == "per-example":
        plan = clipping.ClippingPlan(clipping.PER_EXAMPLE, "the per-example path was requested")
    elif path == "fast" and not plan.fast:
        raise TrainingError(f"the fast clipping path is impossible: {plan.reason}")
    elif path not in ("auto", "fast"):
        raise TrainingError(f"unknown clipping path {path!r}: use auto, fast or per-example")
    if plan.fast:
        logger.info("DP-SGD clipping path: %s (%s)", plan.path, plan.reason)
    else:
        logger.warning("DP-SGD clipping path: %s, because %s", plan.path, plan.reason)
    trainer = _PoissonDPModel(
        l2_norm_clip=l2_norm_clip / batch_size,
        noise_multiplier=noise_multiplier,
        num_microbatches=None,
        use_xla=False,
        layer_registry=registry if plan.fast else None,
        inputs=model.inputs,
        outputs=model.get_layer(architectures.LOGITS_NAME).output,
        name=f"dp_{model.name}",
    )
    if bool(trainer._enable_fast_peg_computation) != plan.fast:
        raise TrainingError(
            f"TF Privacy chose a different clipping path than planned ({plan.path}); refusing"
        )
    trainer.compile(
        optimizer=_optimizer(optimizer, learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.SUM
        ),
        metrics=["accuracy"],
    )
    return trainer, plan


def _optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate)
    if name == "momentum":
        return tf.keras.optimizers.SGD(learning_rate, momentum=0.9)
    return tf.keras.optimizers.Adam(learning_rate)


def stats_noise_for(kind: str, stats_noise_multiplier: float | None) -> float | None:
    """The statistics' noise multiplier of a run whose preprocessing is `kind` (resolved):
    the default for dp-standardize, none otherwise (giving one then is an error)."""
    if kind != "dp-standardize":
        if stats_noise_multiplier is not None:
            raise TrainingError(
                f"a statistics noise multiplier applies to dp-standardize only, not {kind}"
            )
        return None
    if stats_noise_multiplier is None:
        return dpstats.DEFAULT_NOISE_MULTIPLIER
    if not math.isfinite(stats_noise_multiplier) or not stats_noise_multiplier > 0:
        raise TrainingError("the statistics' noise multiplier must be a positive number")
    return float(stats_noise_multiplier)


def _non_trainable_values(model: tf.keras.Model) -> list[NDArray[Any]]:
    return [np.array(v.numpy(), copy=True) for v in model.non_trainable_variables]


def _check_unchanged(model: tf.keras.Model, before: list[NDArray[Any]]) -> None:
    """Refuse a model whose training changed non-trainable state (it holds exact statistics of
    the training batches, outside the DP guarantee: BatchNormalization's moving averages)."""
    after = model.non_trainable_variables
    changed = [
        v.name
        for v, old in zip(after, before, strict=True)
        if not np.array_equal(v.numpy(), old, equal_nan=True)
    ]
    if len(after) != len(before) or changed:
        raise TrainingError(
            "training changed non-trainable weights "
            f"({', '.join(changed) or 'their number'}); they would hold exact statistics of "
            "the training data, which the DP guarantee does not cover"
        )


def _secret_seeds(noise_seed: int | None) -> tuple[int, int, int]:
    """Seeds of the batch sampling, the DP-SGD noise and the statistics' noise: from the OS,
    or all derived from `noise_seed` (which voids the guarantee)."""
    root = np.random.SeedSequence(secrets.randbits(128) if noise_seed is None else noise_seed)
    sample, noise, stats = root.spawn(3)
    return (
        int(sample.generate_state(1, np.uint64)[0]),
        int(noise.generate_state(1, np.uint32)[0] & 0x7FFFFFFF),
        int(stats.generate_state(1, np.uint64)[0]),
    )


def _poisson_batches(
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    sampling_rate: float,
    batch_size: int,
    steps: int,
    rng: np.random.Generator,
) -> tf.data.Dataset:
    """`steps` Poisson-sampled batches of (x, y, weight 1/b); exactly the accountant's sampling.

    An empty draw still makes a step (the update is then noise only): it carries one all-zero
    example of weight 0, whose gradient is zero, because Keras cannot run a zero-row batch.
    """
    weight = np.float32(1.0 / batch_size)

    def batches() -> Iterator[tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]:
        for _ in range(steps):
            idx = np.flatnonzero(rng.random(len(x)) < sampling_rate)
            if len(idx) == 0:
                yield (
                    np.zeros((1, *x.shape[1:]), np.float32),
                    np.zeros(1, np.int64),
                    np.zeros(1, np.float32),
                )
            else:
                yield x[idx], y[idx], np.full(len(idx), weight, np.float32)

    signature = (
        tf.TensorSpec((None, *x.shape[1:]), tf.float32),
        tf.TensorSpec((None,), tf.int64),
        tf.TensorSpec((None,), tf.float32),
    )
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


class _Progress(tf.keras.callbacks.Callback):  # type: ignore[misc]
    """Calls the progress callback after every epoch and timestamps the history."""

    def __init__(self, epochs: int, callback: ProgressCallback | None) -> None:
        super().__init__()
        self._epochs = epochs
        self._callback = callback
        self._started = time.monotonic()
        self._elapsed: list[float] = []

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        elapsed = time.monotonic() - self._started
        self._elapsed.append(elapsed)
        done = epoch + 1
        if self._callback is not None:
            self._callback(
                EpochProgress(
                    epoch=done,
                    epochs=self._epochs,
                    loss=float(logs.get("loss", float("nan"))),
                    accuracy=float(logs.get("accuracy", float("nan"))),
                    elapsed_s=elapsed,
                    eta_s=elapsed / done * (self._epochs - done),
                )
            )

    def rows(self, history: dict[str, list[float]]) -> list[dict[str, float]]:
        keys = [k for k in ("loss", "accuracy") if k in history]
        return [
            {"epoch": i + 1, **{k: float(history[k][i]) for k in keys}, "elapsed_s": t}
            for i, t in enumerate(self._elapsed)
        ]
