"""The model architectures training offers: mlp, cnn, lstm, gru and a small transformer.

Every model is a functional Keras model of built-in layers only (no Lambda, no custom
classes), so it serialises as plain config and every trainable layer has a fast gradient-norm
function (see `clipping`). The model takes the dataset's raw features (input `features`, the
dataset's feature shape), applies the preprocessing as a `Normalization` layer with fixed
statistics, reshapes to the view the architecture needs (image or sequence, see
`datasets.image_shape` / `sequence_shape`), and ends in a `Dense` layer named `logits`
followed by a `Softmax` named `probabilities`, the served output. Training differentiates the
logits (`logits_model`).

Activations default to tanh: bounded activations train better than ReLU under DP-SGD
(Papernot et al., "Tempered sigmoid activations for deep learning with differential privacy").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from secure_maas.errors import SecureMaasError
from secure_maas.training.datasets import Preprocessing, image_shape, sequence_shape
from secure_maas.training.options import ARCHITECTURES, DEFAULT_SIZES

INPUT_NAME = "features"
LOGITS_NAME = "logits"
OUTPUT_NAME = "probabilities"


class ArchitectureError(SecureMaasError):
    """An unknown architecture, an unknown size option, or data it cannot take."""


def build_model(
    arch: str,
    input_shape: Sequence[int],
    classes: int,
    *,
    preprocessing: Preprocessing | None = None,
    logits: bool = False,
    name: str | None = None,
    **sizes: Any,
) -> tf.keras.Model:
    """Build `arch` for inputs of `input_shape` (no batch axis) and `classes` classes.

    Sizes are keyword options with defaults in `DEFAULT_SIZES[arch]`. With `logits=True` the
    model ends at the logits layer (no softmax).
    """
    if arch not in DEFAULT_SIZES:
        raise ArchitectureError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    unknown = set(sizes) - set(DEFAULT_SIZES[arch])
    if unknown:
        raise ArchitectureError(
            f"unknown option(s) {sorted(unknown)} for {arch}; "
            f"it takes {sorted(DEFAULT_SIZES[arch])}"
        )
    if classes < 2:
        raise ArchitectureError("a classifier needs at least two classes")
    options = {**DEFAULT_SIZES[arch], **sizes}
    shape = tuple(int(d) for d in input_shape)
    inputs = tf.keras.Input(shape=shape, name=INPUT_NAME)
    x = inputs
    if preprocessing is not None and preprocessing.kind != "none":
        x = tf.keras.layers.Normalization(
            axis=tuple(range(1, len(shape) + 1)),
            mean=np.asarray(preprocessing.mean, dtype=np.float32),
            variance=np.asarray(preprocessing.variance, dtype=np.float32),
            name="preprocessing",
        )(x)
    if arch == "mlp":
        x = _mlp(x, shape, **options)
    elif arch == "cnn":
        x = _cnn(x, shape, **options)
    elif arch == "transformer":
        x = _transformer(x, shape, **options)
    else:
        x = _recurrent(x, shape, arch=arch, **options)
    out = tf.keras.layers.Dense(classes, name=LOGITS_NAME)(x)
    if not logits:
        out = tf.keras.layers.Softmax(name=OUTPUT_NAME)(out)
    return tf.keras.Model(inputs, out, name=name or arch)


def logits_model(model: tf.keras.Model) -> tf.keras.Model:
    """The same layers and weights, ending at the logits (what DP-SGD differentiates)."""
    return tf.keras.Model(model.inputs, model.get_layer(LOGITS_NAME).output, name=model.name)


def _int_tuple(value: Any, option: str) -> tuple[int, ...]:
    values = (value,) if isinstance(value, int) else tuple(value)
    if not values or not all(isinstance(v, int) and v > 0 for v in values):
        raise ArchitectureError(f"{option} must be positive integers, got {value!r}")
    return values


def _mlp(x: tf.Tensor, shape: tuple[int, ...], *, units: Any, activation: str) -> tf.Tensor:
    if len(shape) > 1:
        x = tf.keras.layers.Flatten(name="flatten")(x)
    for i, width in enumerate(_int_tuple(units, "units")):
        x = tf.keras.layers.Dense(width, activation=activation, name=f"dense_{i}")(x)
    return x


def _cnn(
    x: tf.Tensor,
    shape: tuple[int, ...],
    *,
    filters: Any,
    kernel_size: int,
    dense_units: int,
    activation: str,
) -> tf.Tensor:
    view = image_shape(shape)
    if view is None:
        raise ArchitectureError(
            f"cnn needs image-shaped features (height, width[, channels]); these are {shape}"
        )
    x = tf.keras.layers.Reshape(view, name="image")(x)
    height, width = view[0], view[1]
    for i, count in enumerate(_int_tuple(filters, "filters")):
        x = tf.keras.layers.Conv2D(
            count, kernel_size, padding="same", activation=activation, name=f"conv_{i}"
        )(x)
        if height >= 2 and width >= 2:
            x = tf.keras.layers.MaxPooling2D(2, name=f"pool_{i}")(x)
            height, width = height // 2, width // 2
    x = tf.keras.layers.Flatten(name="flatten")(x)
    if dense_units:
        x = tf.keras.layers.Dense(dense_units, activation=activation, name="dense")(x)
    return x


def _recurrent(x: tf.Tensor, shape: tuple[int, ...], *, arch: str, units: int) -> tf.Tensor:
    x = tf.keras.layers.Reshape(sequence_shape(shape), name="sequence")(x)
    layer = tf.keras.layers.LSTM if arch == "lstm" else tf.keras.layers.GRU
    return layer(units, name=arch)(x)


def _transformer(
    x: tf.Tensor,
    shape: tuple[int, ...],
    *,
    model_dim: int,
    heads: int,
    ff_units: int,
    blocks: int,
    activation: str,
) -> tf.Tensor:
    """A small encoder: projection, self-attention blocks (post-norm), mean pooling.

    Tokens are the steps of the sequence view. Keras 2.15 has no position-embedding layer and
    Lambda is excluded, so the projection is position-aware instead: the whole input is mapped
    by one Dense to `steps * model_dim` and reshaped, giving each position its own weights.
    """
    steps, _ = sequence_shape(shape)
    if model_dim % heads:
        raise ArchitectureError(f"model_dim {model_dim} must be a multiple of heads {heads}")
    x = tf.keras.layers.Flatten(name="flatten")(x)
    x = tf.keras.layers.Dense(steps * model_dim, name="projection")(x)
    x = tf.keras.layers.Reshape((steps, model_dim), name="tokens")(x)
    for i in range(blocks):
        attention = tf.keras.layers.MultiHeadAttention(
            heads, model_dim // heads, name=f"attention_{i}"
        )(x, x)
        x = tf.keras.layers.Add(name=f"residual_a{i}")([x, attention])
        x = tf.keras.layers.LayerNormalization(name=f"norm_a{i}")(x)
        ff = tf.keras.layers.Dense(ff_units, activation=activation, name=f"ff_{i}")(x)
        ff = tf.keras.layers.Dense(model_dim, name=f"ff_out_{i}")(ff)
        x = tf.keras.layers.Add(name=f"residual_f{i}")([x, ff])
        x = tf.keras.layers.LayerNormalization(name=f"norm_f{i}")(x)
    return tf.keras.layers.GlobalAveragePooling1D(name="pool")(x)
