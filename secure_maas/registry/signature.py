"""The serving signature of a model: the names, shapes and dtypes of its inputs and outputs.

It is what the metadata endpoints report (TF Serving's `signature_def`, OIP v2's `inputs` and
`outputs`), what requests are checked against before they reach TensorFlow, and what a serving
`tf.function` is traced with. It is stored in the database row of a model version and inside
its artifact, both as the canonical JSON that `to_json` writes.

This module is pure Python: `from_model` reads a Keras model through its attributes and never
imports TensorFlow, so the CLI and the metadata endpoints can use signatures cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from secure_maas.errors import SecureMaasError

#: A tensor of byte strings (TensorFlow's `tf.string`, TF Serving's `DT_STRING`, OIP's `BYTES`):
#: text or binary values, held in numpy as an object array of `bytes`.
STRING = "string"
# The dtypes a served tensor may have: the numeric ones TF Serving's REST API and OIP v2 carry,
# and byte strings.
DTYPES = frozenset(
    {
        STRING,
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)


def numpy_dtype_name(dtype: str) -> str:
    """The numpy dtype that holds a tensor of `dtype`: `object` (of `bytes`) for strings."""
    return "object" if dtype == STRING else dtype


class InvalidModelData(SecureMaasError):
    """Model bytes or a stored signature are malformed: truncated, wrong format, inconsistent."""


class UnsupportedModel(SecureMaasError):
    """The model cannot be served as is: no symbolic inputs, unsupported dtype, and the like."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output; `None` in `shape` is a free dimension (the batch, first)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: object) -> TensorSpec:
        """Parse and check one spec; `InvalidModelData` names what is wrong."""
        if not isinstance(data, dict) or set(data) != {"name", "shape", "dtype"}:
            raise InvalidModelData("a tensor spec must be an object with name, shape and dtype")
        name, shape, dtype = data["name"], data["shape"], data["dtype"]
        if not isinstance(name, str) or not name:
            raise InvalidModelData("a tensor spec name must be a non-empty string")
        if not isinstance(shape, list) or not all(_is_dim(d) for d in shape):
            raise InvalidModelData(f"tensor {name!r}: shape must be a list of sizes or null")
        if dtype not in DTYPES:
            raise InvalidModelData(f"tensor {name!r}: unsupported dtype {dtype!r}")
        return cls(name=name, shape=tuple(shape), dtype=dtype)


@dataclass(frozen=True)
class ServingSignature:
    """The inputs and outputs of a model, in the order the model takes and returns them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [spec.name for spec in specs]
            if not names:
                raise InvalidModelData(f"a serving signature needs at least one {kind}")
            if len(set(names)) != len(names):
                raise InvalidModelData(f"{kind} names repeat in the signature: {names}")

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal signatures give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: object) -> ServingSignature:
        """Parse what `to_dict` returned; anything else raises `InvalidModelData`."""
        if not isinstance(data, dict) or set(data) != {"inputs", "outputs"}:
            raise InvalidModelData("a serving signature must be an object of inputs and outputs")
        if not isinstance(data["inputs"], list) or not isinstance(data["outputs"], list):
            raise InvalidModelData("signature inputs and outputs must be lists")
        return cls(
            inputs=tuple(TensorSpec.from_dict(item) for item in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(item) for item in data["outputs"]),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ServingSignature:
        """Parse what `to_json` wrote; anything else raises `InvalidModelData`."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidModelData(f"serving signature is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_model(cls, model: Any) -> ServingSignature:
        """Read the signature of a built functional or Sequential Keras model.

        Names are the model's own `input_names` and `output_names` (the names of its input
        layers and output layers), so they survive a round trip through the model's config.
        """
        inputs = getattr(model, "inputs", None)
        outputs = getattr(model, "outputs", None)
        if not inputs or not outputs:
            raise UnsupportedModel(
                "the model has no symbolic inputs: build it from keras.Input (functional or "
                "Sequential with an input shape); subclassed models cannot be served"
            )
        return cls(
            inputs=_specs(model.input_names, inputs),
            outputs=_specs(model.output_names, outputs),
        )


def _is_dim(value: object) -> bool:
    return value is None or (type(value) is int and value >= 0)


def _specs(names: list[str], tensors: list[Any]) -> tuple[TensorSpec, ...]:
    if len(names) != len(tensors):
        raise UnsupportedModel("the model's tensor names do not match its tensors")
    specs = []
    for name, tensor in zip(names, tensors, strict=True):
        dtype = getattr(tensor.dtype, "name", str(tensor.dtype))
        if dtype not in DTYPES:
            raise UnsupportedModel(f"tensor {name!r} has dtype {dtype}, which cannot be served")
        try:
            dims = list(tensor.shape)
        except ValueError as exc:  # a TensorShape of unknown rank cannot be listed
            raise UnsupportedModel(f"tensor {name!r} has no known rank") from exc
        specs.append(TensorSpec(name=str(name), shape=tuple(dims), dtype=dtype))
    return tuple(specs)
