"""`models distill`: a student trained on the teacher's outputs over public inputs only.

- The student is published as the teacher model's next version with the teacher's signed
  guarantee and a `derived_from` naming the teacher, the architecture and the public inputs
  (digest, rows); it is a Keras model with the teacher's signature, audited as
  `model:publish`, and it learnt the teacher (it agrees with it on held-out public inputs).
- Inputs must be declared public: a registered dataset's file is refused, audited, and
  nothing is published; a teacher whose tensors a student built here cannot have is refused.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.registry.models import ModelVersion
from tests.functional.cli import run_cli
from tests.functional.derive_support import open_version, publish_parent
from tests.functional.serving_support import events, models


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


@cache
def teacher() -> tuple[Any, bytes, dict[str, Any]]:
    """An MLP built as training builds one (input `features`, output `probabilities`) and fit
    to a simple rule, its bytes and signature."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from secure_maas.registry.codec import encode_model
    from secure_maas.registry.signature import ServingSignature
    from secure_maas.training.architectures import build_model

    tf.keras.utils.set_random_seed(5)
    model = build_model("mlp", (4,), 3, units=(32, 32))
    x = _inputs(600, seed=1)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    return model, encode_model(model), ServingSignature.from_model(model).to_dict()


@pytest.fixture
def instance(settings: Settings, cli_env: dict[str, str]) -> dict[str, str]:
    _, payload, signature = teacher()
    publish_parent(settings, payload, signature)
    return cli_env


def test_a_student_is_published_with_the_teachers_guarantee(
    instance: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    public = tmp_path / "public.npz"
    np.savez(public, x=_inputs(800, seed=2))
    done = run_cli(
        "models", "distill", "digits", "--student-arch", "mlp", "--inputs", f"npz:{public}",
        "--epochs", "15", env=instance,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "published digits:2 (mlp student" in done.stdout
    assert "from version 1; ε=1.5, inherited" in done.stdout
    student, meta = open_version(settings, 2)
    _, parent = open_version(settings, 1)
    assert type(student).__name__ == "LoadedModel"
    assert student.signature.to_dict() == teacher()[2]
    assert meta["dp"] == parent["dp"] and meta["privacy"] == parent["privacy"]
    derived = meta["derived_from"]
    assert derived["transform"] == "distill" and derived["version"] == 1
    assert derived["student_arch"] == "mlp" and derived["epochs"] == 15
    assert derived["inputs"]["rows"] == 800 and len(derived["inputs"]["sha256"]) == 64
    assert derived["plaintext_sha256"] == parent["plaintext_sha256"]
    held_out = _inputs(300, seed=3)
    expected = teacher()[0].predict(held_out, verbose=0).argmax(axis=1)
    got = student.predict({"features": held_out})["probabilities"].argmax(axis=1)
    assert (got == expected).mean() > 0.8
    engine = create_engine(settings.database_url)
    try:
        published = [e for e in events(engine) if e.action == "model:publish"]
    finally:
        engine.dispose()
    assert published[-1].model_version == 2 and published[-1].decision == "allow"
    assert "distilled version 1 into a mlp student" in (published[-1].reason or "")
    assert json.loads(published[-1].detail or "{}")["parent"] == 1


def test_private_inputs_and_foreign_teachers_are_refused(
    instance: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    private = tmp_path / "private.npz"
    x = _inputs(200, seed=4)
    np.savez(private, x=x, y=(x[:, 0] > 0).astype(np.int64))
    done = run_cli(
        "dataset", "register", "patients", "--source", f"npz:{private}",
        "--epsilon-budget", "3", env=instance,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run_cli(
        "models", "distill", "digits", "--student-arch", "mlp", "--inputs", f"npz:{private}",
        env=instance,
    )  # fmt: skip
    assert done.returncode == 1
    assert "registered dataset 'patients', which is private" in done.stderr
    # a model imported with other tensor names (x -> probs) cannot be a teacher here
    from secure_maas.keys import Keyring
    from secure_maas.registry.publish import publish
    from secure_maas.registry.store import ArtifactStore
    from tests.functional.serving_support import dp

    engine = create_engine(settings.database_url)
    try:
        publish(
            engine, ArtifactStore(settings.store_dir), Keyring.open(settings.keys_dir),
            name="other", payload=models().payloads["one"], signature=models().signatures["one"],
            provenance=dp(1.0), created_by="tests",
        )  # fmt: skip
    finally:
        engine.dispose()
    public = tmp_path / "public.npz"
    np.savez(public, x=_inputs(50, seed=5))
    done = run_cli(
        "models", "distill", "other", "--student-arch", "mlp", "--inputs", f"npz:{public}",
        env=instance,
    )  # fmt: skip
    assert done.returncode == 1
    assert "distillation needs a classifier trained here" in done.stderr
    engine = create_engine(settings.database_url)
    try:
        refused = [e for e in events(engine) if e.reason_code == "distill-refused"]
        with engine.connect() as connection:
            versions = connection.execute(sa.select(sa.func.count(ModelVersion.id))).scalar_one()
    finally:
        engine.dispose()
    assert [(e.model, e.decision) for e in refused] == [("digits", "deny"), ("other", "deny")]
    assert versions == 2  # digits:1 and other:1; nothing published by a refusal
