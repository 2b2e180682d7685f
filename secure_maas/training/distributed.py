"""DP-SGD on several workers with `tf.distribute.MultiWorkerMirroredStrategy`, one global step
at a time, with the single-process run's privacy.

One process per worker (`cluster`: `TF_CONFIG`, one chief), one replica each. For every global
step of the plan:

* **Sampling.** Worker r holds the r-th shard of the training split (positions r, r + W, ...,
  W workers) and draws a Poisson sample of it at the plan's rate q, with its own secret
  generator. Every example of the whole split joins independently with probability q, so the
  union of the workers' draws is a Poisson sample of the whole at rate q: the sampling the
  accountant is given (the plan's q and steps, computed for the whole split, exactly as for
  one process).
* **Clipping.** Each replica clips every example's gradient to norm C with TF Privacy's fast
  (ghost) clipping (`clip_grads.compute_clipped_gradients_and_outputs`, the function its
  `DPModel` uses) and sums them, scaled by 1/B (B the plan's expected batch size, global).
* **Noise, once.** Replica 0, which lives on the chief, adds N(0, sigma² C²/B²) per coordinate
  to its sum; the others add nothing. Not once per replica (W times the variance: needless noise),
  not zero (no guarantee).
* **All-reduce.** The replicas' vectors are summed (`ReduceOp.SUM`), so every worker applies
  (1/B)(Σ_all clip_C(g_i) + N(0, sigma² C² I)), the update of `train._PoissonDPModel`, with the
  optimizer's own cross-replica aggregation switched off (it would average).

Every worker runs the same plan (the same steps), made from the same registered data; the
workers check this at the start by all-reducing the plan's figures and a checksum of the initial
weights (which `MultiWorkerMirroredStrategy` broadcasts from the chief when the variables are
made) and refuse to train if any differs. A worker that dies makes the others' next collective
fail (the strategy's coordination service, or the collective timeout): the run fails, on the
chief, as a killed run does, and its ε stays counted.

With `dp-standardize`, every worker receives the chief's released statistics before the model
is built (`chiefs_statistics`), so every replica scales its inputs alike and the model carries
the one release the plan accounted. With `--init-from`, only the chief opens the public model
(through the registry, with the service's key); a worker plans with its layout
(`pipeline.run_worker`), and every weight is then set to the chief's (`chiefs_weights`) before
the first step. Not distributed yet, and refused by the plan: the per-example clipping path.

`MultiWorkerMirroredStrategy` must be made before TensorFlow runs anything else in the process
(`make_strategy`, first thing in `train --distributed`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace

import numpy as np
import tensorflow as tf
from numpy.typing import NDArray
from tensorflow_privacy.privacy.fast_gradient_clipping import clip_grads

from secure_maas.training import architectures, clipping, pretrained
from secure_maas.training.cluster import Cluster
from secure_maas.training.datasets import Dataset, Preprocessing, preprocessing_for
from secure_maas.training.plan import Plan, TrainingError, TrainingRequest
from secure_maas.training.train import (
    EpochProgress,
    ProgressCallback,
    TrainResult,
    check_unchanged,
    evaluate,
    make_optimizer,
    non_trainable_values,
    secret_seeds,
)

logger = logging.getLogger(__name__)

#: How long one collective may wait for the others (the chief reserves and plans first).
COLLECTIVE_TIMEOUT_S = 300.0
PATH = "distributed fast-clipping"


def make_strategy(
    timeout_s: float = COLLECTIVE_TIMEOUT_S,
) -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy, from `TF_CONFIG`; blocks until every worker has joined."""
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def check_same_request(strategy: tf.distribute.Strategy, request: TrainingRequest) -> None:
    """Refuse (`TrainingError`, on every process) a run whose processes were not given the same
    request: called by `train --distributed` before the chief reserves anything."""
    mine = tf.constant([_bits(repr(request))], tf.float64)

    def gather() -> tf.Tensor:
        context = tf.distribute.get_replica_context()
        return context.all_gather(mine, axis=0)

    try:
        every = strategy.experimental_local_results(strategy.run(tf.function(gather)))[0]
    except tf.errors.OpError as exc:
        raise TrainingError(
            f"the workers could not compare their requests: {_reason(exc)}"
        ) from exc
    if len(set(np.asarray(every).tolist())) != 1:
        raise TrainingError(
            "the workers were not given the same training request: run the same command, "
            "with the same options, in every process (nothing was reserved)"
        )


