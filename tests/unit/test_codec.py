"""Keras models to bytes and back in memory: round trips, refusals, malformed data, no files."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import safetensors.numpy
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_maas.crypto import plainmem
from secure_maas.registry.codec import (
    InvalidInput,
    InvalidModelData,
    UnsafeModel,
    UnsupportedModel,
    choose_device,
    decode_model,
    encode_model,
)
from secure_maas.registry.container import unpack
from secure_maas.registry.signature import ServingSignature, TensorSpec

layers = tf.keras.layers
RNG = np.random.default_rng(20240601)
_AUDIT_HOOKS: list[Callable[[str, tuple[Any, ...]], None]] = []


def _randomise(model: Any) -> Any:
    """Give every weight distinct values, so a weight put in the wrong place shows."""
    values = []
    for variable in model.weights:
        value = RNG.normal(0.0, 0.3, size=variable.shape)
        if "variance" in variable.name:
            value = np.abs(value) + 0.5
        values.append(value.astype(variable.dtype.name))
    model.set_weights(values)
    return model


def mlp_functional() -> Any:
    inputs = tf.keras.Input((4,), name="features")
    hidden = layers.Dense(16, activation="relu", kernel_regularizer="l2")(inputs)
    hidden = layers.Dropout(0.5)(hidden)
    outputs = layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    return tf.keras.Model(inputs, outputs, name="mlp")


def mlp_sequential() -> Any:
    normalise = layers.Normalization()  # adds an int64 scalar weight, "count"
    normalise.adapt(RNG.normal(size=(16, 4)))
    return tf.keras.Sequential(
        [tf.keras.Input((4,)), normalise, layers.Dense(8, activation="tanh"), layers.Dense(2)],
        name="seq",
    )


def conv2d() -> Any:
    inputs = tf.keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    return tf.keras.Model(inputs, layers.Dense(3, activation="softmax")(x), name="cnn")


def recurrent() -> Any:
    inputs = tf.keras.Input((5, 3), name="sequence")
    x = layers.LSTM(8, return_sequences=True)(inputs)
    x = layers.GRU(4)(x)
    return tf.keras.Model(inputs, layers.Dense(2)(x), name="rnn")


def transformer_block() -> Any:
    inputs = tf.keras.Input((6, 8), name="tokens")
    attended = layers.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    x = layers.LayerNormalization()(layers.Add()([inputs, attended]))
    feed = layers.Dense(8)(layers.Dense(16, activation="gelu")(x))
    x = layers.LayerNormalization()(layers.Add()([x, feed]))
    x = layers.GlobalAveragePooling1D()(x)
    return tf.keras.Model(inputs, layers.Dense(2)(x), name="encoder")


def two_heads() -> Any:
    age = tf.keras.Input((3,), name="age")
    scan = tf.keras.Input((2, 2), name="scan")
    x = layers.Concatenate()([age, layers.Flatten()(scan)])
    x = layers.Dense(8, activation="relu")(x)
    risk = layers.Dense(1, activation="sigmoid", name="risk")(x)
    stage = layers.Dense(4, activation="softmax", name="stage")(x)
    return tf.keras.Model({"age": age, "scan": scan}, [risk, stage], name="two_heads")


@tf.keras.utils.register_keras_serializable(package="Test")
class Scale(layers.Layer):
    """A custom layer: multiplies by a learned vector."""

    def build(self, input_shape: Any) -> None:
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],))

    def call(self, inputs: Any) -> Any:
        return inputs * self.scale


class Unregistered(Scale):
    """A custom layer Keras knows only by its class name."""


def _sample(signature: ServingSignature, batch: int = 3) -> dict[str, np.ndarray]:
    return {
        spec.name: RNG.normal(size=(batch, *spec.shape[1:])).astype(spec.dtype)
        for spec in signature.inputs
    }


def _reference(model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ordered = [inputs[name] for name in model.input_names]
    result = model(ordered if len(ordered) > 1 else ordered[0], training=False)
    return {
        name: value.numpy()
        for name, value in zip(model.output_names, tf.nest.flatten(result), strict=True)
    }


def _rewrite(data: bytes, change: Callable[[dict[str, Any], dict[str, np.ndarray]], None]) -> bytes:
    """Re-pack `data` after `change` edits its metadata fields and tensors in place."""
    size = int.from_bytes(data[:8], "little")
    fields = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["secure_maas"])
    tensors = dict(safetensors.numpy.load(data))
    change(fields, tensors)
    return safetensors.numpy.save(tensors, metadata={"secure_maas": json.dumps(fields)})


def _layer(fields: dict[str, Any], class_name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        layer
        for layer in fields["architecture"]["config"]["layers"]
        if layer["class_name"] == class_name
    )
    return found


@pytest.fixture(scope="module")
def small() -> tuple[Any, bytes]:
    model = _randomise(mlp_functional())
    return model, encode_model(model)


@pytest.mark.parametrize(
    "build", [mlp_functional, mlp_sequential, conv2d, recurrent, transformer_block, two_heads]
)
def test_round_trip_predicts_like_the_original(build: Callable[[], Any]) -> None:
    model = _randomise(build())
    loaded = decode_model(encode_model(model))

    assert loaded.signature == ServingSignature.from_model(model)
    gpus = [gpu.name for gpu in tf.config.list_physical_devices("GPU")]
    assert loaded.device == choose_device(gpus)
    assert all(w.device.endswith(loaded.device.removeprefix("/")) for w in loaded.model.weights)
    inputs = _sample(loaded.signature)
    expected = _reference(model, inputs)
    got = loaded.predict(inputs)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6)


def test_named_inputs_and_outputs_keep_their_names() -> None:
    model = _randomise(two_heads())
    loaded = decode_model(encode_model(model))

    assert loaded.signature.input_names == ["age", "scan"]
    assert loaded.signature.output_names == ["risk", "stage"]
    assert loaded.signature.inputs[1] == TensorSpec("scan", (None, 2, 2), "float32")
    outputs = loaded.predict(_sample(loaded.signature, batch=5))
    assert outputs["risk"].shape == (5, 1) and outputs["stage"].shape == (5, 4)


def test_encoding_is_deterministic(small: tuple[Any, bytes]) -> None:
    model, data = small
    assert encode_model(model) == data
    assert encode_model(decode_model(data).model) == data


def test_predict_takes_one_array_for_one_input_and_casts_safely(small: tuple[Any, bytes]) -> None:
    model, data = small
    loaded = decode_model(data)
    batch = RNG.normal(size=(2, 4))  # float64, cast to the signature's float32
    expected = _reference(model, {"features": batch.astype("float32")})
    np.testing.assert_allclose(loaded.predict(batch)["probabilities"], expected["probabilities"])


@pytest.mark.parametrize(
    "inputs",
    [
        {"other": np.zeros((1, 4), "float32")},
        {"features": np.zeros((1, 4), "float32"), "extra": np.zeros((1, 4), "float32")},
        {"features": np.zeros((1, 5), "float32")},
        {"features": np.zeros((4,), "float32")},
        {"features": np.array([["a", "b", "c", "d"]])},
        {"features": np.zeros((1, 4), "complex64")},
    ],
    ids=["unknown name", "extra name", "wrong size", "no batch", "strings", "unsafe cast"],
)
def test_predict_refuses_input_that_does_not_fit(
    small: tuple[Any, bytes], inputs: dict[str, np.ndarray]
) -> None:
    with pytest.raises(InvalidInput):
        decode_model(small[1]).predict(inputs)


def test_lambda_layer_is_refused_even_when_allow_listed() -> None:
    inputs = tf.keras.Input((4,))
    model = tf.keras.Model(inputs, layers.Lambda(lambda t: t * 2)(inputs))
    data = encode_model(model)

    with pytest.raises(UnsafeModel, match="Lambda"):
        decode_model(data)
    with pytest.raises(UnsafeModel, match="Lambda"):
        decode_model(data, allow_custom={"Lambda": layers.Lambda})


def test_tf_op_layers_need_allow_listing() -> None:
    from keras.src.layers.core.tf_op_layer import SlicingOpLambda, TFOpLambda

    inputs = tf.keras.Input((4,), name="x")
    model = _randomise(tf.keras.Model(inputs, layers.Dense(3)(inputs)[:, :2] + 1.0))
    data = encode_model(model)

    with pytest.raises(UnsafeModel, match="SlicingOpLambda|TFOpLambda"):
        decode_model(data)
    allowed = {"TFOpLambda": TFOpLambda, "SlicingOpLambda": SlicingOpLambda}
    loaded = decode_model(data, allow_custom=allowed)
    sample = _sample(loaded.signature)
    expected = _reference(model, sample)
    np.testing.assert_allclose(loaded.predict(sample)[model.output_names[0]], *expected.values())


@pytest.mark.parametrize("custom", [Scale, Unregistered])
def test_custom_class_is_refused_unless_allow_listed(custom: type) -> None:
    inputs = tf.keras.Input((4,), name="x")
    model = _randomise(tf.keras.Model(inputs, custom()(layers.Dense(4)(inputs))))
    data = encode_model(model)

    with pytest.raises(UnsafeModel, match=custom.__name__):
        decode_model(data)
    loaded = decode_model(data, allow_custom={custom.__name__: custom})
    assert isinstance(loaded.model.layers[-1], custom)
    sample = _sample(loaded.signature)
    np.testing.assert_allclose(
        *loaded.predict(sample).values(), *_reference(model, sample).values(), atol=1e-6
    )


def test_custom_class_cannot_borrow_another_registered_name() -> None:
    inputs = tf.keras.Input((4,), name="x")
    data = encode_model(tf.keras.Model(inputs, Unregistered()(inputs)))

    def spoof(fields: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        _layer(fields, "Unregistered")["registered_name"] = "Test>Scale"

    with pytest.raises(UnsafeModel, match="registered name"):
        decode_model(_rewrite(data, spoof), allow_custom={"Unregistered": Unregistered})


def _edit_dense(**changes: Any) -> Callable[[dict[str, Any], dict[str, np.ndarray]], None]:
    def change(fields: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        dense = _layer(fields, "Dense")
        for key, value in changes.items():
            target = dense["config"] if key.startswith("config.") else dense
            target[key.removeprefix("config.")] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_edit_dense(class_name="Evil"), "'Evil' .* not a built-in Keras class"),
        (_edit_dense(module="os"), "module 'os', outside Keras"),
        (_edit_dense(registered_name="Other>Dense"), "registered name 'Other>Dense'"),
        (
            _edit_dense(
                **{
                    "config.activation": {
                        "class_name": "function",
                        "config": "system",
                        "module": "os",
                    }
                }
            ),
            "function 'system'",
        ),
        (
            _edit_dense(
                **{
                    "config.kernel_initializer": {
                        "class_name": "__lambda__",
                        "config": {"value": "x"},
                    }
                }
            ),
            "Lambda",
        ),
        (_edit_dense(**{"config.function": ["4wEAAAAAAAAA", None, None]}), "serialized Python"),
        (_edit_dense(**{"config.function_type": "lambda"}), "serialized Python"),
        (_edit_dense(**{"config.vocabulary": "/etc/passwd"}), "file on the serving host"),
    ],
    ids=[
        "unknown class",
        "foreign module",
        "borrowed registered name",
        "foreign function",
        "serialized lambda",
        "bytecode field",
        "lambda type field",
        "vocabulary file",
    ],
)
def test_unsafe_architecture_is_refused_before_keras_sees_it(
    small: tuple[Any, bytes], change: Any, message: str
) -> None:
    with pytest.raises(UnsafeModel, match=message):
        decode_model(_rewrite(small[1], change))


def _drop_last(fields: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    del tensors[max(tensors)]


def _rename_first(fields: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    first = min(tensors)
    tensors["00000:dense/bias:0"] = tensors.pop(first)


def _widen_weights(fields: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    for key in tensors:
        tensors[key] = tensors[key].astype("float64")


def _set(key: str, value: Any) -> Callable[[dict[str, Any], dict[str, np.ndarray]], None]:
    def change(fields: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        fields[key] = value

    return change


def _rename_input(fields: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    fields["signature"]["inputs"][0]["name"] = "renamed"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_edit_dense(**{"config.units": 17}), "weight 0 is .* expects"),
        (_drop_last, "has 4 weights, the artifact 3"),
        (_rename_first, "weight 0 is 00000:dense/bias"),
        (_widen_weights, "float64"),
        (_set("format", "secure-maas-keras-model/99"), "not a secure-maas-keras-model/1"),
        (_set("architecture", []), "not a JSON object"),
        (_set("architecture", {"class_name": "Dense", "config": {"units": 2}}), "not a model"),
        (_set("signature", {"inputs": []}), "inputs and outputs"),
        (_rename_input, "signature does not match"),
    ],
    ids=[
        "units changed",
        "weight missing",
        "weight renamed",
        "weight dtype",
        "other format",
        "architecture a list",
        "architecture a layer",
        "signature malformed",
        "signature mismatch",
    ],
)
def test_inconsistent_artifact_is_invalid(
    small: tuple[Any, bytes], change: Any, message: str
) -> None:
    with pytest.raises(InvalidModelData, match=message):
        decode_model(_rewrite(small[1], change))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 8, b"SMAAS\x00\x00\x00{}", safetensors.numpy.save({"a": np.zeros(2)})],
    ids=["empty", "zero header", "wrong magic", "plain safetensors"],
)
def test_foreign_bytes_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidModelData):
        decode_model(data)


@pytest.mark.parametrize(
    "data",
    [
        "a string",
        None,
        memoryview(bytes(range(64)))[::2],
    ],
    ids=["str", "None", "strided view"],
)
def test_non_buffers_are_invalid(data: Any) -> None:
    with pytest.raises(InvalidModelData, match="contiguous byte buffer"):
        decode_model(data)


def test_opened_plaintext_is_read_in_place_and_can_be_unmapped_after(
    small: tuple[Any, bytes],
) -> None:
    model, data = small
    memory = plainmem.allocate(len(data))  # where `open_artifact` decrypts to
    memory[:] = data
    loaded = decode_model(memoryview(memory).toreadonly())

    plainmem.release(memory)
    assert memory.closed  # it would only be zeroed if decoding had left a view into it
    sample = _sample(loaded.signature)
    np.testing.assert_allclose(
        loaded.predict(sample)["probabilities"], _reference(model, sample)["probabilities"]
    )
    plaintext = bytearray(data)
    assert decode_model(plaintext).signature == loaded.signature
    plaintext.extend(b"!")  # raises BufferError if decoding left a view into the buffer


def test_the_safetensors_library_reads_what_we_write(small: tuple[Any, bytes]) -> None:
    model, data = small
    tensors = safetensors.numpy.load(data)
    assert sorted(tensors) == [f"{i:05d}:{w.name}" for i, w in enumerate(model.weights)]
    for got, want in zip((tensors[k] for k in sorted(tensors)), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def _raw(header: dict[str, Any], body: bytes = b"") -> bytes:
    text = json.dumps({"__metadata__": {"secure_maas": '{"format":"x"}'}, **header}).encode()
    return len(text).to_bytes(8, "little") + text + body


def _f32(begin: int, end: int, shape: list[int]) -> dict[str, Any]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    "data",
    [
        _raw({"a": _f32(0, 8, [2])}, bytes(4)),
        _raw({"a": _f32(0, 8, [2])}, bytes(12)),
        _raw({"a": _f32(0, 8, [3])}, bytes(8)),
        _raw({"a": _f32(0, 8, [2]), "b": _f32(4, 12, [2])}, bytes(12)),
        _raw({"a": _f32(0, 4, [1]), "b": _f32(8, 12, [1])}, bytes(12)),
        _raw({"a": _f32(8, 0, [0])}, bytes(8)),
        _raw({"a": {"dtype": "BF17", "shape": [1], "data_offsets": [0, 2]}}, bytes(2)),
        _raw({"a": _f32(0, 4, [-1])}, bytes(4)),
        _raw({"a": _f32(0, 4, [1.0])}, bytes(4)),
        _raw({"a": [0, 4]}, bytes(4)),
        len(b"[]").to_bytes(8, "little") + b"[]",
        (8).to_bytes(8, "little") + b"\xff\xfe{}    ",
    ],
    ids=[
        "data short",
        "data long",
        "shape mis-sized",
        "overlap",
        "gap",
        "end before begin",
        "unknown dtype",
        "negative size",
        "float size",
        "entry not an object",
        "header a list",
        "header not utf-8",
    ],
)
def test_malformed_containers_are_refused_as_the_library_refuses_them(data: bytes) -> None:
    with pytest.raises(InvalidModelData):
        decode_model(data)
    with pytest.raises(safetensors.SafetensorError):
        safetensors.deserialize(data)


def _decode_or_refuse(data: bytes) -> None:
    """Decoding either works or raises one of the two documented errors; nothing else escapes."""
    with contextlib.suppress(InvalidModelData, UnsafeModel):
        decode_model(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_documented_errors(data: bytes) -> None:
    _decode_or_refuse(data)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mutated_artifacts_raise_only_documented_errors(
    small: tuple[Any, bytes], data: st.DataObject
) -> None:
    blob = bytearray(small[1])
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        where = data.draw(st.integers(0, len(blob) - 1), label="offset")
        blob[where] = data.draw(st.integers(0, 255), label="byte")
    _decode_or_refuse(bytes(blob))


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_mutated_metadata_raises_only_documented_errors(
    small: tuple[Any, bytes], data: st.DataObject
) -> None:
    """Edit the metadata JSON inside a well-formed container, so the edits reach Keras."""
    size = int.from_bytes(small[1][:8], "little")
    text = list(json.loads(small[1][8 : 8 + size])["__metadata__"]["secure_maas"])
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        where = data.draw(st.integers(0, len(text) - 1), label="offset")
        text[where] = data.draw(st.sampled_from('{}[]":,0129-.aeElnrtuxz_ '), label="char")
    tensors = safetensors.numpy.load(small[1])
    _decode_or_refuse(safetensors.numpy.save(tensors, metadata={"secure_maas": "".join(text)}))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_our_reader_accepts_nothing_the_library_refuses(
    small: tuple[Any, bytes], data: st.DataObject
) -> None:
    blob = bytearray(small[1])
    header_end = 8 + int.from_bytes(blob[:8], "little")
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        where = data.draw(st.integers(0, header_end - 1), label="offset")
        blob[where] = data.draw(st.integers(0, 255), label="byte")
    try:
        ours = unpack(bytes(blob))
    except InvalidModelData:
        return
    theirs = safetensors.deserialize(bytes(blob))  # must not raise
    assert [name for name, _ in ours.tensors] == sorted(name for name, _ in theirs)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_truncated_artifacts_are_invalid(small: tuple[Any, bytes], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(small[1]) - 1), label="length")
    with pytest.raises(InvalidModelData):
        decode_model(small[1][:cut])


_WRITES: list[str] | None = None  # paths opened for writing while a test records them


def _record_writes(event: str, args: tuple[Any, ...]) -> None:
    if _WRITES is None or event != "open":
        return
    path, mode, flags = args
    writes = isinstance(mode, str) and any(c in mode for c in "wax+")
    if writes or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
        _WRITES.append(str(path))


def test_no_file_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    global _WRITES
    if _record_writes not in _AUDIT_HOOKS:  # audit hooks cannot be removed: add it once
        sys.addaudithook(_record_writes)
        _AUDIT_HOOKS.append(_record_writes)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # forget the cached temp dir: use TMPDIR
    model = _randomise(conv2d())
    kernel = next(w for w in model.weights if w.name.endswith("kernel:0") and w.shape[-1] == 3)
    needle = kernel.numpy().astype("<f4").tobytes()[:64]

    _WRITES = []
    try:
        data = encode_model(model)
        loaded = decode_model(data)
        loaded.predict(_sample(loaded.signature))
        opened_for_writing, _WRITES = _WRITES, None
    finally:
        _WRITES = None

    assert needle in data  # the needle is a real run of the weights' bytes
    assert opened_for_writing == []  # nothing in Python opened a file to write, even briefly
    written = list(tmp_path.rglob("*"))  # and nothing (Python or native) left a file behind
    assert written == []
    for path in written:  # kept so the check still holds if files ever appear for other reasons
        assert path.is_dir() or needle not in path.read_bytes()


def test_choose_device_prefers_the_first_gpu() -> None:
    assert choose_device([]) == "/CPU:0"
    assert choose_device(["/physical_device:GPU:0"]) == "/GPU:0"
    assert choose_device(["/physical_device:GPU:0", "/physical_device:GPU:1"]) == "/GPU:0"


def test_decode_logs_the_device_and_why(
    small: tuple[Any, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="secure_maas.registry.codec")
    loaded = decode_model(small[1])
    messages = [r.getMessage() for r in caplog.records if r.name == "secure_maas.registry.codec"]
    assert any(loaded.device in m and "TensorFlow sees" in m for m in messages)


def test_subclassed_model_is_unsupported() -> None:
    class Doubler(tf.keras.Model):
        def call(self, inputs: Any) -> Any:
            return inputs * 2

    with pytest.raises(UnsupportedModel):
        encode_model(Doubler())


def test_signature_json_round_trip_and_validation() -> None:
    signature = ServingSignature.from_model(two_heads())
    assert ServingSignature.from_json(signature.to_json()) == signature
    assert signature.to_json() == ServingSignature.from_json(signature.to_json()).to_json()
    for bad in [
        "[]",
        "{",
        '{"inputs": [], "outputs": []}',
        '{"inputs": [{"name": 1}], "outputs": []}',
    ]:
        with pytest.raises(InvalidModelData):
            ServingSignature.from_json(bad)
