"""Time per DP-SGD step: non-private Keras, TF Privacy's DP optimizer, and ours.

One run, same model, same data (sklearn:digits), batch 256, for the MLP and the CNN:

* baseline: the plain Keras model, mean loss, fixed batches of 256;
* tfp: TF Privacy's `DPKerasSGDOptimizer` with one microbatch per example (num_microbatches =
  256), what its tutorial teaches; it computes a Jacobian of the per-example losses;
* ours: `secure_maas.training.train.make_dp_trainer` (TF Privacy's DPModel with our layer
  registry: fast gradient clipping), fed by the Poisson-sampled batches (expected size 256)
  that training uses;
* ours_per_example (extra): the same DPModel forced onto its per-example path, i.e. what the
  model costs without registry functions.

Each figure is the best of three timed windows after a warm-up (tracing excluded), because
other processes share the CPU. Ratios are per-step times over the baseline's. The last line is
`RESULT mlp_ratio=... cnn_ratio=... mlp_tfp_ratio=... cnn_tfp_ratio=...` (plus the extras).

    .venv/bin/python bench/dp_train.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import tensorflow as tf
from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import (
    DPKerasSGDOptimizer,
)

from secure_maas.training import architectures, datasets, train

BATCH = 256
CLIP, SIGMA, LR = 1.0, 1.0, 0.05
WINDOWS = 3


def fixed_batches(x: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
    n = len(x) // BATCH * BATCH
    return (
        tf.data.Dataset.from_tensor_slices((x[:n], y[:n]))
        .batch(BATCH, drop_remainder=True)
        .repeat()
        .prefetch(4)
    )


def per_step(model: tf.keras.Model, data: tf.data.Dataset, steps: int) -> float:
    """Best seconds per step over WINDOWS windows of `steps` steps, after a warm-up."""
    iterator = iter(data)
    model.fit(iterator, epochs=1, steps_per_epoch=2, verbose=0)
    best = float("inf")
    for _ in range(WINDOWS):
        before = int(model.optimizer.iterations.numpy())
        started = time.perf_counter()
        model.fit(iterator, epochs=1, steps_per_epoch=steps, verbose=0)
        elapsed = time.perf_counter() - started
        done = int(model.optimizer.iterations.numpy()) - before
        if done != steps:
            raise RuntimeError(f"ran {done} steps instead of {steps}")
        best = min(best, elapsed / done)
    return best


def build(arch: str, ds: datasets.Dataset, prep: datasets.Preprocessing) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    return architectures.build_model(arch, ds.feature_shape, ds.num_classes, preprocessing=prep)


def bench(arch: str, ds: datasets.Dataset, steps: int, tfp_steps: int) -> dict[str, float]:
    train_idx, _ = datasets.split(ds, seed=0)
    prep = datasets.preprocessing_for(ds, train_idx)
    x, y = ds.x[train_idx], ds.y[train_idx]
    times: dict[str, float] = {}

    baseline = architectures.logits_model(build(arch, ds, prep))
    baseline.compile(
        optimizer=tf.keras.optimizers.SGD(LR),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    times["baseline"] = per_step(baseline, fixed_batches(x, y), steps)

    tfp = architectures.logits_model(build(arch, ds, prep))
    tfp.compile(
        optimizer=DPKerasSGDOptimizer(
            l2_norm_clip=CLIP, noise_multiplier=SIGMA, num_microbatches=BATCH, learning_rate=LR
        ),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.NONE
        ),
    )
    times["tfp"] = per_step(tfp, fixed_batches(x, y), tfp_steps)

    for path, key in (("fast", "ours"), ("per-example", "ours_per_example")):
        model = build(arch, ds, prep)
        trainer, plan = train.make_dp_trainer(
            model,
            l2_norm_clip=CLIP,
            noise_multiplier=SIGMA,
            batch_size=BATCH,
            optimizer="sgd",
            learning_rate=LR,
            path=path,
        )
        # Generous: Keras reads ahead of the steps it runs.
        total = 10 * (2 + WINDOWS * steps)
        data = train._poisson_batches(x, y, BATCH / len(x), BATCH, total, np.random.default_rng(0))
        times[key] = per_step(trainer, data, steps)
        print(f"  {arch} {key}: path {plan.path} ({plan.reason})")

    for key, seconds in times.items():
        ratio = seconds / times["baseline"]
        print(f"  {arch} {key:17s} {seconds * 1e3:9.2f} ms/step  {ratio:7.2f} x")
    return {key: seconds / times["baseline"] for key, seconds in times.items()}


def main() -> None:
    ds = datasets.load_dataset("sklearn:digits")
    print(f"sklearn:digits, batch {BATCH}, TF {tf.__version__}, CPU threads", os.cpu_count())
    mlp = bench("mlp", ds, steps=40, tfp_steps=5)
    cnn = bench("cnn", ds, steps=20, tfp_steps=2)
    print(
        f"RESULT mlp_ratio={mlp['ours']:.2f} cnn_ratio={cnn['ours']:.2f} "
        f"mlp_tfp_ratio={mlp['tfp']:.2f} cnn_tfp_ratio={cnn['tfp']:.2f} "
        f"mlp_per_example_ratio={mlp['ours_per_example']:.2f} "
        f"cnn_per_example_ratio={cnn['ours_per_example']:.2f}"
    )


if __name__ == "__main__":
    main()
