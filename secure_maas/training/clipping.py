"""Fast ("ghost") per-example gradient clipping: TF Privacy's layer registry plus our own.

DP-SGD clips each example's gradient to norm C. Materialising per-example gradients costs a
copy of every weight per example; the fast path instead needs only each example's squared
gradient NORM, which for a linear map `z = a W + b` applied at positions p is

    || sum_p a_p g_p^T ||_F^2 + || sum_p g_p ||^2,    g_p = dL/dz_p,

computable from the layer inputs `a` and the output gradients `g` of ONE batched backward pass
(Goodfellow 2015, Lee & Kifer 2020, Li et al. 2022). TF Privacy 0.9.0 ships this for Dense,
Embedding, EinsumDense, LayerNormalization and MultiHeadAttention. This module adds:

* Conv2D: the positions are the output pixels, `a_p` the input patch under the kernel
  (`tf.image.extract_patches`, same padding, strides and dilation as the convolution).
* LSTM and GRU: the positions are the timesteps. The registry function runs the recurrence
  itself (unrolled, the same equations as Keras' cells) so that the pre-activations of every
  step are tensors the tape can differentiate; `a_t` is `[x_t, h_{t-1}]` for the LSTM (kernel
  and recurrent kernel share the gate pre-activation) and `x_t`, `h_{t-1}` separately for the
  GRU (its recurrent product is gated after the matrix product, reset_after=True).

Each squared norm is computed either from the two Gram matrices (`<a a^T, g g^T>`, cost
positions^2) or from the materialised per-example kernel gradient (cost in*out), whichever is
cheaper for the layer's static shapes.

The registry contract of TF Privacy 0.9.0 (`layer_registry.py`): a function
`(layer, args, kwargs, tape, num_microbatches) -> (base_vars, outputs, sqr_norm_fn)`, where
`base_vars` are tensors watched on `tape`, `outputs` equals `layer(*args, **kwargs)` and
`sqr_norm_fn(dL/d base_vars)` returns the per-example (or per-microbatch) squared norms.

`plan_clipping` decides, before training, whether every trainable layer of a model can use the
fast path; if one cannot, training takes TF Privacy's per-example path and says why.

Why some layers without weights are refused too. The fast path runs the model TWICE: the norm
pass (`clip_grads.compute_gradient_norms`, which calls each layer with no `training` argument,
i.e. in inference mode, and whose registry functions drop Keras masks) and the gradient pass
(`model(x, training=True)`, masks honoured). The clip weights come from the first, the summed
gradients from the second, so the clipping bound holds only if both passes compute the same
function. It fails, and per-example norms after "clipping" exceed C (by 1.1x to 3x in the
privacy review), with any layer whose forward differs between training and inference (Dropout
and its variants, GaussianNoise, BatchNormalization, random augmentation, ...), any layer that
draws randomness per call (the two passes draw differently), and any Keras mask (Masking,
`Embedding(mask_zero=True)`): such models take the per-example path, which differentiates the
very forward pass it clips. The rule is an allow-list: a built-in Keras layer whose `call` takes
no `training` argument, or one of a few built-ins known to ignore it (InputLayer;
MultiHeadAttention, LSTM and GRU without dropout); anything else is refused.

`dp_incompatible_reason` names layers that break DP-SGD on ANY path (BatchNormalization: its
moving statistics are exact, un-noised statistics of the training batches).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
from tensorflow_privacy.privacy.fast_gradient_clipping import (
    gradient_clipping_utils,
    layer_registry,
)
from tensorflow_privacy.privacy.fast_gradient_clipping.registry_functions import (
    dense,
    einsum_dense,
    embedding,
    layer_normalization,
    multi_head_attention,
)

FAST = "fast-clipping"
PER_EXAMPLE = "per-example"

RegistryOutput = tuple[Any, Any, Callable[[Any], tf.Tensor]]


@dataclass(frozen=True)
class ClippingPlan:
    """Which clipping path a model takes, and why."""

    path: str  # FAST or PER_EXAMPLE
    reason: str
    unsupported: tuple[str, ...] = ()

    @property
    def fast(self) -> bool:
        return self.path == FAST


def make_layer_registry() -> layer_registry.LayerRegistry:
    """TF Privacy's shipped registry functions plus ours for Conv2D, LSTM and GRU."""
    registry = layer_registry.LayerRegistry()
    registry.insert(tf.keras.layers.Dense, dense.dense_layer_computation)
    registry.insert(tf.keras.layers.Embedding, embedding.embedding_layer_computation)
    registry.insert(tf.keras.layers.EinsumDense, einsum_dense.einsum_layer_computation)
    registry.insert(
        tf.keras.layers.LayerNormalization, layer_normalization.layer_normalization_computation
    )
    registry.insert(
        tf.keras.layers.MultiHeadAttention,
        multi_head_attention.multi_head_attention_layer_computation,
    )
    registry.insert(tf.keras.layers.Conv2D, conv2d_layer_computation)
    registry.insert(tf.keras.layers.LSTM, lstm_layer_computation)
    registry.insert(tf.keras.layers.GRU, gru_layer_computation)
    return registry


