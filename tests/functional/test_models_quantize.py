"""`models quantize`: a smaller version that keeps its parent's signed guarantee, made in memory.

- float16, dynamic and int8 versions are published as the model's next version, carry the
  parent's signed privacy class, ε, δ and dataset (from its authenticated header), record the
  parent in `derived_from`, are audited as `model:publish`, and serve the parent's signature
  through the data plane with outputs close to the parent's.
- int8 calibrates only on a file declared public: a registered dataset's source, or a copy of
  its file elsewhere, is refused and the refusal audited; `--calibration` goes with int8 only.
- A derived version is not quantized again; a flatbuffer naming an operator outside TFLite's
  built-ins is refused at load.
- Plaintext weights never touch a file: a child process converts with a Python audit hook
  that lists what every temporary folder holds when TensorFlow removes it and what is written
  under TMPDIR; the documented Keras entry point (which writes a SavedModel) is caught by the
  same observer, so an empty report means something.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.keys import Keyring
from secure_maas.registry.models import ModelVersion, Privacy
from secure_maas.registry.store import ArtifactStore
from tests.functional.cli import run_cli
from tests.functional.derive_support import open_version, publish_parent
from tests.functional.serving_support import Instance, events, models, prepared


@pytest.fixture
def parent(settings: Settings, cli_env: dict[str, str]) -> dict[str, str]:
    publish_parent(settings, models().payloads["one"], models().signatures["one"])
    return cli_env


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


def test_each_mode_publishes_a_version_with_the_parents_guarantee(
    parent: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    public = tmp_path / "public.npz"
    np.savez(public, x=_rows(64, seed=7))
    runs = [
        ("float16", []),
        ("dynamic", []),
        ("int8", ["--calibration", f"npz:{public}"]),
    ]
    for mode, extra in runs:
        done = run_cli("models", "quantize", "digits:1", "--mode", mode, *extra, env=parent)
        assert done.returncode == 0, done.stderr
        assert "from version 1; ε=1.5, inherited" in done.stdout
    reference = models().predict("one", _rows(5))["probs"]
    parent_model, parent_meta = open_version(settings, 1)
    for version, (mode, _) in enumerate(runs, start=2):
        model, meta = open_version(settings, version)
        assert type(model).__name__ == "LiteModel"
        assert model.signature == parent_model.signature
        assert meta["privacy"] == Privacy.DP.value
        assert meta["dp"] == parent_meta["dp"] and meta["dataset"] == parent_meta["dataset"]
        derived = meta["derived_from"]
        assert derived["version"] == 1 and derived["transform"] == "quantize"
        assert derived["mode"] == mode
        assert derived["plaintext_sha256"] == parent_meta["plaintext_sha256"]
        out = model.predict({"x": _rows(5)})["probs"]
        assert out.dtype == np.float32 and out.shape == (5, 3)
        tolerance = 0.08 if mode == "int8" else 0.01
        assert np.abs(out - reference).max() < tolerance, mode
        # the batch size may change between calls (the interpreter is resized)
        assert model.predict({"x": _rows(2)})["probs"].shape == (2, 3)
    int8 = open_version(settings, 4)[1]["derived_from"]["calibration"]
    assert int8["rows"] == 64 and int8["source"] == f"npz:{public.resolve()}"
    assert len(int8["sha256"]) == 64
    engine = create_engine(settings.database_url)
    try:
        published = [
            e
            for e in events(engine)
            if e.action == "model:publish" and e.model_version in (2, 3, 4)
        ]
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(ModelVersion.version, ModelVersion.dp_epsilon).order_by(
                    ModelVersion.version
                )
            ).all()
    finally:
        engine.dispose()
    assert [(e.decision, e.model) for e in published] == [("allow", "digits")] * 3
    assert all("guarantee inherited" in (e.reason or "") for e in published)
    detail = published[2].detail
    assert detail is not None and json.loads(detail)["parent"] == 1
    assert [epsilon for _, epsilon in rows] == [1.5] * 4


def test_calibration_must_be_public_and_only_for_int8(
    parent: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    private = tmp_path / "private.npz"
    x = _rows(200, seed=1)
    np.savez(private, x=x, y=(x[:, 0] > 0).astype(np.int64))
    done = run_cli(
        "dataset", "register", "patients", "--source", f"npz:{private}",
        "--epsilon-budget", "3", env=parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    copy = tmp_path / "elsewhere" / "copy.npz"
    copy.parent.mkdir()
    copy.write_bytes(private.read_bytes())
    for source in (f"npz:{private}", f"npz:{copy}"):
        done = run_cli(
            "models", "quantize", "digits", "--mode", "int8", "--calibration", source, env=parent
        )
        assert done.returncode == 1
        assert "registered dataset 'patients', which is private" in done.stderr
    done = run_cli(
        "models", "quantize", "digits", "--mode", "int8", "--calibration", "dataset:patients",
        env=parent,
    )  # fmt: skip
    assert done.returncode == 1 and "must be npz:PATH" in done.stderr
    for args in (["--mode", "int8"], ["--mode", "dynamic", "--calibration", f"npz:{copy}"]):
        done = run_cli("models", "quantize", "digits", *args, env=parent)
        assert done.returncode == 2 and "--calibration is required for --mode int8" in done.stderr
    engine = create_engine(settings.database_url)
    try:
        refused = [e for e in events(engine) if e.reason_code == "quantize-refused"]
        with engine.connect() as connection:
            versions = connection.execute(sa.select(sa.func.count(ModelVersion.id))).scalar_one()
    finally:
        engine.dispose()
    assert len(refused) == 3 and {e.decision for e in refused} == {"deny"}
    assert all(e.model == "digits" for e in refused)
    assert versions == 1  # nothing published by a refusal


def test_a_derived_version_is_not_quantized_again(parent: dict[str, str]) -> None:
    done = run_cli("models", "quantize", "digits", "--mode", "dynamic", env=parent)
    assert done.returncode == 0, done.stderr
    done = run_cli("models", "quantize", "digits:2", "--mode", "float16", env=parent)
    assert done.returncode == 1
    assert "is itself derived: use the model it came from" in done.stderr
    done = run_cli("models", "quantize", "nothing", "--mode", "float16", env=parent)
    assert done.returncode == 1 and "nothing" in done.stderr


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    """The serving tests' instance with digits:3, digits:2 quantized (dynamic)."""
    from secure_maas.registry.derive import quantize_version

    for made in prepared(request, tmp_path_factory, "quantized"):
        settings = made.settings
        derived = quantize_version(
            made.engine,
            ArtifactStore(settings.store_dir),
            Keyring.open(settings.keys_dir),
            "digits:2",
            mode="dynamic",
            calibration=None,
            created_by="tests",
        )
        assert derived.row.version == 3
        yield made


