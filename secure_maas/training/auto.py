"""`--auto`: batch size, epochs and learning rate for a target ε, chosen before any training.

The rules use only public quantities (the number of training examples, the target ε and δ) and
the accountant, never the data, so choosing them costs no privacy:

* batch size: the power of two nearest 6·sqrt(n), between 32 and n/2. DP-SGD wants large
  batches (the noise is shared by the whole batch), but the sampling rate must stay well below
  one for amplification by sampling to help.
* epochs: the noise of the mean gradient over a whole run, sigma(E) / sqrt(E·n·b), hardly depends
  on the number of epochs E (sigma grows like sqrt(E)), so more steps cost little privacy; but the
  noise of each step, sigma(E) / b, sets how close constant-rate SGD can settle. The rule takes
  the fewest epochs on a grid that give about 300 steps, then fewer while sigma/b exceeds 0.06.
  (Found on the bundled data: digits wants ~360 steps, breast cancer at ε=1 fewer, noisier.)
* optimizer SGD with momentum 0.9, learning rate 0.05, clip norm 1: the gradient is the
  clipped mean, so its scale does not depend on the data size; these values worked on every
  bundled dataset and architecture we tried.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from secure_maas.training import accounting

EPOCH_GRID = (5, 10, 15, 20, 30, 40, 60, 80, 100)
TARGET_STEPS = 300
MAX_STEP_NOISE = 0.06


@dataclass(frozen=True)
class Suggestion:
    batch_size: int
    epochs: int
    learning_rate: float
    optimizer: str
    l2_norm_clip: float
    noise_multiplier: float
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def auto_batch_size(n: int) -> int:
    """Power of two nearest 6·sqrt(n), clamped to [32, n/2] (and to n for tiny data)."""
    target = 6.0 * math.sqrt(n)
    size = int(2 ** round(math.log2(target)))
    return max(1, min(max(32, size), max(1, n // 2)))


def suggest(
    n: int,
    target_epsilon: float,
    delta: float,
    *,
    stats_noise_multiplier: float | None = None,
) -> Suggestion:
    """Hyperparameters for `n` training examples and a target (ε, δ) of the whole run (the
    preprocessing statistics' release, if any, included); see the module doc."""
    batch = auto_batch_size(n)
    rate = batch / n
    steps_per_epoch = max(1, round(n / batch))
    grid = [e for e in EPOCH_GRID if steps_per_epoch * e >= TARGET_STEPS] or [EPOCH_GRID[-1]]
    candidates = [e for e in EPOCH_GRID if e <= grid[0]]
    for epochs in reversed(candidates):
        steps = steps_per_epoch * epochs
        sigma = accounting.calibrate_rdp(
            target_epsilon,
            rate,
            steps,
            delta,
            tol=1e-3,
            stats_noise_multiplier=stats_noise_multiplier,
        )
        if sigma / batch <= MAX_STEP_NOISE or epochs == candidates[0]:
            break
    return Suggestion(
        batch_size=batch,
        epochs=epochs,
        learning_rate=0.05,
        optimizer="momentum",
        l2_norm_clip=1.0,
        noise_multiplier=sigma,
        why=(
            f"batch {batch} ~ 6·sqrt({n}); {epochs} epochs = {steps} steps "
            f"(sigma={sigma:.3f}, sigma/b={sigma / batch:.3f})"
        ),
    )
