"""`models import` reads a model from memory, and a refused import is audited.

Keras 2.15's `load_model` extracts a `.keras` archive that holds more than its three usual
entries (here one extra, empty `assets/` folder entry) into a temporary folder under `TMPDIR`,
`model.weights.h5` included, and leaves it there when loading then fails. The import reads the
archive from a `BytesIO` and the weights through h5py's file-object driver: nothing is written
under `TMPDIR`. The child process that imports records, with a Python audit hook (it observes,
it changes nothing), every file or folder it creates or opens for writing under `TMPDIR` (but
for `tempfile`'s own writability probe); the test also searches every file there, and in the
store, for the weight bytes.

A refused import (a Lambda layer, a custom class, not a Keras archive) is a denied
`model:publish` event naming the model, the file and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.functional.cli import run_cli

CHILD = r"""
import atexit, json, os, sys

tmpdir = os.path.realpath(os.environ["TMPDIR"])
written = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def under_tmpdir(path):
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return False
    full = os.path.realpath(path)
    return full == tmpdir or full.startswith(tmpdir + os.sep)


def tempdir_probe():
    # tempfile.gettempdir() proves a folder writable by writing b"blat" to a random name in it
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_get_default_tempdir" and code.co_filename.endswith("tempfile.py"):
            return True
        frame = frame.f_back
    return False


def hook(event, args):
    if event == "open" and not tempdir_probe():
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & WRITE_FLAGS
        )
        if writes and under_tmpdir(path):
            written.append(["open", os.fsdecode(path)])
    elif event in ("os.mkdir", "tempfile.mkdtemp", "tempfile.mkstemp", "os.rename",
                   "shutil.copyfile", "shutil.unpack_archive"):
        target = args[1] if event in ("os.rename", "shutil.copyfile") else args[0]
        if under_tmpdir(target):
            written.append([event, os.fsdecode(target)])


sys.addaudithook(hook)
atexit.register(lambda: open(os.environ["WRITES_LOG"], "w").write(json.dumps(written)))
sys.argv = ["secure-maas", *sys.argv[1:]]
from secure_maas.cli import main

main()
"""


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """These tests are about files, not the database: SQLite only (the refusal events go
    through the same `record_now` as every key command, tested on both)."""
    yield f"sqlite:///{tmp_path / 'var' / 'secure_maas.db'}"


def dense_model(units: int) -> Any:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(units)
    inputs = tf.keras.Input((6,), name="features")
    hidden = tf.keras.layers.Dense(units, activation="relu", name="hidden")(inputs)
    outputs = tf.keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    return tf.keras.Model(inputs, outputs)


def with_assets_entry(source: Path, target: Path, weights_from: Path | None = None) -> None:
    """`source` repacked with an empty `assets/` folder entry (four entries: Keras extracts),
    optionally with the weights of another archive (they do not fit: loading fails)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if weights_from is not None and info.filename == "model.weights.h5":
                with zipfile.ZipFile(weights_from) as other:
                    data = other.read("model.weights.h5")
            dst.writestr(info, data)
        dst.writestr("assets/", b"")


def needle_of(model: Any) -> bytes:
    kernel = model.get_layer("hidden").kernel.numpy()
    needle = np.ascontiguousarray(kernel, dtype="<f4").tobytes()[:64]
    assert len(needle) == 64
    return needle