class GlobalStep:
    """The compiled DP-SGD global step of one replica, and the checks that need the cluster."""

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        model: tf.keras.Model,
        *,
        l2_norm_clip: float,
        noise_multiplier: float,
        batch_size: int,
        optimizer: str,
        learning_rate: float,
    ) -> None:
        incompatible = clipping.dp_incompatible_reason(model)
        if incompatible is not None:
            raise TrainingError(incompatible)
        self._registry = clipping.make_layer_registry()
        fast = clipping.plan_clipping(model, self._registry)
        if not fast.fast:
            raise TrainingError(
                f"--distributed trains on the fast clipping path only: {fast.reason}"
            )
        self.strategy = strategy
        self.model = model
        with strategy.scope():
            self.trainer = architectures.logits_model(model)
            self.optimizer = make_optimizer(optimizer, learning_rate)
            self.trainer.compile(
                optimizer=self.optimizer,
                loss=tf.keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True, reduction=tf.keras.losses.Reduction.SUM
                ),
            )
        self._clip = l2_norm_clip / batch_size
        self._noise_std = noise_multiplier * l2_norm_clip / batch_size
        self._loss = self.trainer.loss
        x_spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)
        self._step = tf.function(
            self._global_step,
            input_signature=[
                x_spec,
                tf.TensorSpec((None,), tf.int64),
                tf.TensorSpec((None,), tf.float32),
            ],
        )

    def _replica_step(self, x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        grads, logits, _ = clip_grads.compute_clipped_gradients_and_outputs(
            input_model=self.trainer,
            l2_norm_clip=self._clip,
            layer_registry=self._registry,
            x_batch=x,
            y_batch=y,
            weight_batch=w,
            clipping_loss=self._loss,
        )
        context = tf.distribute.get_replica_context()
        first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float32)
        noised = [g + first * tf.random.normal(tf.shape(g), stddev=self._noise_std) for g in grads]
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, noised)
        self.optimizer.apply_gradients(
            zip(summed, self.trainer.trainable_variables, strict=True),
            skip_gradients_aggregation=True,
        )
        real = tf.cast(w > 0, tf.float32)
        losses = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        right = tf.cast(tf.equal(tf.argmax(logits, axis=-1), y), tf.float32)
        stats = tf.stack(
            [tf.reduce_sum(losses * real), tf.reduce_sum(right * real), tf.reduce_sum(real)]
        )
        return context.all_reduce(tf.distribute.ReduceOp.SUM, stats)

    def _global_step(self, x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        result = self.strategy.run(self._replica_step, args=(x, y, w))
        return self.strategy.experimental_local_results(result)[0]

    def __call__(
        self, x: NDArray[np.float32], y: NDArray[np.int64], w: NDArray[np.float32]
    ) -> NDArray[np.float64]:
        """One global step on this worker's draw; returns the whole step's (loss sum, correct,
        examples), all workers together (computed without noise, for the operator)."""
        return np.asarray(self._step(x, y, w), dtype=np.float64)

    def agree(self, figures: list[float]) -> bool:
        """Whether every worker holds the same `figures` and the same initial weights."""
        checksum = float(sum(float(np.sum(np.abs(v.numpy()))) for v in self.model.weights))
        mine = tf.constant([*figures, checksum], tf.float64)

        def spread() -> tf.Tensor:
            context = tf.distribute.get_replica_context()
            every = context.all_gather(mine[tf.newaxis], axis=0)  # (workers, figures)
            return tf.reduce_max(every, axis=0) - tf.reduce_min(every, axis=0)

        result = self.strategy.run(tf.function(spread))
        gap = np.asarray(self.strategy.experimental_local_results(result)[0])
        return bool(np.all(gap <= 1e-9 * np.maximum(1.0, np.abs(mine.numpy()))))


def chiefs_statistics(strategy: tf.distribute.Strategy, prep: Preprocessing) -> Preprocessing:
    """`prep` with the chief's released statistics on every worker (a sum of the chief's
    values and zeros). Each worker drew its own release; only the chief's is used, and it is
    the one the plan accounts and the model carries; the others never leave their process."""
    mine = [tf.constant(prep.mean, tf.float64), tf.constant(prep.variance, tf.float64)]

    def share() -> list[tf.Tensor]:
        context = tf.distribute.get_replica_context()
        first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float64)
        summed: list[tf.Tensor] = context.all_reduce(
            tf.distribute.ReduceOp.SUM, [t * first for t in mine]
        )
        return summed

    shared = strategy.run(tf.function(share))
    mean, variance = (
        np.asarray(strategy.experimental_local_results(value)[0], np.float32) for value in shared
    )
    return replace(prep, mean=mean, variance=variance)


