"""Post-training quantization with TensorFlow Lite, in memory: a served model made smaller.

`quantize(model, mode, calibration)` converts a decoded Keras model with TensorFlow Lite's
converter and returns container bytes (`registry.container`) that the registry seals like any
model. Its metadata object is::

    {"format": "secure-maas-tflite-model/1",
     "quantization": {"mode": "float16" | "dynamic" | "int8", "calibration_rows": N},
     "signature": <the parent's `ServingSignature.to_dict()`>}

and its one tensor, "model", is the TFLite flatbuffer as bytes. The serving signature is the
parent's: the converted model takes and returns the same names, shapes and float dtypes (int8
quantizes inside the graph and keeps float inputs and outputs), so clients see no difference.

Why it is done the way it is:
- Plaintext weights never touch a file (invariant 3). The converter's documented entry points
  for Keras models (`from_keras_model`, and `from_concrete_functions` given the model) save a
  SavedModel with the weights into a temporary folder first (seen with strace). The model's
  serving function is therefore frozen here, in memory (its variables become constants), and
  the frozen function, which has no variables to save, is what the converter gets.
- A converted graph may only hold TensorFlow Lite's built-in operators: `Flex*` operators run
  arbitrary TensorFlow kernels (file reads among them) and custom operators native code the
  service does not ship, so a flatbuffer that names one is refused when converted and again
  when loaded, whoever signed it.
- The TFLite interpreter is not thread-safe and has fixed tensor shapes: each call takes a
  lock and resizes the inputs to the batch's row count when it changed.
- TensorFlow is imported inside the functions that need it, so the CLI can list `MODES`
  without it.
- String tensors are refused: TFLite's string support covers few operators, and a model whose
  text layers would not convert is better served as it is.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from secure_maas.registry.container import Array, Buffer, pack, unpack
from secure_maas.registry.inputs import InvalidInput, check_inputs
from secure_maas.registry.signature import (
    STRING,
    InvalidModelData,
    ServingSignature,
    UnsupportedModel,
)

__all__ = [
    "FORMAT",
    "MAX_CALIBRATION_ROWS",
    "MODES",
    "LiteModel",
    "decode_lite",
    "quantize",
]

FORMAT = "secure-maas-tflite-model/1"
#: The quantization modes, in the order the CLI lists them.
MODES = ("float16", "dynamic", "int8")
#: Rows of calibration data int8 conversion reads (TFLite's guidance is a few hundred).
MAX_CALIBRATION_ROWS = 500
TENSOR = "model"
#: The device a TFLite model runs on: the interpreter is a CPU runtime.
DEVICE = "/CPU:0"


def quantize(
    model: Any,
    signature: ServingSignature,
    mode: str,
    calibration: Mapping[str, Array] | None = None,
) -> bytes:
    """The container bytes of `model` converted to TFLite in `mode`.

    `calibration` (int8 only, and required there) maps each input name to rows of data that
    were declared public; at most `MAX_CALIBRATION_ROWS` rows are read. Raises
    `UnsupportedModel` for a model or mode that cannot be converted, with the reason.
    """
    if mode not in MODES:
        raise UnsupportedModel(f"unknown quantization mode {mode!r}: one of {', '.join(MODES)}")
    if (mode == "int8") != (calibration is not None):
        raise UnsupportedModel("int8 needs calibration data, and only int8 takes it")
    strings = [
        spec.name for spec in (*signature.inputs, *signature.outputs) if spec.dtype == STRING
    ]
    if strings:
        raise UnsupportedModel(f"string tensors cannot be quantized with TFLite: {strings}")
    import tensorflow as tf

    rows = _calibration_rows(signature, calibration) if calibration is not None else 0
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_frozen(model, signature)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8" and calibration is not None:
        converter.representative_dataset = lambda: _samples(signature, calibration, rows)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises open-ended types (ConverterError, ...)
        raise UnsupportedModel(f"TFLite cannot convert the model: {exc}"[:500]) from exc
    _interpreter(flatbuffer)  # refuse here what loading would refuse
    metadata = {
        "format": FORMAT,
        "quantization": {"mode": mode, "calibration_rows": rows},
        "signature": signature.to_dict(),
    }
    return pack({TENSOR: np.frombuffer(flatbuffer, dtype=np.uint8)}, metadata)


def is_lite(metadata: Mapping[str, Any]) -> bool:
    """Whether a container's metadata is this format's."""
    return metadata.get("format") == FORMAT


def decode_lite(data: Buffer) -> LiteModel:
    """A `LiteModel` from `quantize` bytes. Raises `InvalidModelData` for anything else,
    including a flatbuffer with an operator outside TFLite's built-ins."""
    unpacked = unpack(data)
    fields = unpacked.metadata
    if not is_lite(fields):
        raise InvalidModelData(f"not a {FORMAT} artifact")
    tensors = dict(unpacked.tensors)
    if set(tensors) != {TENSOR} or tensors[TENSOR].dtype != np.uint8:
        raise InvalidModelData(f"a {FORMAT} artifact holds one uint8 tensor named {TENSOR!r}")
    signature = ServingSignature.from_dict(fields.get("signature"))
    # A copy: the interpreter keeps the buffer it was given, and the caller wipes `data`.
    flatbuffer = bytes(tensors[TENSOR])
    try:
        interpreter = _interpreter(flatbuffer)
    except UnsupportedModel as exc:
        raise InvalidModelData(str(exc)) from exc
    return LiteModel(interpreter, signature)