def plan_clipping(model: tf.keras.Model, registry: layer_registry.LayerRegistry) -> ClippingPlan:
    """The fast path when both of its passes compute the same function (no training-dependent
    layer, no mask, see the module docstring) and every trainable layer has a registry function
    that supports it; otherwise the per-example path, with the reason naming each layer."""
    if not gradient_clipping_utils.has_internal_compute_graph(model):
        return ClippingPlan(
            PER_EXAMPLE, "the model has no functional graph to traverse (subclassed model)"
        )
    inconsistent = forward_pass_problems(model)
    unregistered = []
    for layer in model.layers:
        if not layer.trainable_variables:
            continue
        why = unsupported_reason(layer, registry)
        if why is not None:
            unregistered.append(f"{layer.name} ({type(layer).__name__}): {why}")
    if inconsistent or unregistered:
        parts = []
        if inconsistent:
            parts.append(
                "the fast path's norm pass (inference mode, masks dropped) would not compute "
                "the forward pass whose gradients it sums, so its clipping would not bound "
                "them: " + "; ".join(inconsistent)
            )
        if unregistered:
            parts.append("no fast gradient-norm function for " + "; ".join(unregistered))
        return ClippingPlan(PER_EXAMPLE, ". ".join(parts), tuple(inconsistent + unregistered))
    kinds = sorted({type(layer).__name__ for layer in model.layers if layer.trainable_variables})
    return ClippingPlan(FAST, "every trainable layer has a registry function: " + ", ".join(kinds))


# --------------------------------------------------------------------------- pass consistency


def _mha_training_reason(layer: tf.keras.layers.Layer) -> str | None:
    rate = float(layer.get_config().get("dropout", 0.0) or 0.0)
    if rate:
        return f"its attention dropout ({rate:g}) is applied in training only"
    return None


def _recurrent_training_reason(layer: tf.keras.layers.Layer) -> str | None:
    if layer.dropout or layer.recurrent_dropout:
        return "its dropout / recurrent_dropout is applied in training only"
    return None


# Built-in layers whose `call` takes `training` but which compute the same in both modes when
# the check returns None. Exact types: a subclass may override `call`.
_TRAINING_ARG_IGNORED: dict[type, Callable[[tf.keras.layers.Layer], str | None]] = {
    tf.keras.layers.InputLayer: lambda layer: None,
    tf.keras.layers.MultiHeadAttention: _mha_training_reason,
    tf.keras.layers.LSTM: _recurrent_training_reason,
    tf.keras.layers.GRU: _recurrent_training_reason,
}

_KERAS_PACKAGES = ("keras", "tf_keras")


