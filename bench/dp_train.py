"""Time the compiled DP-SGD train step against the non-private one (batch 256, sklearn:digits).

What it measures: seconds per compiled training step, for the MLP and the CNN of
`architectures.build_model`, on each of these sides:

* baseline: the plain Keras model (`architectures.logits_model`), SGD, mean loss
  (`SparseCategoricalCrossentropy(from_logits=True)`) and the accuracy metric, like the
  non-private path of `train.train`;
* ours: `train.make_dp_trainer(model, l2_norm_clip=1, noise_multiplier=1, batch_size=256,
  optimizer="sgd", learning_rate=0.05)`, i.e. TF Privacy's DPModel with our layer registry
  (fast/ghost clipping), fed `(x, y, sample_weight)` with weight 1/256 per example;
* ours_per_example (extra): the same trainer forced onto its per-example path
  (`path="per-example"`), what a model costs without registry functions;
* tfp (extra, not a goal): TF Privacy's `DPKerasSGDOptimizer` with one microbatch per example
  (num_microbatches = 256), what its tutorial teaches: a Jacobian of the per-example losses and
  a loop over the 256 examples. It is very slow, so it runs fewer steps per window (printed).

How. Every side runs `model.train_step`, the step Keras compiles, inside one `tf.function` that
loops `n` steps in the graph (`tf.range`, like Keras' `steps_per_execution`) over batches held
in the graph as constants: the 7 full batches of 256 of the 1,797 examples (digits scaled by
their public range, x / 16), taken in turn by an in-graph slice. A timed window is ONE call of
that function for `n` steps, measured with `time.perf_counter()` and closed by reading
`optimizer.iterations`, which waits for the steps to finish and must have grown by exactly
`n` (else it raises). So a window holds the compiled steps and nothing else: no per-step
Python, no `fit()` machinery, no callbacks, no input pipeline; tracing is excluded (a warm-up
call traces the function and runs a few steps first; a retrace in a window raises), and each
window is preceded by one untimed step. Also left out: the Python dispatch of Keras'
`train_function` one step per call (about 1 ms per step on a 2-core machine, the same for
every side), which would pull the small models' ratios toward 1. Before timing, the baseline's
loop is checked to give bitwise the weights of the same steps run one by one with
`train_on_batch`, i.e. the loop's steps run in order and do not overlap.

The rounds are INTERLEAVED (baseline, ours, per-example, tfp, baseline, ours, ...) so machine
noise hits every side alike. Reported per side: the median seconds per step over the rounds and
its min-max; the ratio of medians to the baseline; and the min-max of the per-round ratios
(side / baseline of the same round).

The batches are fixed batches of exactly 256 rows, not the Poisson-sampled batches (expected
size 256) that DP training draws: the per-step cost depends on the batch's size, not on which
rows it holds, so a fixed 256 is the expected-size step; it also keeps every side on the same
rows and one traced shape (Poisson sizes vary; XLA is off, so varying sizes cost no
recompiles in training either). Sampling the batch is input work outside the step, which a
fixed batch leaves out for every side alike.

Goals (the project's): ours / baseline <= 2.5x for the MLP, <= 4x for the CNN. The extras are
reported for context, not as goals. The last line is
`RESULT mlp_ratio=... cnn_ratio=... mlp_ratio_spread=LO-HI cnn_ratio_spread=LO-HI
mlp_per_example_ratio=... cnn_per_example_ratio=... mlp_tfp_ratio=... cnn_tfp_ratio=...`
(ratios of medians; spreads of the per-round ratios). The default run takes about 5-10 minutes
on 2 CPU cores; `--quick` runs a few steps only, to check the script.

    .venv/bin/python bench/dp_train.py [--steps 500] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import tensorflow as tf
import tensorflow_privacy
from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import (
    DPKerasSGDOptimizer,
)

from secure_maas.training import architectures, datasets, train

BATCH = 256
CLIP, SIGMA, LR = 1.0, 1.0, 0.05
PRE_WINDOW_STEPS = 1  # untimed steps before each window (caches, after another side ran)
WARMUP_STEPS = 2  # untimed steps of the tracing call
# Steps per window of the extras, as a fraction of --steps (they are 5x to 200x slower).
EXTRA_FRACTION = {
    "mlp": {"ours_per_example": 1.0, "tfp": 0.05},
    "cnn": {"ours_per_example": 0.25, "tfp": 0.01},
}
MIN_EXTRA_STEPS = 3


@dataclass
class Side:
    """One model, its in-graph step loop, and the seconds per step of each timed window."""

    name: str
    model: tf.keras.Model
    run: Callable[[tf.Tensor], None]
    steps: int
    note: str = ""
    seconds: list[float] = field(default_factory=list)
    traces: int = 0

    def iterations(self) -> int:
        # Reading the variable waits for every step that updates it: the window's end.
        return int(self.model.optimizer.iterations.numpy())

    def steps_now(self, n: int) -> float:
        """Run `n` steps in one call; seconds per step, checked against the optimizer."""
        before = self.iterations()
        started = time.perf_counter()
        self.run(tf.constant(n))
        done = self.iterations() - before
        elapsed = time.perf_counter() - started
        if done != n:
            raise RuntimeError(f"{self.name}: ran {done} steps instead of {n}")
        return elapsed / n

    def tracing_count(self) -> int:
        return int(self.run.experimental_get_tracing_count())  # type: ignore[attr-defined]

    def warm_up(self) -> None:
        # Traces the function (twice when its first trace creates optimizer or metric
        # variables); not timed.
        self.steps_now(WARMUP_STEPS)
        self.traces = self.tracing_count()

    def window(self) -> None:
        self.steps_now(PRE_WINDOW_STEPS)
        self.seconds.append(self.steps_now(self.steps))
        if self.tracing_count() != self.traces:
            raise RuntimeError(f"{self.name}: retraced after the warm-up, inside a window")


def step_loop(model: tf.keras.Model, batches: tuple[np.ndarray, ...]) -> Callable:
    """A tf.function running `n` compiled train steps over the in-graph batches, in turn."""
    constants = tuple(tf.constant(b) for b in batches)
    count = len(batches[0])

    @tf.function
    def run(n: tf.Tensor) -> None:
        for i in tf.range(n):
            j = i % count
            model.train_step(tuple(c[j] for c in constants))

    return run


def check_sequential(arch: str, x: np.ndarray, y: np.ndarray, classes: int) -> None:
    """The in-graph loop must train exactly like Keras' step-by-step calls (bitwise).

    Guards the timing: steps of the loop must not overlap (which would read stale weights and
    look faster); the baseline has no noise, so the weights must match `train_on_batch`'s.
    """
    models = []
    for _ in range(2):
        model = architectures.logits_model(build(arch, tuple(x.shape[1:]), classes))
        model.compile(
            optimizer=tf.keras.optimizers.SGD(LR),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        models.append(model)
    xb, yb = x[: 3 * BATCH].reshape(3, BATCH, *x.shape[1:]), y[: 3 * BATCH].reshape(3, BATCH)
    step_loop(models[0], (xb, yb))(tf.constant(6))
    for k in range(6):
        models[1].train_on_batch(xb[k % 3], yb[k % 3])
    for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        if not np.array_equal(a, b):
            raise RuntimeError(f"{arch}: the in-graph loop does not train like train_on_batch")


def build(arch: str, shape: tuple[int, ...], classes: int) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    return architectures.build_model(arch, shape, classes)


def make_sides(arch: str, x: np.ndarray, y: np.ndarray, classes: int, steps: int) -> list[Side]:
    n = len(x) // BATCH
    xb = x[: n * BATCH].reshape(n, BATCH, *x.shape[1:])
    yb = y[: n * BATCH].reshape(n, BATCH)
    wb = np.full((n, BATCH), 1.0 / BATCH, np.float32)
    shape = tuple(x.shape[1:])

    def extra_steps(name: str) -> int:
        return max(MIN_EXTRA_STEPS, round(steps * EXTRA_FRACTION[arch][name]))

    baseline = architectures.logits_model(build(arch, shape, classes))
    baseline.compile(
        optimizer=tf.keras.optimizers.SGD(LR),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    sides = [Side("baseline", baseline, step_loop(baseline, (xb, yb)), steps)]

    for path, name in (("auto", "ours"), ("per-example", "ours_per_example")):
        trainer, plan = train.make_dp_trainer(
            build(arch, shape, classes),
            l2_norm_clip=CLIP,
            noise_multiplier=SIGMA,
            batch_size=BATCH,
            optimizer="sgd",
            learning_rate=LR,
            path=path,
        )
        count = steps if name == "ours" else extra_steps(name)
        run = step_loop(trainer, (xb, yb, wb))
        sides.append(Side(name, trainer, run, count, f"path {plan.path} ({plan.reason})"))

    tfp = architectures.logits_model(build(arch, shape, classes))
    tfp.compile(
        optimizer=DPKerasSGDOptimizer(
            l2_norm_clip=CLIP, noise_multiplier=SIGMA, num_microbatches=BATCH, learning_rate=LR
        ),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.NONE
        ),
        metrics=["accuracy"],
    )
    sides.append(Side("tfp", tfp, step_loop(tfp, (xb, yb)), extra_steps("tfp"), "256 microbatches"))
    return sides


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def bench(arch: str, x: np.ndarray, y: np.ndarray, classes: int, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    check_sequential(arch, x, y, classes)
    sides = make_sides(arch, x, y, classes, args.steps)
    for side in sides:
        side.warm_up()
    for _ in range(args.rounds):
        for side in sides:
            side.window()
    base = sides[0].seconds
    result: dict[str, tuple[float, list[float]]] = {}
    print(f"\n{arch}: {time.perf_counter() - started:.0f} s")
    print(
        f"  {'side':17s} {'steps':>5s} {'median ms':>10s} {'min-max ms':>17s} "
        f"{'ratio':>7s} {'per-round ratio':>16s}"
    )
    for side in sides:
        median = statistics.median(side.seconds)
        ratios = [s / b for s, b in zip(side.seconds, base, strict=True)]
        result[side.name] = (median / statistics.median(base), ratios)
        low, high = min(side.seconds) * 1e3, max(side.seconds) * 1e3
        print(
            f"  {side.name:17s} {side.steps:5d} {median * 1e3:10.3f} "
            f"{f'{low:.3f}-{high:.3f}':>17s} {result[side.name][0]:6.2f}x {spread(ratios):>16s}"
            + (f"  {side.note}" if side.note else "")
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=500, help="timed steps per window")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side")
    parser.add_argument("--quick", action="store_true", help="20 steps, 2 rounds: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 20, 2
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be positive")
    tf.get_logger().setLevel(logging.ERROR)  # AutoGraph's notes on TF Privacy's helpers
    logging.getLogger(train.__name__).setLevel(logging.ERROR)  # the table shows the path

    ds = datasets.load_dataset("sklearn:digits")
    x = (ds.x / np.float32(16.0)).astype(np.float32)  # the public range 0..16
    y = ds.y.astype(np.int64)
    started = time.perf_counter()
    print(
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; sklearn:digits "
        f"({len(x)} examples, {len(x) // BATCH} fixed batches of {BATCH}); "
        f"Python {platform.python_version()}, TF {tf.__version__}, "
        f"TF Privacy {tensorflow_privacy.__version__}; CPUs {os.cpu_count()} "
        f"(usable {len(os.sched_getaffinity(0))}); "
        f"{args.steps} timed steps per window, {args.rounds} interleaved rounds"
    )
    fewer = [
        f"{arch} {name} {count}"
        for arch, fractions in EXTRA_FRACTION.items()
        for name, fraction in fractions.items()
        if (count := max(MIN_EXTRA_STEPS, round(args.steps * fraction))) < args.steps
    ]
    if fewer:
        print(
            "extras only, to bound the run time (their steps take 10-3000 ms): fewer timed "
            f"steps per window: {', '.join(fewer)}"
        )
    mlp = bench("mlp", x, y, ds.num_classes, args)
    cnn = bench("cnn", x, y, ds.num_classes, args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; goals: mlp <= 2.5x, cnn <= 4x")
    print(
        f"RESULT mlp_ratio={mlp['ours'][0]:.2f} cnn_ratio={cnn['ours'][0]:.2f} "
        f"mlp_ratio_spread={spread(mlp['ours'][1])} cnn_ratio_spread={spread(cnn['ours'][1])} "
        f"mlp_per_example_ratio={mlp['ours_per_example'][0]:.2f} "
        f"cnn_per_example_ratio={cnn['ours_per_example'][0]:.2f} "
        f"mlp_tfp_ratio={mlp['tfp'][0]:.2f} cnn_tfp_ratio={cnn['tfp'][0]:.2f}"
    )


if __name__ == "__main__":
    main()
