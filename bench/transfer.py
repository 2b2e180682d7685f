"""What public pre-training buys a DP model: fine-tuning a public CNN against training from scratch.

    .venv/bin/python bench/transfer.py [--seeds N] [--epsilon E] [--quick]

The demonstration of issue 20, on scikit-learn's digits: classes 0-4 are DECLARED PUBLIC for it
(a stand-in for public data such as a public corpus); classes 5-9 are the private dataset.

1. A CNN (filters 16,32, dense 32, tanh; the documented digits CNN) is trained WITHOUT DP on
   classes 0-4: public data needs no guarantee. This is what `models import --public` would
   publish; here its weights go straight into a `transfer.PublicInit`
   (`pretrained.public_init_of`), as `train --init-from` makes one from the registry.
2. On classes 5-9, for each seed, three DP runs at the same ε (default 1, δ from the data's
   size), each planned by `plan.make_plan` (the same noise multiplier, batch size, steps and
   learning rate: `--auto`'s choice for this n and ε) and trained by `train.train`, fresh
   noise every time (no `--noise-seed`), on the same split per seed (the seed draws the split,
   so n, and with it the calibrated noise, moves a little from seed to seed):
   * scratch: random initial weights;
   * fine-tune: every layer starts from the public CNN and trains (`--init-from`);
   * frozen convs: the two convolutions stay at their public weights (`--freeze-layers 2`);
   * head only: only the logits layer trains (`--train-head-only`).
   The accountant sees the same run in all three: the public weights cost no ε.

Figures are test accuracy on the held-out split of classes 5-9 (operator-only figure):
mean ± standard deviation, range, and the paired gain (fine-tune - scratch, same seed and
split). The run ends with `RESULT transfer_epsilon=... scratch_mean=... finetune_mean=...
frozen_mean=... gain_mean=... gain_min=... frozen_gain_mean=... frozen_gain_min=...
head_mean=...`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from secure_maas.training import datasets, pretrained, train
from secure_maas.training.plan import TrainingRequest, make_plan
from secure_maas.training.transfer import PublicInit

CNN = {"filters": (16, 32), "dense_units": 32}


def subset(ds: datasets.Dataset, keep: np.ndarray, name: str) -> datasets.Dataset:
    """The examples of `ds` whose label is in `keep`, relabelled 0.. in order."""
    mask = np.isin(ds.y, keep)
    labels = np.searchsorted(keep, ds.y[mask]).astype(np.int64)
    return replace(
        ds,
        source=name,
        x=ds.x[mask],
        y=labels,
        classes=tuple(ds.classes[k] for k in keep),
        fingerprint=name,
    )


def pretrain(public: datasets.Dataset, epochs: int) -> tuple[PublicInit, float]:
    """The public CNN, trained without DP (public data needs no guarantee)."""
    request = TrainingRequest(
        dataset=public.source,
        model_name="digits-public",
        arch="cnn",
        dp=False,
        batch_size=64,
        epochs=epochs,
        learning_rate=0.05,
        sizes=CNN,
    )
    result = train.train(public, make_plan(request, public))
    return pretrained.public_init_of(result.model, "digits-public", 1, "0" * 64), (
        result.test_accuracy
    )


def dp_run(
    private: datasets.Dataset,
    epsilon: float,
    seed: int,
    init: PublicInit | None,
    freeze: int | None = None,
    head_only: bool = False,
) -> tuple[float, float]:
    """(test accuracy, ε) of one DP run on `private` at `epsilon`."""
    request = TrainingRequest(
        dataset=private.source,
        model_name="digits-private",
        arch="cnn",
        target_epsilon=epsilon,
        auto=True,
        seed=seed,
        sizes=CNN,
        init_from=None if init is None else init.ref,
        freeze_layers=freeze,
        train_head_only=head_only,
    )
    plan = make_plan(request, private, init=init)
    result = train.train(private, plan)
    if plan.privacy is None:
        raise SystemExit("a DP run was planned without privacy")
    return result.test_accuracy, plan.privacy.epsilon


def describe(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return (
        f"mean {statistics.fmean(values):.3f} ± {spread:.3f} (sd)  "
        f"min {min(values):.3f}  max {max(values):.3f}  (n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="two seeds, short pre-training")
    args = parser.parse_args()
    seeds = 2 if args.quick else args.seeds
    digits = datasets.load_dataset("sklearn:digits")
    public = subset(digits, np.arange(0, 5), "digits-0-4")
    private = subset(digits, np.arange(5, 10), "digits-5-9")
    started = time.monotonic()
    init, public_accuracy = pretrain(public, 5 if args.quick else args.pretrain_epochs)
    print(
        f"public CNN on classes 0-4 ({public.n} examples, no DP): "
        f"test accuracy {public_accuracy:.3f}  [{time.monotonic() - started:.0f}s]"
    )
    shown = make_plan(
        TrainingRequest(
            dataset=private.source,
            model_name="digits-private",
            arch="cnn",
            target_epsilon=args.epsilon,
            auto=True,
            sizes=CNN,
        ),
        private,
    )
    if shown.privacy is not None:
        print(
            f"every DP run: n={shown.n_train}, batch {shown.batch_size}, {shown.epochs} epochs = "
            f"{shown.steps} steps, learning rate {shown.learning_rate:g} ({shown.optimizer}), "
            f"noise multiplier {shown.privacy.noise_multiplier:.3f}, clip "
            f"{shown.l2_norm_clip:g}, δ={shown.privacy.delta:g}"
        )
    arms: dict[str, list[float]] = {"scratch": [], "finetune": [], "frozen": [], "head": []}
    for seed in range(seeds):
        epsilons = set()
        for arm, init_of, freeze, head_only in (
            ("scratch", None, None, False),
            ("finetune", init, None, False),
            ("frozen", init, 2, False),
            ("head", init, None, True),
        ):
            began = time.monotonic()
            accuracy, epsilon = dp_run(private, args.epsilon, seed, init_of, freeze, head_only)
            epsilons.add(epsilon)
            arms[arm].append(accuracy)
            print(
                f"seed {seed} {arm:8} ε={epsilon:.4g}  test accuracy {accuracy:.3f}  "
                f"[{time.monotonic() - began:.0f}s]",
                flush=True,
            )
        if len(epsilons) != 1:  # the split (by seed) fixes n; the arms share it
            raise SystemExit(f"seed {seed}: the arms were not accounted alike: {epsilons}")
    gains = [f - s for f, s in zip(arms["finetune"], arms["scratch"], strict=True)]
    frozen_gains = [f - s for f, s in zip(arms["frozen"], arms["scratch"], strict=True)]
    head_gains = [f - s for f, s in zip(arms["head"], arms["scratch"], strict=True)]
    print(f"\nclasses 5-9 ({private.n} examples), DP-SGD at ε={args.epsilon:g}, CNN 16,32 + 32:")
    for arm, values in arms.items():
        print(f"  {arm:9} {describe(values)}")
    print(f"  gain fine-tune - scratch (paired): {describe(gains)}")
    print(f"  gain frozen convs - scratch (paired): {describe(frozen_gains)}")
    print(f"  gain head only - scratch (paired): {describe(head_gains)}")
    print(
        f"RESULT transfer_epsilon={args.epsilon:g} seeds={seeds} "
        f"scratch_mean={statistics.fmean(arms['scratch']):.3f} "
        f"finetune_mean={statistics.fmean(arms['finetune']):.3f} "
        f"frozen_mean={statistics.fmean(arms['frozen']):.3f} "
        f"gain_mean={statistics.fmean(gains):.3f} gain_min={min(gains):.3f} "
        f"frozen_gain_mean={statistics.fmean(frozen_gains):.3f} "
        f"frozen_gain_min={min(frozen_gains):.3f} "
        f"head_mean={statistics.fmean(arms['head']):.3f}"
    )


if __name__ == "__main__":
    main()
