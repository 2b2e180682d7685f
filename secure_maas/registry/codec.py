"""A Keras model to bytes and back, in memory only: plaintext weights never touch a file.

The bytes are a `secure_maas.registry.container` (the safetensors layout: a JSON header, then
raw little-endian tensor data; see that module for the byte layout). Its metadata object is::

    {"architecture": <the object `model.to_json()` writes>,
     "format": "secure-maas-keras-model/1",
     "signature": <`ServingSignature.to_dict()`>}

and its tensors are the model's weights, named "NNNNN:<variable name>", NNNNN the five-digit
position of the variable in `model.weights`. Decoding restores that order and checks each
weight's shape, dtype and own name (the last part of the variable name, such as "kernel:0" or
"moving_mean:0") against the rebuilt model. The name scope before it is a label only:
TensorFlow leaves the layer's scope out of a weight created before its layer joined a model
(a `Normalization` adapted first). The same model always encodes to the same bytes.

Decoding refuses an architecture that could run code or reach outside the model (`UnsafeModel`)
before Keras sees it, and reports anything malformed as `InvalidModelData`: for any input
bytes, those are the only two exceptions `decode_model` raises. It reads its buffer in place
and keeps no view of it, so the caller can unmap or wipe the decrypted plaintext (an opened
artifact's own mapping) once the model is loaded.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from secure_maas.errors import SecureMaasError
from secure_maas.registry.container import ENCODABLE, Array, Buffer, Unpacked, pack, unpack
from secure_maas.registry.inputs import InvalidInput, check_inputs
from secure_maas.registry.lite import LiteModel, decode_lite, is_lite
from secure_maas.registry.signature import (
    InvalidModelData,
    ServingSignature,
    UnsupportedModel,
)

__all__ = [
    "FORMAT",
    "InvalidInput",
    "InvalidModelData",
    "LoadedModel",
    "ServedModel",
    "UnsafeModel",
    "UnsupportedModel",
    "check_architecture",
    "check_inputs",
    "choose_device",
    "decode_model",
    "encode_model",
]

logger = logging.getLogger(__name__)

FORMAT = "secure-maas-keras-model/1"

# Built-in classes refused unless named in `allow_custom`, and why. Lambda is refused always.
_REFUSED = {
    **dict.fromkeys(
        ("TFOpLambda", "SlicingOpLambda", "ClassMethod", "InstanceMethod", "InstanceProperty"),
        "calls whatever TensorFlow function or attribute the artifact names",
    ),
    "TensorFlowOpLayer": "runs a raw TensorFlow graph node taken from the artifact",
    **dict.fromkeys(
        ("DropoutWrapper", "ResidualWrapper", "DeviceWrapper"),
        "may carry a serialized Python function",
    ),
    **dict.fromkeys(
        ("DenseFeatures", "SequenceFeatures"), "may read vocabulary files on the serving host"
    ),
}


class UnsafeModel(SecureMaasError):
    """The architecture names something that could run code or reach outside the model."""


def encode_model(model: Any) -> bytes:
    """Serialise a built functional or Sequential Keras model (architecture, weights, signature).

    Deterministic: the same model gives the same bytes. Raises `UnsupportedModel` for a model
    without symbolic inputs (subclassed) or with weights of a dtype the container cannot hold.
    """
    signature = ServingSignature.from_model(model)
    try:
        architecture = json.loads(model.to_json())
    except NotImplementedError as exc:
        raise UnsupportedModel(f"the model cannot describe its architecture: {exc}") from exc
    tensors = {}
    for index, (variable, value) in enumerate(zip(model.weights, model.get_weights(), strict=True)):
        if not hasattr(variable, "name"):  # Keras' VocabWeightHandler: an adapted lookup table
            raise UnsupportedModel(
                "the model holds a lookup table adapted in place (TextVectorization, "
                "StringLookup, IntegerLookup): build that layer with vocabulary=... (its "
                "get_vocabulary()) so the vocabulary is part of the architecture"
            )
        array = np.asarray(value)
        if array.dtype.name not in ENCODABLE:
            raise UnsupportedModel(f"weight {variable.name} has unsupported dtype {array.dtype}")
        tensors[f"{index:05d}:{variable.name}"] = array
    return pack(
        tensors,
        {"architecture": architecture, "format": FORMAT, "signature": signature.to_dict()},
    )


def decode_model(data: Buffer, *, allow_custom: Mapping[str, type] | None = None) -> ServedModel:
    """Rebuild a model from `encode_model` bytes, on the GPU when there is one, or a quantized
    model from `lite.quantize` bytes (the TFLite interpreter runs on the CPU).

    `allow_custom` maps class names to the custom layer (or other Keras) classes the artifact
    may use; the risky built-ins (TFOpLambda, SlicingOpLambda and the others in `_REFUSED`)
    pass only when named there, a Lambda layer never. Raises `UnsafeModel` or
    `InvalidModelData`, and nothing else, whatever the bytes.
    """
    unpacked = unpack(data)
    if is_lite(unpacked.metadata):
        return decode_lite(data)
    architecture, signature, weights = _read_container(unpacked)
    allowed = dict(allow_custom or {})
    check_architecture(architecture, allowed)
    device = _place()
    with tf.device(device):
        model = _build(architecture, allowed)
        _set_weights(model, weights)
    try:
        rebuilt = ServingSignature.from_model(model)
    except UnsupportedModel as exc:
        raise InvalidModelData(f"the rebuilt model cannot be served: {exc}") from exc
    if rebuilt != signature:
        raise InvalidModelData("the stored serving signature does not match the architecture")
    return LoadedModel(model, signature, device)


def check_architecture(config: object, allow_custom: Mapping[str, type] | None = None) -> None:
    """Refuse (`UnsafeModel`) an architecture config that Keras must not be asked to build.

    Every object (a dict with "class_name") must be a built-in Keras layer, model, initializer,
    regularizer, constraint or activation, or a class in `allow_custom`; Lambda layers,
    serialized functions and modules outside Keras are refused. The walk is iterative, so a
    deeply nested config cannot exhaust the stack.
    """
    allowed = dict(allow_custom or {})
    stack: list[tuple[object, str]] = [(config, "$")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node))
        elif isinstance(node, dict):
            _check_object(node, path, allowed)
            stack.extend((value, f"{path}.{key}") for key, value in node.items())


def choose_device(gpu_names: Sequence[str]) -> str:
    """The device a model is loaded onto: the first GPU when TensorFlow sees one, else the CPU."""
    return "/GPU:0" if gpu_names else "/CPU:0"


class LoadedModel:
    """A decoded model ready to serve on `device`, called through one traced `tf.function`.

    The function's input signature comes from the serving signature with a free batch
    dimension, so it is traced once, when the model is loaded, and never again.
    """

    def __init__(self, model: Any, signature: ServingSignature, device: str) -> None:
        self.model = model
        self.signature = signature
        self.device = device
        output_names = signature.output_names
        specs = [tf.TensorSpec((None, *s.shape[1:]), dtype=s.dtype) for s in signature.inputs]

        def serve(*tensors: Any) -> dict[str, Any]:
            with tf.device(device):
                result = model(list(tensors) if len(tensors) > 1 else tensors[0], training=False)
            return dict(zip(output_names, tf.nest.flatten(result), strict=True))

        # Traced here, once. Calling the concrete function skips `tf.function`'s argument
        # binding and signature matching on every call (about 0.3 ms, a third of a small
        # model's call); `_arrays` has already checked names, shapes and dtypes.
        self._serve = tf.function(serve, input_signature=specs).get_concrete_function()

    def predict(self, inputs: Mapping[str, Array] | Array) -> dict[str, Array]:
        """Run the model on a batch: arrays by input name (or one array for a one-input model).

        Values are cast to the signature's dtypes when numpy's "same_kind" rule allows it;
        a missing or extra name, a wrong rank or size, or an unsafe cast raise `InvalidInput`.
        """
        outputs = self._serve(*(tf.constant(array) for array in self._arrays(inputs)))
        return {name: value.numpy() for name, value in outputs.items()}

    def _arrays(self, inputs: Mapping[str, Array] | Array) -> list[Array]:
        return check_inputs(self.signature, inputs)


#: What `decode_model` gives: a Keras model, or a quantized one on the TFLite interpreter; both
#: have `signature`, `device` and `predict`.
ServedModel = LoadedModel | LiteModel


def _read_container(
    unpacked: Unpacked,
) -> tuple[dict[str, Any], ServingSignature, list[tuple[str, Array]]]:
    """Split the container into its architecture config, signature and weights by name."""
    fields = unpacked.metadata
    if fields.get("format") != FORMAT:
        raise InvalidModelData(f"not a {FORMAT} artifact")
    architecture = fields.get("architecture")
    if not isinstance(architecture, dict):
        raise InvalidModelData("the artifact's architecture is not a JSON object")
    return architecture, ServingSignature.from_dict(fields.get("signature")), unpacked.tensors


def _own_name(variable_name: str) -> str:
    return variable_name.rpartition("/")[2]


def _check_object(node: dict[str, Any], path: str, allowed: dict[str, type]) -> None:
    for key, value in node.items():
        if (key.endswith("_type") and value == "lambda") or (
            key == "function" and not isinstance(value, str)
        ):
            raise UnsafeModel(f"{path}.{key} holds a serialized Python function; refused")
        if key == "vocabulary" and isinstance(value, str):
            raise UnsafeModel(f"{path}.vocabulary names a file on the serving host; refused")
    if "class_name" not in node:
        return
    name = node["class_name"]
    if not isinstance(name, str):
        raise InvalidModelData(f"{path}.class_name is not a string")
    where = f"{name!r} at {path}"
    if name in {"Lambda", "__lambda__"}:
        raise UnsafeModel(f"{where}: a Lambda runs arbitrary Python code; use a built-in layer")
    module, registered = node.get("module"), node.get("registered_name")
    if name in allowed:
        found = isinstance(registered, str) and tf.keras.saving.get_registered_object(
            registered, custom_objects=allowed
        )
        if found is not allowed[name]:
            raise UnsafeModel(f"{where}: registered name {registered!r} is not the allowed class")
        return
    if name in _REFUSED:
        raise UnsafeModel(f"{where} {_REFUSED[name]}; refused unless named in allow_custom")
    classes, functions = _builtin_names()
    if name == "function":
        name = node.get("config")
        if not isinstance(name, str) or name not in functions:
            raise UnsafeModel(f"function {name!r} at {path} is not a built-in Keras activation")
    elif name not in classes:
        raise UnsafeModel(f"{where} is not a built-in Keras class and not in allow_custom")
    if module is not None and not (
        isinstance(module, str) and (module in {"keras", "builtins"} or module.startswith("keras."))
    ):
        raise UnsafeModel(f"{where} names module {module!r}, outside Keras")
    if registered is not None and registered != name:
        raise UnsafeModel(f"{where} claims registered name {registered!r}")


@functools.cache
def _builtin_names() -> tuple[frozenset[str], frozenset[str]]:
    """Class and activation names from Keras' own deserialization registries (Keras 2.15)."""
    from keras.src import activations, constraints, initializers, regularizers
    from keras.src.layers import serialization as layers

    layers.populate_deserializable_objects()
    initializers.populate_deserializable_objects()
    classes = set(layers.LOCAL.ALL_OBJECTS) | set(initializers.LOCAL.ALL_OBJECTS)
    for module, base in (
        (regularizers, regularizers.Regularizer),
        (constraints, constraints.Constraint),
    ):
        classes |= {
            k for k, v in vars(module).items() if inspect.isclass(v) and issubclass(v, base)
        }
    functions = {
        k
        for k, v in vars(activations).items()
        if inspect.isfunction(v) and v.__module__ == activations.__name__
    }
    classes -= {"Lambda", *_REFUSED}
    return frozenset(classes), frozenset(functions - {"get", "serialize", "deserialize"})


