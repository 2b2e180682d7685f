"""DP-SGD training with TF Privacy's DP Keras model and Poisson sampling, to a plan.

What to train, with which noise and for how many steps is fixed beforehand by `plan.make_plan`,
which checks the request and accounts the run (ε computed there, once). `train` takes that plan
and runs it; it re-checks nothing, and refuses only a run that broke the plan (other steps than
accounted, non-trainable weights moved).

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
Gaussian release composed into the same ε (`dpstats`, `accounting.run_event`); the plan
refuses exact standardisation with DP. Training must not change any non-trainable weight (they
would carry exact statistics of the batches, as BatchNormalization's moving averages do):
that is checked after training. The per-epoch training loss and accuracy (history, progress
callback) are computed on training batches without noise, and the test accuracy on the
held-out split: they are for the operator and are not published with the model.

Randomness. `seed` fixes the train/test split and the initial weights. The batch sampling, the
DP-SGD noise and the statistics' noise come from the operating system unless `noise_seed` is
given: an adversary who knows it can subtract the noise, so a model trained with a fixed
`noise_seed` carries no guarantee (the pipeline publishes it as non-private); it exists to
reproduce figures.

Public pre-training. A plan with an init model (`transfer`, `--init-from`) builds the same
model, then copies the public model's weights into it (`pretrained.apply_init`) and freezes the
layers the plan names, before the DP trainer is made: frozen layers have no trainable variables,
so DP-SGD neither clips nor noises nor moves them, and they are checked unchanged after
training like every other non-trainable weight.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from numpy.typing import NDArray
from tensorflow_privacy.privacy.keras_models import dp_keras_model

from secure_maas.training import architectures, clipping, pretrained
from secure_maas.training.datasets import Dataset, Preprocessing, preprocessing_for
from secure_maas.training.plan import Plan, TrainingError

logger = logging.getLogger(__name__)

NON_PRIVATE = "non-private"


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


@dataclass(eq=False)
class TrainResult:
    """A model trained to its plan (softmax output `probabilities`) and what training saw.

    Its privacy is `plan.privacy`: the report computed when the run was planned, for exactly
    the steps that training ran.
    """

    model: tf.keras.Model
    plan: Plan
    history: list[dict[str, float]]
    test_accuracy: float
    path_used: str  # clipping.FAST, clipping.PER_EXAMPLE or NON_PRIVATE
    path_reason: str
    preprocessing: Preprocessing
    duration_s: float
    init_head: str | None = None  # with an init model: its head copied, or why not


@dataclass(frozen=True)
class _Fit:
    history: list[dict[str, float]]
    path_used: str
    path_reason: str


def train(dataset: Dataset, plan: Plan, *, progress: ProgressCallback | None = None) -> TrainResult:
    """Train the model `plan` describes on `dataset`, the data it was planned for.

    The plan (`plan.make_plan`) is the checked, calibrated and accounted run; nothing here
    re-checks a parameter or recomputes ε. Training keeps its side of the contract instead:
    it runs exactly `plan.steps` Poisson-sampled DP-SGD steps (the steps accounted) and
    leaves every non-trainable weight as it was. The clipping path is the plan's request:
    `auto` (fast when every layer allows it, else per-example, logged), `fast` (refused if
    impossible) or `per-example`.
    """
    started = time.monotonic()
    if dataset.fingerprint != plan.fingerprint:
        raise TrainingError("the plan was made for other data; plan the run on this dataset")
    sample_seed, tf_seed, stats_seed = secret_seeds(plan.request.noise_seed)
    prep = preprocessing_for(
        dataset,
        plan.train_indices,
        kind=plan.preprocessing,
        rng=np.random.default_rng(stats_seed),
        stats_noise_multiplier=plan.stats_noise_multiplier,
    )
    tf.keras.utils.set_random_seed(plan.request.seed)
    model = architectures.build_model(
        plan.request.arch,
        dataset.feature_shape,
        dataset.num_classes,
        preprocessing=prep,
        **plan.sizes,
    )
    head = None
    if plan.init is not None:
        head = pretrained.apply_init(model, plan.init, plan.frozen_layers)
        logger.info(
            "starting from public model %s (head %s), frozen: %s",
            plan.init.ref,
            head,
            ", ".join(plan.frozen_layers) or "none",
        )
    x_train, y_train = dataset.x[plan.train_indices], dataset.y[plan.train_indices]
    tf.random.set_seed(tf_seed)
    callback = _Progress(plan.epochs, progress)
    if plan.privacy is None:
        fit = _fit_non_private(model, plan, x_train, y_train, callback)
    else:
        rng = np.random.default_rng(sample_seed)
        fit = _fit_dp(model, plan, plan.privacy.noise_multiplier, x_train, y_train, rng, callback)
    return TrainResult(
        model=model,
        plan=plan,
        history=fit.history,
        test_accuracy=evaluate(model, dataset.x[plan.test_indices], dataset.y[plan.test_indices]),
        path_used=fit.path_used,
        path_reason=fit.path_reason,
        preprocessing=prep,
        duration_s=time.monotonic() - started,
        init_head=head,
    )


def _fit_dp(
    model: tf.keras.Model,
    plan: Plan,
    noise_multiplier: float,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    rng: np.random.Generator,
    progress: _Progress,
) -> _Fit:
    """DP-SGD for exactly the plan's steps; refuses a run that ran other steps or moved
    non-trainable state (the guarantee would not describe it)."""
    trainer, clipping_plan = make_dp_trainer(
        model,
        l2_norm_clip=plan.l2_norm_clip,
        noise_multiplier=noise_multiplier,
        batch_size=plan.batch_size,
        optimizer=plan.optimizer,
        learning_rate=plan.learning_rate,
        path=plan.request.clipping_path,
    )
    batches = _poisson_batches(x, y, plan.sampling_rate, plan.batch_size, plan.steps, rng)
    frozen = non_trainable_values(model)
    history = trainer.fit(
        batches,
        epochs=plan.epochs,
        steps_per_epoch=plan.steps_per_epoch,
        verbose=0,
        callbacks=[progress],
    )
    done = int(trainer.optimizer.iterations.numpy())
    if done != plan.steps:
        raise TrainingError(f"training ran {done} steps, the accountant assumed {plan.steps}")
    check_unchanged(model, frozen)
    return _Fit(progress.rows(history.history), clipping_plan.path, clipping_plan.reason)


def _fit_non_private(
    model: tf.keras.Model,
    plan: Plan,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    progress: _Progress,
) -> _Fit:
    """Plain minibatch training, for a run planned without DP (`--no-dp`)."""
    logger.warning("training WITHOUT differential privacy (dp=False)")
    trainer = architectures.logits_model(model)
    frozen = non_trainable_values(model)
    trainer.compile(
        optimizer=make_optimizer(plan.optimizer, plan.learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = trainer.fit(
        x,
        y,
        batch_size=plan.batch_size,
        epochs=plan.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[progress],
    )
    check_unchanged(model, frozen)
    return _Fit(progress.rows(history.history), NON_PRIVATE, "dp=False: trained without privacy")


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
        optimizer=make_optimizer(optimizer, learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.SUM
        ),
        metrics=["accuracy"],
    )
    return trainer, plan


def make_optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate)
    if name == "momentum":
        return tf.keras.optimizers.SGD(learning_rate, momentum=0.9)
    return tf.keras.optimizers.Adam(learning_rate)


def non_trainable_values(model: tf.keras.Model) -> list[NDArray[Any]]:
    return [np.array(v.numpy(), copy=True) for v in model.non_trainable_variables]


def check_unchanged(model: tf.keras.Model, before: list[NDArray[Any]]) -> None:
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


def secret_seeds(noise_seed: int | None) -> tuple[int, int, int]:
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