def test_a_quantized_version_serves_through_both_apis(
    client: FlaskClient, instance: Instance
) -> None:
    rows = _rows(3, seed=4)
    reference = models().predict("two", rows)["probs"]
    answer = client.post(
        "/v1/models/digits/versions/3:predict",
        json={"instances": rows.tolist()},
        headers=instance.headers("alice"),
    )
    assert answer.status_code == 200, answer.get_json()
    assert np.abs(np.asarray(answer.get_json()["predictions"]) - reference).max() < 0.01
    body = {
        "inputs": [
            {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": rows.ravel().tolist()}
        ]
    }
    answer = client.post(
        "/v2/models/digits/versions/3/infer", json=body, headers=instance.headers("alice")
    )
    assert answer.status_code == 200, answer.get_json()
    out = np.asarray(answer.get_json()["outputs"][0]["data"]).reshape(3, 3)
    assert np.abs(out - reference).max() < 0.01
    meta = client.get("/v2/models/digits/versions/3", headers=instance.headers("alice"))
    assert meta.get_json()["secure_maas"]["dp"]["epsilon"] == 2.0
    # the same rules: dave may use only `multi`, so the new version is as missing to him
    refused = client.post(
        "/v1/models/digits/versions/3:predict",
        json={"instances": rows.tolist()},
        headers=instance.headers("dave"),
    )
    assert refused.status_code == 404


def test_operators_outside_the_builtins_are_refused() -> None:
    from secure_maas.registry.container import pack
    from secure_maas.registry.lite import FORMAT, decode_lite
    from secure_maas.registry.signature import InvalidModelData, ServingSignature

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
    def reads_a_file(x: Any) -> Any:
        path = tf.strings.as_string(x[0, 0])  # not folded into a constant when converted
        size = tf.strings.length(tf.io.read_file(path), unit="BYTE")
        return x + tf.cast(size, tf.float32)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [reads_a_file.get_concrete_function()]
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    flex = converter.convert()
    signature = ServingSignature.from_dict(models().signatures["one"])
    payload = pack(
        {"model": np.frombuffer(flex, dtype=np.uint8)},
        {"format": FORMAT, "quantization": {"mode": "dynamic"}, "signature": signature.to_dict()},
    )
    with pytest.raises(InvalidModelData, match="outside TFLite's built-ins.*Flex"):
        decode_lite(payload)
    with pytest.raises(InvalidModelData):
        decode_lite(b"not a container")


CHILD = r"""
import json, os, sys

tmpdir = os.path.realpath(os.environ["TMPDIR"])
needle = None
seen = {"removed": [], "with_weights": []}


def holds_weights(path):
    try:
        with open(path, "rb") as handle:
            return needle in handle.read()
    except OSError:
        return False


def hook(event, args):
    if event == "shutil.rmtree" and needle is not None:
        root = os.fsdecode(args[0])
        if os.path.realpath(root).startswith(tmpdir + os.sep):
            for folder, _, names in os.walk(root):
                for name in names:
                    path = os.path.join(folder, name)
                    seen["removed"].append(name)
                    if holds_weights(path):
                        seen["with_weights"].append(path)


sys.addaudithook(hook)
import numpy as np
import tensorflow as tf
from secure_maas.registry import lite
from secure_maas.registry.signature import ServingSignature

inputs = tf.keras.Input((4,), name="x")
model = tf.keras.Model(inputs, tf.keras.layers.Dense(3, name="probs")(inputs))
needle = model.get_weights()[0].astype("<f4").tobytes()
signature = ServingSignature.from_model(model)
if sys.argv[1] == "ours":
    for mode in lite.MODES:
        calibration = {"x": np.ones((8, 4), np.float32)} if mode == "int8" else None
        lite.quantize(model, signature, mode, calibration)
else:
    tf.lite.TFLiteConverter.from_keras_model(model).convert()
for folder, _, names in os.walk(tmpdir):
    for name in names:
        path = os.path.join(folder, name)
        if holds_weights(path):
            seen["with_weights"].append(path)
print(json.dumps(seen))
"""


def _observe(tmp_path: Path, which: str) -> dict[str, list[Any]]:
    folder = tmp_path / which
    folder.mkdir()
    env = {**os.environ, "TMPDIR": str(folder), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, which],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, list[Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_quantizing_writes_no_weights_to_any_file(tmp_path: Path) -> None:
    ours = _observe(tmp_path, "ours")
    assert ours["with_weights"] == []
    assert [name for name in ours["removed"] if "variables" in name] == []
    # The observer catches the documented Keras entry point, which saves a SavedModel first.
    keras = _observe(tmp_path, "keras")
    assert any("variables" in path for path in keras["with_weights"]), keras
