"""One process of a two-worker DP-SGD run, for tests/functional/test_training_distributed.py.

    python -m tests.functional.distributed_child train|noise OUT.json   (TF_CONFIG set)

`train` plans and trains `small_request()` on `small_digits()` with
`distributed.train_distributed`; `noise` runs global steps whose every example has weight 0
(no gradient at all), so each update is the step's noise alone. Each process writes what it saw
to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

NOISE = {"noise_multiplier": 1.3, "l2_norm_clip": 0.7, "batch_size": 10, "steps": 30}


def small_digits() -> Any:
    from dataclasses import replace

    from secure_maas.training.datasets import load_dataset

    digits = load_dataset("sklearn:digits")
    return replace(digits, x=digits.x[:600], y=digits.y[:600], fingerprint="digits-600")


def small_request(**fields: Any) -> Any:
    from secure_maas.training.plan import TrainingRequest

    base: dict[str, Any] = {
        "dataset": "digits-600",
        "model_name": "m",
        "arch": "mlp",
        "noise_multiplier": 0.6,
        "batch_size": 48,
        "epochs": 4,
        "learning_rate": 0.1,
        "noise_seed": 11,
        "preprocessing": "dp-standardize",  # a statistics release every worker must share
        "stats_noise_multiplier": 2.0,
        "sizes": {"units": (32,)},
    }
    return TrainingRequest(**{**base, **fields})


def _checksum(model: Any) -> float:
    return float(sum(float(np.sum(np.abs(w))) for w in model.get_weights()))


def train(strategy: Any, cluster: Any) -> dict[str, Any]:
    from secure_maas.training import distributed
    from secure_maas.training.plan import make_plan

    data = small_digits()
    plan = make_plan(small_request(distributed=True), data)
    result = distributed.train_distributed(data, plan, strategy=strategy, cluster=cluster)
    return {
        "loss": [row["loss"] for row in result.history],
        "accuracy": [row["accuracy"] for row in result.history],
        "epsilon": plan.privacy.epsilon,
        "steps": plan.steps,
        "checksum": _checksum(result.model),
        "statistics": [
            float(np.sum(result.preprocessing.mean)),
            float(np.sum(result.preprocessing.variance)),
        ],
        "prediction": result.model.predict(data.x[:20], verbose=0).tolist(),
        "path": result.path_used,
    }


def noise(strategy: Any, cluster: Any) -> dict[str, Any]:
    import tensorflow as tf

    from secure_maas.training import architectures, distributed

    tf.keras.utils.set_random_seed(3)
    with strategy.scope():
        model = architectures.build_model("mlp", (64,), 5, units=(64,))
    step = distributed.GlobalStep(
        strategy,
        model,
        l2_norm_clip=NOISE["l2_norm_clip"],
        noise_multiplier=NOISE["noise_multiplier"],
        batch_size=NOISE["batch_size"],
        optimizer="sgd",
        learning_rate=1.0,
    )
    tf.random.set_seed(100 + cluster.rank)
    rng = np.random.default_rng(cluster.rank)
    squares, count = 0.0, 0
    for _ in range(NOISE["steps"]):
        rows = int(rng.integers(1, 20))
        x = rng.random((rows, 64), dtype=np.float32) * 16
        y = rng.integers(0, 5, rows).astype(np.int64)
        before = [v.numpy().astype(np.float64) for v in model.trainable_variables]
        step(x, y, np.zeros(rows, np.float32))  # weight 0: no example contributes
        for old, v in zip(before, model.trainable_variables, strict=True):
            change = v.numpy().astype(np.float64) - old
            squares += float(np.sum(change**2))
            count += change.size
    return {"squares": squares, "count": count, "checksum": _checksum(model)}


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    mode, out = sys.argv[1], sys.argv[2]
    from secure_maas.training import distributed
    from secure_maas.training.cluster import from_environment

    cluster = from_environment()
    strategy = distributed.make_strategy(timeout_s=120)
    found = train(strategy, cluster) if mode == "train" else noise(strategy, cluster)
    with open(out, "w") as handle:
        json.dump({"rank": cluster.rank, **found}, handle)


if __name__ == "__main__":
    main()