def training_mode_reason(layer: tf.keras.layers.Layer) -> str | None:
    """Why `layer` may compute differently in the fast path's two passes, or None.

    The norm pass calls layers in inference mode, the gradient pass in training mode, and each
    pass draws its own randomness. A layer is accepted only on evidence that it computes the
    same function in both: a built-in Keras layer whose `call` takes no `training` argument, or
    a listed built-in in a configuration that ignores it. Everything else (Dropout and its
    variants, GaussianNoise, BatchNormalization, random augmentation, Lambda, wrappers, custom
    layers, and the TFOpLambda layers Keras makes when a tf function such as
    `tf.random.normal` is applied to a Keras tensor; slicing stays allowed) is refused: a wrong
    refusal costs speed, a wrong acceptance costs the guarantee.
    """
    check = _TRAINING_ARG_IGNORED.get(type(layer))
    if check is not None:
        return check(layer)
    if type(layer).__module__.split(".")[0] not in _KERAS_PACKAGES:
        return (
            "not a built-in Keras layer, so nothing shows that it computes the same in "
            "inference and training mode, nor that it draws no randomness"
        )
    if _takes_training_argument(layer):
        return (
            "its call takes a `training` argument, so it may compute differently in "
            "training mode (gradient pass) than in inference mode (norm pass)"
        )
    if type(layer).__name__ == "TFOpLambda":
        return (
            f"it wraps the TensorFlow function {getattr(layer, 'symbol', '?')!r} (a tf "
            "operation applied to a Keras tensor), which may draw randomness per call; wrap "
            "it in a Keras layer"
        )
    return None


def _takes_training_argument(layer: tf.keras.layers.Layer) -> bool:
    try:
        parameters = inspect.signature(layer.call).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: assume the worst
        return True
    return any(p.name == "training" or p.kind is p.VAR_KEYWORD for p in parameters)


def forward_pass_problems(model: tf.keras.Model) -> list[str]:
    """`name (Type): why` for every layer of `model`'s functional graph (nested functional
    models included) that makes the fast path's norm pass differ from its gradient pass: a
    training-dependent layer (`training_mode_reason`), or a Keras mask, which the registry
    functions drop (reported at the layer whose output first carries it, and at any layer
    called with an explicit `mask`)."""
    problems = []
    for node in _graph_nodes(model):
        layer = node.layer
        label = f"{layer.name} ({type(layer).__name__})"
        why = training_mode_reason(layer)
        if why is not None:
            problems.append(f"{label}: {why}")
        masked_in = any(_has_mask(t) for t in node.keras_inputs)
        if not masked_in and any(_has_mask(t) for t in tf.nest.flatten(node.outputs)):
            problems.append(
                f"{label}: its output carries a Keras mask, which the layers after it honour "
                "in the gradient pass but not in the norm pass"
            )
        if node.call_kwargs.get("mask") is not None:
            problems.append(f"{label}: it is called with an explicit mask")
    return list(dict.fromkeys(problems))


def _has_mask(tensor: Any) -> bool:
    return getattr(tensor, "_keras_mask", None) is not None


def _graph_nodes(model: tf.keras.Model, seen: set[int] | None = None) -> Iterator[Any]:
    """The call nodes of a functional model, recursing into nested functional models (the way
    TF Privacy's norm pass traverses them) instead of yielding them."""
    seen = set() if seen is None else seen
    if id(model) in seen:
        return
    seen.add(id(model))
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            if gradient_clipping_utils.has_internal_compute_graph(node.layer):
                yield from _graph_nodes(node.layer, seen)
            else:
                yield node


# --------------------------------------------------------------------------- DP soundness


def dp_incompatible_reason(model: tf.keras.Model) -> str | None:
    """Why DP-SGD cannot make `model` private on ANY clipping path, or None.

    DP-SGD privatises the gradient update and nothing else. A BatchNormalization layer (or a
    subclass, e.g. SyncBatchNormalization) also writes its moving mean and variance from every
    training batch: exact, un-noised statistics of the training data, stored in the published
    model. In training it also normalises each example with the statistics of its batch, so one
    example's clipped gradient depends on the others' data (and on the per-example path it
    normalises a batch of one). Refused even when frozen (`trainable=False`): its statistics
    then come from data no guarantee of ours covers, and the flag can be switched back.
    Sublayers of wrappers and nested models are searched too.
    """
    found = [
        f"{layer.name} ({type(layer).__name__})"
        for layer in _all_layers(model)
        if isinstance(layer, tf.keras.layers.BatchNormalization)
    ]
    if not found:
        return None
    return (
        "DP-SGD cannot train " + ", ".join(found) + ": BatchNormalization stores exact "
        "statistics of the training batches in its moving mean and variance (no clipping, no "
        "noise) and normalises each example with the others in its batch; use "
        "LayerNormalization or GroupNormalization instead"
    )