def chiefs_weights(strategy: tf.distribute.Strategy, model: tf.keras.Model) -> None:
    """Set every weight of `model` to the chief's (a sum of the chief's values and zeros):
    with `--init-from` only the chief opened the public model; the workers hold its layout."""
    mine = [tf.constant(value) for value in model.get_weights()]

    def share() -> list[tf.Tensor]:
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        summed: list[tf.Tensor] = context.all_reduce(
            tf.distribute.ReduceOp.SUM, [t * tf.cast(first, t.dtype) for t in mine]
        )
        return summed

    shared = strategy.run(tf.function(share))
    model.set_weights([np.asarray(strategy.experimental_local_results(v)[0]) for v in shared])


def shard_draws(
    n: int, rank: int, size: int, sampling_rate: float, steps: int, rng: np.random.Generator
) -> list[NDArray[np.int64]]:
    """This worker's Poisson draws, positions into the training split: its shard (positions
    rank, rank + size, ...) sampled at `sampling_rate` for every step."""
    shard = np.arange(rank, n, size, dtype=np.int64)
    return [shard[rng.random(len(shard)) < sampling_rate] for _ in range(steps)]


def train_distributed(
    dataset: Dataset,
    plan: Plan,
    *,
    strategy: tf.distribute.Strategy,
    cluster: Cluster,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train `plan` as one worker of `cluster` (see the module docstring); every worker calls
    this with the same plan. On the chief, the result is the model to publish. A collective
    that fails (a worker died, left or timed out) raises `TrainingError`, on one line."""
    try:
        return _train(dataset, plan, strategy=strategy, cluster=cluster, progress=progress)
    except tf.errors.OpError as exc:
        raise TrainingError(
            f"distributed training failed (a worker died, left or timed out): {_reason(exc)}"
        ) from exc


def _train(
    dataset: Dataset,
    plan: Plan,
    *,
    strategy: tf.distribute.Strategy,
    cluster: Cluster,
    progress: ProgressCallback | None,
) -> TrainResult:
    started = time.monotonic()
    if dataset.fingerprint != plan.fingerprint:
        raise TrainingError("the plan was made for other data; plan the run on this dataset")
    if plan.privacy is None:
        raise TrainingError("--distributed trains with DP-SGD only")
    logger.info(
        "distributed DP-SGD: %s %d, rank %d of %d; %d global steps at q=%.5g",
        cluster.task_type,
        cluster.task_index,
        cluster.rank,
        cluster.size,
        plan.steps,
        plan.sampling_rate,
    )
    root = plan.request.noise_seed
    sample_seed, tf_seed, stats_seed = secret_seeds(
        None if root is None else root * 1_000_003 + cluster.rank
    )
    prep = preprocessing_for(
        dataset,
        plan.train_indices,
        kind=plan.preprocessing,
        rng=np.random.default_rng(stats_seed),
        stats_noise_multiplier=plan.stats_noise_multiplier,
    )
    if prep.kind == "dp-standardize":
        prep = chiefs_statistics(strategy, prep)
    tf.keras.utils.set_random_seed(plan.request.seed)
    with strategy.scope():
        model = architectures.build_model(
            plan.request.arch,
            dataset.feature_shape,
            dataset.num_classes,
            preprocessing=prep,
            **plan.sizes,
        )
    head = None
    if plan.init is not None:  # the chief's init is the public model; a worker's, a layout
        head = pretrained.apply_init(model, plan.init, plan.frozen_layers)
        chiefs_weights(strategy, model)
    step = GlobalStep(
        strategy,
        model,
        l2_norm_clip=plan.l2_norm_clip,
        noise_multiplier=plan.privacy.noise_multiplier,
        batch_size=plan.batch_size,
        optimizer=plan.optimizer,
        learning_rate=plan.learning_rate,
    )
    figures = [
        plan.steps,
        plan.sampling_rate,
        plan.privacy.noise_multiplier,
        plan.l2_norm_clip,
        plan.batch_size,
        plan.learning_rate,
        plan.n_train,
        float(len(dataset.x)),
        _bits(plan.fingerprint),
        len(plan.frozen_layers),
        float(len(model.trainable_variables)),
    ]
    if not step.agree([float(f) for f in figures]):
        raise TrainingError(
            "the workers do not agree on the plan or the initial weights: run the same "
            "command, on the same registered data, in every process"
        )
    tf.random.set_seed(tf_seed)
    x_train, y_train = dataset.x[plan.train_indices], dataset.y[plan.train_indices]
    draws = shard_draws(
        plan.n_train,
        cluster.rank,
        cluster.size,
        plan.sampling_rate,
        plan.steps,
        np.random.default_rng(sample_seed),
    )
    frozen = non_trainable_values(model)
    weight = np.float32(1.0 / plan.batch_size)
    history: list[dict[str, float]] = []
    for epoch in range(plan.epochs):
        totals = np.zeros(3)
        for idx in draws[epoch * plan.steps_per_epoch : (epoch + 1) * plan.steps_per_epoch]:
            if len(idx) == 0:  # a step still happens: this worker adds a zero-weight example
                x = np.zeros((1, *x_train.shape[1:]), np.float32)
                y, w = np.zeros(1, np.int64), np.zeros(1, np.float32)
            else:
                x, y, w = x_train[idx], y_train[idx], np.full(len(idx), weight, np.float32)
            try:
                totals += step(x, y, w)
            except tf.errors.OpError as exc:  # a collective failed: a worker died or left
                raise TrainingError(
                    f"distributed step {int(step.optimizer.iterations.numpy()) + 1} failed "
                    f"(a worker died, left or timed out): {_reason(exc)}"
                ) from exc
        elapsed = time.monotonic() - started
        seen = max(totals[2], 1.0)
        row = {
            "epoch": epoch + 1,
            "loss": float(totals[0] / seen),
            "accuracy": float(totals[1] / seen),
            "elapsed_s": elapsed,
        }
        history.append(row)
        if progress is not None:
            done = epoch + 1
            progress(
                EpochProgress(
                    epoch=done,
                    epochs=plan.epochs,
                    loss=row["loss"],
                    accuracy=row["accuracy"],
                    elapsed_s=elapsed,
                    eta_s=elapsed / done * (plan.epochs - done),
                )
            )
    done_steps = int(step.optimizer.iterations.numpy())
    if done_steps != plan.steps:
        raise TrainingError(f"training ran {done_steps} steps, the accountant assumed {plan.steps}")
    check_unchanged(model, frozen)
    return TrainResult(
        model=model,
        plan=plan,
        history=history,
        test_accuracy=evaluate(model, dataset.x[plan.test_indices], dataset.y[plan.test_indices]),
        path_used=PATH,
        path_reason=(
            f"{cluster.size} workers (MultiWorkerMirroredStrategy), one replica each; fast "
            "clipping on every replica, the noise added once per global step by the chief's "
            "replica, the sum all-reduced"
        ),
        preprocessing=prep,
        duration_s=time.monotonic() - started,
        init_head=head,
    )


def _bits(text: str) -> float:
    """48 bits of a digest of `text`, exact in a float64: the data's identity in the check."""
    return float(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))


def _reason(exc: tf.errors.OpError) -> str:
    """TensorFlow's own words for a failed collective, without its graph trace, on one line."""
    lines = [
        line.strip()
        for line in str(exc.message).splitlines()
        if line.strip()
        and not line.startswith((" ", "\t"))
        and not line.startswith(("Detected at", "Graph execution error"))
    ]
    return f"{type(exc).__name__}: {' '.join(lines)[:300] or 'no detail'}"