class LiteModel:
    """A TFLite model ready to serve: what `codec.LoadedModel` offers, on the interpreter."""

    def __init__(self, interpreter: Any, signature: ServingSignature) -> None:
        self.signature = signature
        self.device = DEVICE
        self._interpreter = interpreter
        self._lock = threading.Lock()
        inputs = {detail["name"]: detail for detail in interpreter.get_input_details()}
        outputs = interpreter.get_output_details()
        if set(inputs) != set(signature.input_names) or len(outputs) != len(signature.outputs):
            raise InvalidModelData("the TFLite model's tensors do not match its signature")
        self._inputs = [inputs[spec.name]["index"] for spec in signature.inputs]
        self._outputs = [detail["index"] for detail in outputs]
        self._shapes: list[tuple[int, ...]] = [()] * len(self._inputs)

    def predict(self, inputs: Mapping[str, Array] | Array) -> dict[str, Array]:
        """Run the model on a batch, checked and cast as `codec.LoadedModel.predict` does."""
        arrays = check_inputs(self.signature, inputs)
        interpreter = self._interpreter
        with self._lock:
            shapes = [array.shape for array in arrays]
            if shapes != self._shapes:
                for index, shape in zip(self._inputs, shapes, strict=True):
                    interpreter.resize_tensor_input(index, list(shape))
                interpreter.allocate_tensors()
                self._shapes = shapes
            for index, array in zip(self._inputs, arrays, strict=True):
                interpreter.set_tensor(index, np.ascontiguousarray(array))
            interpreter.invoke()
            values = [interpreter.get_tensor(index) for index in self._outputs]
        return {
            spec.name: value.astype(spec.dtype, copy=False)
            for spec, value in zip(self.signature.outputs, values, strict=True)
        }


def _frozen(model: Any, signature: ServingSignature) -> Any:
    """The model's serving function with its variables folded into constants, in memory."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    specs = [
        tf.TensorSpec((None, *spec.shape[1:]), dtype=spec.dtype, name=spec.name)
        for spec in signature.inputs
    ]

    def serve(*tensors: Any) -> list[Any]:
        result = model(list(tensors) if len(tensors) > 1 else tensors[0], training=False)
        return list(tf.nest.flatten(result))

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    return convert_variables_to_constants_v2(function)


def _calibration_rows(signature: ServingSignature, calibration: Mapping[str, Array]) -> int:
    """How many rows of `calibration` int8 reads; refuses data that does not fit the inputs."""
    if set(calibration) != set(signature.input_names):
        raise UnsupportedModel(
            f"calibration data must hold the inputs {sorted(signature.input_names)}, "
            f"not {sorted(calibration)}"
        )
    try:
        arrays = check_inputs(signature, calibration)
    except InvalidInput as exc:
        raise UnsupportedModel(f"calibration data does not fit the model: {exc}") from exc
    rows = min(arrays[0].shape[0], MAX_CALIBRATION_ROWS)
    if rows == 0:
        raise UnsupportedModel("calibration data has no rows")
    return rows


def _samples(
    signature: ServingSignature, calibration: Mapping[str, Array], rows: int
) -> Iterator[list[Array]]:
    """One row at a time, every input as float32 where the model takes floats."""
    arrays = check_inputs(signature, calibration)
    for row in range(rows):
        yield [array[row : row + 1] for array in arrays]


def _interpreter(flatbuffer: bytes) -> Any:
    """An interpreter for `flatbuffer`, refused (`UnsupportedModel`) if it names an operator
    outside TFLite's built-ins."""
    import tensorflow as tf

    try:
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
        operators: Sequence[Mapping[str, Any]] = interpreter._get_ops_details()
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError for bad bytes
        raise UnsupportedModel(f"not a TFLite model TensorFlow Lite can open: {exc}"[:300]) from exc
    foreign = sorted({str(op["op_name"]) for op in operators if _foreign(str(op["op_name"]))})
    if foreign:
        raise UnsupportedModel(f"operators outside TFLite's built-ins are refused: {foreign}")
    return interpreter


def _foreign(op_name: str) -> bool:
    """Whether an operator runs something other than TFLite's own kernels: a custom operator
    (Flex ones included) is named by its custom code, never by a built-in's name."""
    return op_name not in _builtin_operators() or op_name in {"CUSTOM", "DELEGATE"}


@functools.cache
def _builtin_operators() -> frozenset[str]:
    """The names of TFLite's built-in operators, from the flatbuffer schema TensorFlow ships."""
    from tensorflow.lite.python import schema_py_generated as schema

    return frozenset(name for name in vars(schema.BuiltinOperator) if name.isupper())