def scan(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def import_observed(
    env: dict[str, str], work: Path, path: Path, name: str
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    log = work / f"writes-{name}.json"
    child_env = {**env, "TMPDIR": str(work / "tmp"), "WRITES_LOG": str(log)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "models", "import", str(path), "--name", name],
        env=child_env, cwd=work, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    return done, json.loads(log.read_text())


@pytest.fixture
def work(cli_env: dict[str, str], tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "tmp").mkdir(parents=True)
    assert run_cli("init", env=cli_env, cwd=work).returncode == 0
    return work


def events(env: dict[str, str]) -> list[dict[str, Any]]:
    listed = run_cli("audit", "list", "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout))


def test_keras_archive_is_imported_from_memory(
    cli_env: dict[str, str], work: Path, tmp_path: Path
) -> None:
    model = dense_model(32)
    saved = tmp_path / "elsewhere" / "saved.keras"
    saved.parent.mkdir()
    model.save(saved)
    path = saved.parent / "churn.keras"
    with_assets_entry(saved, path)
    needle = needle_of(model)
    assert scan(saved.parent, needle) == [saved, path]  # the needle is real

    done, written = import_observed(cli_env, work, path, "churn")
    assert done.returncode == 0, done.stderr
    assert "published churn:1" in done.stdout
    assert written == []  # nothing created or opened for writing under TMPDIR
    assert scan(work / "tmp", needle) == []
    assert scan(tmp_path, needle) == [saved, path]  # not the store, keys, database or cwd
    assert run_cli("models", "verify", env=cli_env).returncode == 0


def test_failed_keras_load_leaves_no_weights_behind_and_is_audited(
    cli_env: dict[str, str], work: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    model, other = dense_model(32), dense_model(16)
    model.save(folder / "model.keras")
    other.save(folder / "other.keras")
    path = folder / "mismatched.keras"
    with_assets_entry(folder / "model.keras", path, weights_from=folder / "other.keras")
    needle = needle_of(other)
    assert path in scan(folder, needle)

    done, written = import_observed(cli_env, work, path, "mismatched")
    assert done.returncode == 1
    assert "Keras could not load" in done.stderr and "Traceback" not in done.stderr
    assert written == []
    assert scan(work / "tmp", needle) == []  # where Keras 2.15 leaves model.weights.h5
    refused = [e for e in events(cli_env) if e["action"] == "model:publish"]
    assert [(e["decision"], e["model"], e["reason_code"]) for e in refused] == [
        ("deny", "mismatched", "not-importable")
    ]


def test_refused_imports_are_audited(cli_env: dict[str, str], work: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    inputs = tf.keras.Input((2,), name="x")
    lambda_model = tf.keras.Model(inputs, tf.keras.layers.Lambda(lambda t: t * 2)(inputs))
    lambda_model.save(tmp_path / "evil.keras")
    lambda_model.save(tmp_path / "evil.h5")

    @tf.keras.saving.register_keras_serializable(package="Elsewhere")
    class Doubler(tf.keras.layers.Layer):  # type: ignore[misc]
        def call(self, t: Any) -> Any:
            return t * 2

    tf.keras.Model(inputs, Doubler()(inputs)).save(tmp_path / "custom.keras")
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 not really a zip")

    cases = [
        ("evil.keras", "lambda-keras", "unsafe-model", "Lambda"),
        ("evil.h5", "lambda-h5", "unsafe-model", "Lambda"),
        ("custom.keras", "custom", "unsafe-model", "not a built-in Keras class"),
        ("broken.keras", "broken", "not-importable", "not a readable Keras archive"),
    ]
    for file, name, _code, message in cases:
        result = run_cli("models", "import", str(tmp_path / file), "--name", name, env=cli_env)
        assert result.returncode == 1, (file, result.stdout)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr

    refused = [e for e in events(cli_env) if e["action"] == "model:publish"]
    assert [(e["model"], e["decision"], e["reason_code"]) for e in refused] == [
        (name, "deny", code) for _file, name, code, _message in cases
    ]
    for event, (file, _name, _code, message) in zip(refused, cases, strict=True):
        assert event["actor_kind"] == "os"
        assert file in event["reason"] and message in event["reason"]
    assert json.loads(run_cli("models", "list", "--format", "json", env=cli_env).stdout) == []
    assert run_cli("audit", "verify", env=cli_env).returncode == 0


def test_child_observer_sees_writes_under_tmpdir(tmp_path: Path) -> None:
    """The audit hook is a real observer: a write under TMPDIR is recorded."""
    log = tmp_path / "log.json"
    (tmp_path / "tmp").mkdir()
    script = CHILD.replace(
        "from secure_maas.cli import main\n\nmain()\n",
        "import tempfile\nopen(os.path.join(tempfile.mkdtemp(), 'x'), 'wb').close()\n",
    )
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "WRITES_LOG": str(log)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    recorded = json.loads(log.read_text())
    assert [kind for kind, _path in recorded] == ["tempfile.mkdtemp", "os.mkdir", "open"]
    assert recorded[-1][1].endswith("/x")