def _place() -> str:
    """Pick the device for a model being loaded, and log the choice and the reason."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            logger.debug("GPU %s already initialised; memory growth left as it is", gpu.name)
    names = [gpu.name for gpu in gpus]
    device = choose_device(names)
    if names:
        logger.info(
            "loading model onto %s: TensorFlow sees %d GPU(s) %s", device, len(names), names
        )
    else:
        logger.info("loading model onto %s: TensorFlow sees no GPU", device)
    return device


def _build(architecture: dict[str, Any], allowed: dict[str, type]) -> Any:
    """Build the checked config itself, not a re-parse of it: Keras sees what was checked."""
    from keras.src.saving.serialization_lib import SafeModeScope

    try:
        with SafeModeScope(True):  # a second line behind check_architecture: no lambdas
            model = tf.keras.models.model_from_config(architecture, custom_objects=allowed)
    except Exception as exc:  # Keras raises open-ended types for a bad config
        raise InvalidModelData(f"the architecture cannot be built: {exc!r}"[:500]) from exc
    if not isinstance(model, tf.keras.Model):
        raise InvalidModelData(f"the architecture is a {type(model).__name__}, not a model")
    return model


def _set_weights(model: Any, weights: list[tuple[str, Array]]) -> None:
    variables = model.weights
    if len(variables) != len(weights):
        raise InvalidModelData(
            f"the architecture has {len(variables)} weights, the artifact {len(weights)}"
        )
    for index, (variable, (key, array)) in enumerate(zip(variables, weights, strict=True)):
        shape, dtype = tuple(variable.shape), variable.dtype.base_dtype.name
        position, _, name = key.partition(":")
        if (
            position != f"{index:05d}"
            or _own_name(name) != _own_name(variable.name)
            or array.shape != shape
            or array.dtype != dtype
        ):
            raise InvalidModelData(
                f"weight {index} is {key} {array.shape} {array.dtype}; the architecture "
                f"expects {variable.name} {shape} {dtype}"
            )
    model.set_weights([array for _, array in weights])