def _all_layers(model: tf.keras.layers.Layer) -> Iterator[tf.keras.layers.Layer]:
    yield model
    for module in model.submodules:
        if isinstance(module, tf.keras.layers.Layer):
            yield module


def unsupported_reason(
    layer: tf.keras.layers.Layer, registry: layer_registry.LayerRegistry
) -> str | None:
    """Why `layer` cannot take the fast path, or None when it can."""
    if not registry.is_elem(layer):
        return "layer type not in the registry"
    if isinstance(layer, tf.keras.layers.Conv2D):
        return _conv2d_unsupported(layer)
    if isinstance(layer, tf.keras.layers.LSTM | tf.keras.layers.GRU):
        return _recurrent_unsupported(layer)
    if isinstance(layer, tf.keras.layers.LayerNormalization) and not (layer.center and layer.scale):
        return "TF Privacy's LayerNormalization function needs center=True and scale=True"
    return None


# --------------------------------------------------------------------------- squared norms


def sum_of_outer_sqr_norms(a: tf.Tensor, g: tf.Tensor, num_microbatches: Any = None) -> tf.Tensor:
    """Per-example `|| sum_p a[i, p] g[i, p]^T ||_F^2` for a: [B, P, K] and g: [B, P, C].

    With microbatches, the examples of a microbatch are merged with the positions, as TF
    Privacy's einsum functions do (the microbatch loss is the mean over its examples).
    """
    a = _merge_microbatches(a, num_microbatches)
    g = _merge_microbatches(g, num_microbatches)
    positions, k, c = a.shape[1], a.shape[2], g.shape[2]
    if positions is not None and k is not None and c is not None and k * c <= positions * (k + c):
        per_example = tf.einsum("bpk,bpc->bkc", a, g)
        return tf.reduce_sum(tf.square(per_example), axis=[1, 2])
    gram_a = tf.matmul(a, a, transpose_b=True)
    gram_g = tf.matmul(g, g, transpose_b=True)
    return tf.reduce_sum(gram_a * gram_g, axis=[1, 2])


def bias_sqr_norms(g: tf.Tensor, num_microbatches: Any = None) -> tf.Tensor:
    """Per-example `|| sum_p g[i, p] ||^2` for g: [B, P, C] (the gradient of a bias)."""
    g = _merge_microbatches(g, num_microbatches)
    return tf.reduce_sum(tf.square(tf.reduce_sum(g, axis=1)), axis=1)


def _merge_microbatches(t: tf.Tensor, num_microbatches: Any) -> tf.Tensor:
    if num_microbatches is None:
        return t
    shape = tf.shape(t)
    return tf.reshape(t, [num_microbatches, -1, t.shape[-1] or shape[-1]])


# --------------------------------------------------------------------------- Conv2D


def _conv2d_unsupported(layer: tf.keras.layers.Conv2D) -> str | None:
    if layer.data_format != "channels_last":
        return "only channels_last Conv2D is supported"
    if layer.groups != 1:
        return "grouped convolutions are not supported"
    if layer.padding not in ("valid", "same"):
        return f"padding {layer.padding!r} is not supported"
    return None


