"""What quantization buys and costs: TFLite versions (`models quantize`) against their float parent.

    .venv/bin/python bench/quantize.py            # about 3 minutes on 2 cores

For the MLP, the CNN and the transformer of `training.architectures` on sklearn's digits (a
public dataset: 1,797 8x8 images, scaled by their public range /16, a fixed 80/20 split), each
model is trained without DP for a few epochs (the trade-offs of quantization depend on the
weights' shapes and ranges, not on how they were found; a DP-trained model is quantized the
same way), then, through the same code the service runs:

* the float parent: `codec.encode_model` bytes, `codec.decode_model`, `LoadedModel.predict`;
* each mode (`float16`, `dynamic`, `int8` calibrated on 200 rows of the training split, which is
  public here): `lite.quantize` bytes, `codec.decode_model` (the TFLite interpreter),
  `LiteModel.predict`.

Measured per model, every side in the same run, rounds interleaved across the sides so the
machine's noise hits each alike: artifact size (bytes); load time (decode, median of
`--repeat` loads); single-row latency (median over `--repeat` rounds of 100 calls, each round's
median); throughput (rows per second predicting the 360-row test split in batches of 64,
median over rounds); accuracy on the test split (an operator's figure: the test split is never
served). Ratios are the mode's over the float parent's (size and latency below 1 is better,
throughput above 1 is better); the spread is the min-max of the per-round ratios. The last line
is `RESULT <arch>_<mode>_size=... _load=... _latency=... _thr=... _acc=...` (ratios, and the
accuracy's change in points).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

ARCHS = ("mlp", "cnn", "transformer")
MODES = ("float16", "dynamic", "int8")
CALIBRATION_ROWS = 200


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * 0.8)
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def train(arch: str, x: np.ndarray, y: np.ndarray) -> Any:
    import tensorflow as tf

    from secure_maas.training.architectures import build_model

    tf.keras.utils.set_random_seed(0)
    model = build_model(arch, x.shape[1:], 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    return model


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds per measurement")
    parser.add_argument("--arch", action="append", choices=ARCHS, help="default: all three")
    args = parser.parse_args()
    from secure_maas.registry import codec, lite
    from secure_maas.registry.signature import ServingSignature

    x_train, y_train, x_test, y_test = data()
    result: dict[str, float] = {}
    for arch in args.arch or ARCHS:
        model = train(arch, x_train, y_train)
        signature = ServingSignature.from_model(model)
        name = signature.inputs[0].name
        payloads = {"float": codec.encode_model(model)}
        for mode in MODES:
            calibration = {name: x_train[:CALIBRATION_ROWS]} if mode == "int8" else None
            payloads[mode] = lite.quantize(model, signature, mode, calibration)
        sides = list(payloads)
        loaded = {side: codec.decode_model(payloads[side]) for side in sides}
        output = signature.outputs[0].name
        accuracy = {}
        for side in sides:
            probabilities = loaded[side].predict({name: x_test})[output]
            accuracy[side] = float((probabilities.argmax(axis=1) == y_test).mean())
        loads: dict[str, list[float]] = {side: [] for side in sides}
        latency: dict[str, list[float]] = {side: [] for side in sides}
        throughput: dict[str, list[float]] = {side: [] for side in sides}
        one = {name: x_test[:1]}
        for _ in range(args.repeat):
            for side in sides:
                payload, served = payloads[side], loaded[side]
                loads[side].append(timed(lambda p=payload: codec.decode_model(p)))
                served.predict(one)
                calls = [timed(lambda m=served, o=one: m.predict(o)) for _ in range(100)]
                latency[side].append(statistics.median(calls))
                batches = [{name: x_test[i : i + 64]} for i in range(0, len(x_test), 64)]
                spent = timed(lambda m=served, b=batches: [m.predict(rows) for rows in b])
                throughput[side].append(len(x_test) / spent)
        base = "float"
        print(f"\n{arch}: float parent {len(payloads[base])} bytes, accuracy {accuracy[base]:.3f}")
        print(f"  {'side':<8} {'bytes':>8} {'load ms':>8} {'1-row ms':>9} {'rows/s':>9} {'acc':>6}")
        for side in sides:
            print(
                f"  {side:<8} {len(payloads[side]):>8} "
                f"{statistics.median(loads[side]) * 1000:>8.1f} "
                f"{statistics.median(latency[side]) * 1000:>9.3f} "
                f"{statistics.median(throughput[side]):>9.0f} {accuracy[side]:>6.3f}"
            )
        for mode in MODES:
            key = f"{arch}_{mode}"
            pairs = {
                "load": [a / b for a, b in zip(loads[mode], loads[base], strict=True)],
                "latency": [a / b for a, b in zip(latency[mode], latency[base], strict=True)],
                "thr": [a / b for a, b in zip(throughput[mode], throughput[base], strict=True)],
            }
            result[f"{key}_size"] = len(payloads[mode]) / len(payloads[base])
            for what, ratios in pairs.items():
                result[f"{key}_{what}"] = statistics.median(ratios)
                print(f"  {key} {what} ratio {statistics.median(ratios):.2f} "
                      f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
            result[f"{key}_acc"] = (accuracy[mode] - accuracy[base]) * 100
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
