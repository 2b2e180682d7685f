"""A request's arrays checked against a serving signature: one check for every kind of model.

The Keras model (`codec.LoadedModel`) and the TFLite one (`lite.LiteModel`) both call it before
their runtime sees the data, so the two refuse the same inputs with the same messages. Numpy
only: no TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from secure_maas.errors import SecureMaasError
from secure_maas.registry.container import Array
from secure_maas.registry.signature import STRING, ServingSignature, TensorSpec


class InvalidInput(SecureMaasError):
    """A prediction request does not match the serving signature."""


def check_inputs(signature: ServingSignature, inputs: Mapping[str, Array] | Array) -> list[Array]:
    """`inputs` as arrays in the signature's input order, cast to its dtypes when numpy's
    "same_kind" rule allows it; a missing or extra name, a wrong rank or size, different batch
    sizes or an unsafe cast raise `InvalidInput`. One check for every kind of served model."""
    specs = signature.inputs
    if not isinstance(inputs, Mapping):
        if len(specs) != 1:
            raise InvalidInput(f"the model takes named inputs: {signature.input_names}")
        inputs = {specs[0].name: inputs}
    if set(inputs) != set(signature.input_names):
        raise InvalidInput(f"expected inputs {sorted(signature.input_names)}, got {sorted(inputs)}")
    arrays = []
    for spec in specs:
        array = _input_array(inputs[spec.name], spec)
        fixed = spec.shape[1:]
        if array.ndim != len(spec.shape) or any(
            want is not None and got != want
            for got, want in zip(array.shape[1:], fixed, strict=True)
        ):
            raise InvalidInput(
                f"input {spec.name!r} has shape {array.shape}, expected (batch, *{fixed})"
            )
        arrays.append(array)
    if len({array.shape[0] for array in arrays}) > 1:
        raise InvalidInput("all inputs must have the same batch size")
    return arrays


def _input_array(value: Array, spec: TensorSpec) -> Array:
    """`value` as the spec's dtype: a numpy "same_kind" cast for numbers; for strings, an
    object array whose every element is `bytes` (TensorFlow's own reading of `tf.string`)."""
    if spec.dtype == STRING:
        array = np.asarray(value, dtype=object)
        if not all(type(item) is bytes for item in array.flat):
            raise InvalidInput(f"input {spec.name!r} takes bytes values only")
        return array
    try:
        return np.asarray(value).astype(spec.dtype, casting="same_kind")
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"input {spec.name!r} cannot be read as {spec.dtype}") from exc