def conv2d_layer_computation(
    layer_instance: tf.keras.layers.Conv2D,
    input_args: Sequence[Any],
    input_kwargs: Mapping[str, Any],
    tape: tf.GradientTape,
    num_microbatches: Any = None,
) -> RegistryOutput:
    """Registry function for `tf.keras.layers.Conv2D` (kernel and bias)."""
    why = _conv2d_unsupported(layer_instance)
    if why is not None:
        raise NotImplementedError(f"{layer_instance.name}: {why}")
    if input_kwargs or len(input_args) != 1:
        raise ValueError("Conv2D registry function takes exactly one positional input")
    inputs = input_args[0]
    activation = layer_instance.activation
    layer_instance.activation = None
    try:
        base_vars = layer_instance(inputs)
    finally:
        layer_instance.activation = activation
    tape.watch(base_vars)
    outputs = activation(base_vars) if activation is not None else base_vars
    kh, kw = layer_instance.kernel_size
    sh, sw = layer_instance.strides
    dh, dw = layer_instance.dilation_rate
    cin = int(layer_instance.kernel.shape[2])
    cout = int(layer_instance.kernel.shape[3])

    def sqr_norm_fn(grads: tf.Tensor) -> tf.Tensor:
        patches = tf.image.extract_patches(
            inputs,
            sizes=[1, kh, kw, 1],
            strides=[1, sh, sw, 1],
            rates=[1, dh, dw, 1],
            padding=layer_instance.padding.upper(),
        )
        batch = tf.shape(patches)[0]
        positions = _static_positions(grads)
        a = tf.reshape(patches, [batch, positions, kh * kw * cin])
        g = tf.reshape(grads, [batch, positions, cout])
        sqr = sum_of_outer_sqr_norms(a, g, num_microbatches)
        if layer_instance.use_bias:
            sqr += bias_sqr_norms(g, num_microbatches)
        return sqr

    return base_vars, outputs, sqr_norm_fn


def _static_positions(grads: tf.Tensor) -> Any:
    h, w = grads.shape[1], grads.shape[2]
    if h is not None and w is not None:
        return int(h) * int(w)
    return tf.shape(grads)[1] * tf.shape(grads)[2]


# --------------------------------------------------------------------------- LSTM and GRU


def _recurrent_unsupported(layer: tf.keras.layers.RNN) -> str | None:
    cell = layer.cell
    if layer.go_backwards or layer.stateful or layer.time_major or layer.return_state:
        return "go_backwards, stateful, time_major and return_state are not supported"
    if cell.dropout or cell.recurrent_dropout:
        return "dropout inside the recurrent layer is not supported"
    if isinstance(layer, tf.keras.layers.GRU) and not cell.reset_after:
        return "only GRU(reset_after=True), the TF2 default, is supported"
    return None


def _recurrent_inputs(
    layer: tf.keras.layers.RNN, input_args: Sequence[Any], input_kwargs: Mapping[str, Any]
) -> tf.Tensor:
    why = _recurrent_unsupported(layer)
    if why is not None:
        raise NotImplementedError(f"{layer.name}: {why}")
    if len(input_args) != 1 or any(
        input_kwargs.get(k) is not None for k in input_kwargs if k != "training"
    ):
        raise NotImplementedError(
            f"{layer.name}: only a single unmasked input without initial state is supported"
        )
    inputs = input_args[0]
    if inputs.shape.rank != 3 or inputs.shape[1] is None:
        raise NotImplementedError(f"{layer.name}: the number of timesteps must be static")
    return inputs


