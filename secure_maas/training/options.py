"""The choices training offers, in one TensorFlow-free place.

The command line builds its `click.Choice` lists from these, the plan checks a request
against them, and the trainer and the architectures read them: a new optimizer or
architecture is added here once.
"""

from __future__ import annotations

from typing import Any

#: Each architecture's size options and their defaults (the names `build_model` takes).
DEFAULT_SIZES: dict[str, dict[str, Any]] = {
    "mlp": {"units": (128,), "activation": "tanh"},
    "cnn": {
        "filters": (16, 32),
        "kernel_size": 3,
        "dense_units": 32,
        "activation": "tanh",
    },
    "lstm": {"units": 32},
    "gru": {"units": 32},
    "transformer": {
        "model_dim": 32,
        "heads": 2,
        "ff_units": 64,
        "blocks": 1,
        "activation": "gelu",
    },
}
ARCHITECTURES = tuple(DEFAULT_SIZES)
OPTIMIZERS = ("sgd", "momentum", "adam")
#: How per-example gradients are clipped: fast (ghost) clipping when every layer allows it.
CLIPPING_PATHS = ("auto", "fast", "per-example")
PREPROCESSING = ("auto", "public-range", "dp-standardize", "standardize", "none")
#: Preprocessing whose output depends on no example, or on examples only through a DP release.
COVERED_PREPROCESSING = ("public-range", "dp-standardize", "none")
