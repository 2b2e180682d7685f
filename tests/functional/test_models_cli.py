"""`models import` of a real Keras model, verified, loaded in memory: same predictions, and the
weights never appear in any file the service wrote (invariant 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from secure_maas.config import Settings
from tests.functional.cli import run_cli

LOADER = """
import json, sys
import numpy as np
from secure_maas.keys import Keyring
from secure_maas.registry import artifacts, catalog
from secure_maas.registry.codec import decode_model
from secure_maas.registry.store import ArtifactStore
from secure_maas.db import create_engine
from secure_maas.db.session import session_factory, session_scope
from secure_maas.config import load_settings

settings = load_settings()
engine = create_engine(settings.database_url)
with session_scope(session_factory(engine)) as session:
    row = catalog.resolve(session, catalog.ModelRef.parse(sys.argv[1]))
    _ = row.model.name
opened = artifacts.open_version(ArtifactStore(settings.store_dir),
                                Keyring.open(settings.keys_dir), row)
loaded = decode_model(bytes(opened.plaintext))
opened.wipe()
x = np.array(json.loads(sys.argv[2]), dtype=np.float32)
out = loaded.predict(x)
print(json.dumps({k: v.tolist() for k, v in out.items()}))
"""


@pytest.fixture(scope="module")
def keras_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A saved model made elsewhere, a batch of inputs, its outputs, and a known weight tensor."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(7)
    inputs = tf.keras.Input((6,), name="features")
    hidden = tf.keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    outputs = tf.keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    model = tf.keras.Model(inputs, outputs)
    path = tmp_path_factory.mktemp("elsewhere") / "churn.keras"
    model.save(path)
    batch = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    expected = model.predict(batch, verbose=0)
    kernel = model.get_layer("hidden").kernel.numpy()
    return path, batch, expected, kernel


def scan(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            found.append(path)
    return found


def test_import_verify_load_same_predictions_and_no_plaintext_on_disk(
    cli_env: dict[str, str], settings: Settings, tmp_path: Path, keras_model: tuple
) -> None:
    path, batch, expected, kernel = keras_model
    work = tmp_path / "work"
    (work / "tmp").mkdir(parents=True)
    env = {**cli_env, "TMPDIR": str(work / "tmp"), "TF_CPP_MIN_LOG_LEVEL": "2"}

    assert run_cli("init", env=env, cwd=work).returncode == 0
    imported = run_cli("models", "import", str(path), "--name", "churn", env=env, cwd=work)
    assert imported.returncode == 0, imported.stderr
    assert "published churn:1" in imported.stdout
    verified = run_cli("models", "verify", env=env, cwd=work)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    listed = json.loads(run_cli("models", "list", "--format", "json", env=env, cwd=work).stdout)
    assert [(m["name"], m["version"], m["privacy"]) for m in listed] == [("churn", 1, "imported")]
    events = json.loads(run_cli("audit", "list", "--format", "json", env=env, cwd=work).stdout)
    assert [(e["action"], e["model"], e["decision"]) for e in events] == [
        ("model:publish", "churn", "allow"),
        ("model:verify", None, "allow"),  # every `models verify` run is recorded
    ]

    loaded = subprocess.run(
        [sys.executable, "-c", LOADER, "churn:1", json.dumps(batch.tolist())],
        env=env, cwd=work, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    predictions = np.array(json.loads(loaded.stdout.strip().splitlines()[-1])["probs"])
    np.testing.assert_allclose(predictions, expected, atol=1e-6, rtol=0)

    needle = np.ascontiguousarray(kernel, dtype="<f4").tobytes()[:64]
    assert len(needle) == 64
    assert scan(path.parent, needle) == [path]  # the needle is real: the input file holds it
    assert scan(tmp_path, needle) == []  # store, keys, database, cwd and TMPDIR do not


def test_import_refuses_a_lambda_layer(cli_env: dict[str, str], tmp_path: Path) -> None:
    import tensorflow as tf

    inputs = tf.keras.Input((2,), name="x")
    model = tf.keras.Model(inputs, tf.keras.layers.Lambda(lambda t: t * 2)(inputs))
    path = tmp_path / "evil.h5"
    model.save(path)
    assert run_cli("init", env=cli_env).returncode == 0
    result = run_cli("models", "import", str(path), "--name", "evil", env=cli_env)
    assert result.returncode == 1
    assert "Lambda" in result.stderr and "Traceback" not in result.stderr
    listed = run_cli("models", "list", "--format", "json", env=cli_env)
    assert json.loads(listed.stdout) == []


def test_models_commands_report_bad_references(cli_env: dict[str, str]) -> None:
    assert run_cli("init", env=cli_env).returncode == 0
    for args, message in [
        (["models", "show", "absent"], "no model named 'absent'"),
        (["models", "show", "../x"], "invalid model name"),
        (["models", "label", "absent", "1", "stable"], "no model named"),
        (["models", "disable", "absent", "1"], "no model named"),
    ]:
        result = run_cli(*args, env=cli_env)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