def lstm_layer_computation(
    layer_instance: tf.keras.layers.LSTM,
    input_args: Sequence[Any],
    input_kwargs: Mapping[str, Any],
    tape: tf.GradientTape,
    num_microbatches: Any = None,
) -> RegistryOutput:
    """Registry function for `tf.keras.layers.LSTM` (kernel, recurrent kernel, bias).

    Unrolls the LSTM cell of Keras 2.15 (gates i, f, c, o): z_t = x_t W + h_{t-1} U + b,
    c_t = f c_{t-1} + i act(z_c), h_t = o act(c_t). The watched tensors are the z_t.
    """
    inputs = _recurrent_inputs(layer_instance, input_args, input_kwargs)
    cell = layer_instance.cell
    steps = int(inputs.shape[1])
    batch = tf.shape(inputs)[0]
    zx = tf.matmul(inputs, cell.kernel)
    if cell.use_bias:
        zx = zx + cell.bias
    h = tf.zeros([batch, cell.units], dtype=zx.dtype)
    c = tf.zeros([batch, cell.units], dtype=zx.dtype)
    gates, previous, outputs = [], [], []
    for t in range(steps):
        z = zx[:, t] + tf.matmul(h, cell.recurrent_kernel)
        tape.watch(z)
        gates.append(z)
        previous.append(h)
        z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
        c = cell.recurrent_activation(z_f) * c + cell.recurrent_activation(z_i) * cell.activation(
            z_c
        )
        h = cell.recurrent_activation(z_o) * cell.activation(c)
        outputs.append(h)
    result = tf.stack(outputs, axis=1) if layer_instance.return_sequences else h
    a = tf.concat([inputs, tf.stack(previous, axis=1)], axis=-1)

    def sqr_norm_fn(grads: Sequence[tf.Tensor]) -> tf.Tensor:
        g = tf.stack(list(grads), axis=1)
        sqr = sum_of_outer_sqr_norms(a, g, num_microbatches)
        if cell.use_bias:
            sqr += bias_sqr_norms(g, num_microbatches)
        return sqr

    return gates, result, sqr_norm_fn


def gru_layer_computation(
    layer_instance: tf.keras.layers.GRU,
    input_args: Sequence[Any],
    input_kwargs: Mapping[str, Any],
    tape: tf.GradientTape,
    num_microbatches: Any = None,
) -> RegistryOutput:
    """Registry function for `tf.keras.layers.GRU` with reset_after=True (gates z, r, h).

    x part: m_t = x_t W + b_in; recurrent part: n_t = h_{t-1} U + b_rec;
    z = ra(m_z + n_z), r = ra(m_r + n_r), hh = act(m_h + r * n_h), h_t = z h_{t-1} + (1-z) hh.
    The watched tensors are all m (one tensor) and each n_t.
    """
    inputs = _recurrent_inputs(layer_instance, input_args, input_kwargs)
    cell = layer_instance.cell
    steps = int(inputs.shape[1])
    batch = tf.shape(inputs)[0]
    input_bias = recurrent_bias = None
    if cell.use_bias:
        input_bias, recurrent_bias = tf.unstack(cell.bias)
    mx = tf.matmul(inputs, cell.kernel)
    if input_bias is not None:
        mx = mx + input_bias
    tape.watch(mx)
    h = tf.zeros([batch, cell.units], dtype=mx.dtype)
    inner, previous, outputs = [], [], []
    for t in range(steps):
        n = tf.matmul(h, cell.recurrent_kernel)
        if recurrent_bias is not None:
            n = n + recurrent_bias
        tape.watch(n)
        inner.append(n)
        previous.append(h)
        m_z, m_r, m_h = tf.split(mx[:, t], 3, axis=-1)
        n_z, n_r, n_h = tf.split(n, 3, axis=-1)
        z = cell.recurrent_activation(m_z + n_z)
        r = cell.recurrent_activation(m_r + n_r)
        hh = cell.activation(m_h + r * n_h)
        h = z * h + (1 - z) * hh
        outputs.append(h)
    result = tf.stack(outputs, axis=1) if layer_instance.return_sequences else h
    hidden = tf.stack(previous, axis=1)

    def sqr_norm_fn(grads: Sequence[Any]) -> tf.Tensor:
        g_x, g_inner = grads[0], tf.stack(list(grads[1]), axis=1)
        sqr = sum_of_outer_sqr_norms(inputs, g_x, num_microbatches)
        sqr += sum_of_outer_sqr_norms(hidden, g_inner, num_microbatches)
        if cell.use_bias:
            sqr += bias_sqr_norms(g_x, num_microbatches)
            sqr += bias_sqr_norms(g_inner, num_microbatches)
        return sqr

    return [mx, inner], result, sqr_norm_fn
