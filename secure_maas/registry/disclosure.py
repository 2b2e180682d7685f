"""What a model's callers are told about its privacy: the guarantee, never the data.

A DP model's registry row and sealed header hold everything about its training, for operators
(`models show`). Callers (TF Serving and OIP metadata, `GET /v1/models`) get only what the
guarantee is and what it covers: ε, δ, the noise multiplier, the clip norm, epochs and steps,
the accountant and the preprocessing. Never the dataset's fingerprint (with the other records
known, a membership oracle), its size, the sampling rate or the batch size (each, with the
others, gives the training-set size away, which tells neighbouring datasets apart under
add-or-remove adjacency), nor the operator's statement, which names them.

Figures are shown to three significant digits, ε rounded up (a larger ε is a weaker, still
true claim): the ε, noise multiplier, δ and steps of a run determine its sampling rate, and at
full float precision they would let anyone solve for it and, from the rate, for the size.
Epochs are shown as the whole number of passes the operator asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from secure_maas.registry.models import Privacy

SIGNIFICANT = 3

#: The keys of the `dp` object callers receive, in order (one source for the API and its docs).
PUBLIC_DP_FIELDS = (
    "epsilon",
    "delta",
    "noise_multiplier",
    "clip_norm",
    "epochs",
    "steps",
    "accountant",
    "preprocessing",
    "statement",
)

_PREPROCESSING = {
    "public-range": "inputs scaled by a public value range (no example involved)",
    "dp-standardize": (
        "inputs standardised with statistics released by the Gaussian mechanism and composed into ε"
    ),
    "none": "raw inputs",
}


def round_up(value: float, digits: int = SIGNIFICANT) -> float:
    """`value` rounded up to `digits` significant digits (a bound stays a bound)."""
    if value <= 0 or not math.isfinite(value):
        return value
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale - 1e-9) / scale


def round_to(value: float, digits: int = SIGNIFICANT) -> float:
    """`value` rounded to `digits` significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _maybe(value: Any, rounding: Callable[[float], float]) -> float | None:
    return None if value is None else rounding(float(value))


def public_dp(dp: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's view of a DP guarantee (`dp`: the registry's DP fields; a field the
    publisher did not give is None)."""
    epsilon = _maybe(dp.get("epsilon"), round_up)
    delta = _maybe(dp.get("delta"), float)
    preprocessing = dp.get("preprocessing") or "none"
    stats = dp.get("stats_noise_multiplier")
    return {
        "epsilon": epsilon,
        "delta": delta,
        "noise_multiplier": _maybe(dp.get("noise_multiplier"), round_to),
        "clip_norm": dp.get("clip_norm"),
        "epochs": None if dp.get("epochs") is None else round(float(dp["epochs"])),
        "steps": dp.get("steps"),
        "accountant": dp.get("accountant"),
        "preprocessing": {
            "kind": preprocessing,
            "covered": True,
            "stats_noise_multiplier": _maybe(stats, round_to),
        },
        "statement": (
            f"DP-SGD: ({_text(epsilon)}, {_text(delta)})-DP for each training example "
            "(add-or-remove-one "
            f"adjacency), covering the whole model: every intermediate model's weights and the "
            f"preprocessing ({_PREPROCESSING.get(preprocessing, preprocessing)}). The "
            "training-set size is treated as public by the analysis and is not published."
        ),
    }


def _text(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def public_guarantee(privacy: str, dp: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The `dp` object callers see: None unless the model is DP."""
    if privacy != Privacy.DP.value or dp is None:
        return None
    return public_dp(dp)
