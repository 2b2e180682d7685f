"""DP transfer learning (`train --init-from`) on both databases: only a model whose signed class
is `public` can start a run (any other is refused with one line and a `deny` event, before any
reservation); the run starts from its weights, keeps frozen layers exactly at them, is charged
the fine-tuning's ε alone, and its guarantee names the public model by version and digest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.config import Settings
from secure_maas.keys import Keyring
from secure_maas.registry.models import ModelVersion, Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.signature import ServingSignature
from secure_maas.registry.store import ArtifactStore
from secure_maas.training import dataset_catalog
from secure_maas.training.datasets import load_dataset
from secure_maas.training.plan import ConflictingOptions, TrainingRequest, make_plan
from secure_maas.training.transfer import InitRefused
from tests.functional.cli import run_cli
from tests.functional.training_support import audit_keys, audit_rows, initialised, runs

tf = pytest.importorskip("tensorflow")

from secure_maas.registry import codec  # noqa: E402
from secure_maas.training import architectures, pipeline  # noqa: E402
from secure_maas.training.pretrained import NotPublic  # noqa: E402

SIZES = {"units": (8,)}


@pytest.fixture
def instance(settings: Settings, tmp_path: Path) -> Iterator[Engine]:
    """An instance with `upper`: digits 5..9 (about 900 examples), public range 0..16."""
    engine = initialised(settings)
    digits = load_dataset("sklearn:digits")
    keep = digits.y >= 5
    path = tmp_path / "upper.npz"
    np.savez(path, x=digits.x[keep], y=digits.y[keep])
    dataset_catalog.register_dataset(
        engine,
        audit_keys(settings),
        name="upper",
        source=f"npz:{path}",
        actor="tester",
        epsilon_budget=5.0,
        feature_ranges=["0:16"],
    )
    yield engine
    engine.dispose()


def base_model(classes: int = 5, seed: int = 7) -> Any:
    """An mlp as `architectures` builds it (no preprocessing layer), weights drawn by `seed`."""
    tf.keras.utils.set_random_seed(seed)
    return architectures.build_model("mlp", (64,), classes, **SIZES)


def publish_model(settings: Settings, engine: Engine, name: str, privacy: Privacy, model) -> None:
    dp = None
    if privacy is Privacy.DP:
        dp = {"epsilon": 1.0, "delta": 1e-5, "noise_multiplier": 1.1, "clip_norm": 1.0}
    publish(
        engine,
        ArtifactStore(settings.store_dir),
        Keyring.open(settings.keys_dir),
        name=name,
        payload=codec.encode_model(model),
        signature=ServingSignature.from_model(model).to_dict(),
        provenance=Provenance(privacy, dp=dp),
        created_by="tester",
    )


def request(**fields: Any) -> TrainingRequest:
    base: dict[str, Any] = {
        "dataset": "upper",
        "model_name": "upper-ft",
        "arch": "mlp",
        "noise_multiplier": 1.0,
        "batch_size": 64,
        "epochs": 1,
        "sizes": SIZES,
    }
    return TrainingRequest(**{**base, **fields})


def run(settings: Settings, engine: Engine, req: TrainingRequest, **kwargs: Any):
    return pipeline.run_training(
        engine,
        ArtifactStore(settings.store_dir),
        Keyring.open(settings.keys_dir),
        audit_keys(settings),
        req,
        created_by="tester",
        **kwargs,
    )


def never_train(*_args: Any, **_kwargs: Any):
    raise AssertionError("a refused run must not train")


@pytest.mark.parametrize("privacy", [Privacy.DP, Privacy.IMPORTED, Privacy.NON_PRIVATE])
def test_an_init_model_that_is_not_public_is_refused_before_any_reservation(
    settings: Settings, instance: Engine, privacy: Privacy
) -> None:
    publish_model(settings, instance, "other", privacy, base_model())
    with pytest.raises(NotPublic) as refused:
        run(settings, instance, request(init_from="other:1"), trainer=never_train)
    message = str(refused.value)
    assert "\n" not in message
    assert f"its privacy class is '{privacy.value}', not 'public'" in message
    assert "models import --public" in message
    assert runs(instance) == []  # nothing reserved, nothing charged
    (denied,) = [e for e in audit_rows(instance, "train:run") if e["decision"] == "deny"]
    assert denied["reason_code"] == "init-not-public" and denied["model"] == "upper-ft"
    assert json.loads(denied["detail"])["init_from"] == "other:1"


def test_a_missing_or_mismatched_init_model_is_refused_and_audited(
    settings: Settings, instance: Engine
) -> None:
    with pytest.raises(InitRefused, match="--init-from nothing:1: "):
        run(settings, instance, request(init_from="nothing:1"), trainer=never_train)
    publish_model(settings, instance, "wide", Privacy.PUBLIC, base_model())
    with pytest.raises(InitRefused, match="layer 'dense_0' has weights of shapes"):
        run(
            settings,
            instance,
            request(init_from="wide:1", sizes={"units": (9,)}),
            trainer=never_train,
        )
    with pytest.raises(InitRefused, match="--freeze-layers 2: wide:1 has 2 layers"):
        run(settings, instance, request(init_from="wide:1", freeze_layers=2), trainer=never_train)
    codes = [e["reason_code"] for e in audit_rows(instance, "train:run")]
    assert codes == ["init-refused"] * 3 and runs(instance) == []


def test_options_that_need_an_init_model_are_usage_errors(instance: Engine) -> None:
    data = load_dataset("sklearn:digits")
    for fields in ({"freeze_layers": 1}, {"train_head_only": True}):
        with pytest.raises(ConflictingOptions, match="need --init-from"):
            make_plan(request(**fields), data)
    with pytest.raises(ConflictingOptions, match="not both"):
        make_plan(request(init_from="x:1", freeze_layers=1, train_head_only=True), data)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_public_weights_and_is_charged_alone(
    settings: Settings, instance: Engine
) -> None:
    public = base_model()
    publish_model(settings, instance, "base", Privacy.PUBLIC, public)
    outcome = run(settings, instance, request(init_from="base:1", freeze_layers=1))
    plan, result = outcome.plan, outcome.result

    # Frozen: bit for bit the public weights. The head trained away from them.
    np.testing.assert_array_equal(
        result.model.get_layer("dense_0").get_weights()[0],
        public.get_layer("dense_0").get_weights()[0],
    )
    assert not np.array_equal(
        result.model.get_layer("logits").get_weights()[0],
        public.get_layer("logits").get_weights()[0],
    )
    assert plan.frozen_layers == ("dense_0",) and result.init_head == "copied"

    # The ledger holds the fine-tuning's ε: exactly that of the same run from random weights.
    data = dataset_catalog.load_registered(_registered(instance))
    alone = make_plan(request(), data, delta=plan.delta)
    assert plan.privacy is not None and alone.privacy is not None
    assert plan.privacy.epsilon == alone.privacy.epsilon
    (row,) = runs(instance)
    assert row.status == "finished" and row.epsilon == pytest.approx(plan.privacy.epsilon)
    assert outcome.spend.epsilon_rdp == pytest.approx(plan.privacy.epsilon, rel=1e-6)
    assert row.config["init_from"]["name"] == "base" and row.config["frozen_layers"] == ["dense_0"]

    # The guarantee says what was public: the model, its version and its digest.
    with Session(instance) as session:
        base_row, tuned = session.execute(
            sa.select(ModelVersion).order_by(ModelVersion.id)
        ).scalars()
        digest = base_row.plaintext_sha256
        assert tuned.privacy == "dp"
        statement = tuned.dp_statement
    assert f"started from the weights of base:1 (plaintext SHA-256 {digest})" in statement
    assert "fine-tuning on this dataset alone" in statement and "frozen" in statement

    started = [e for e in audit_rows(instance, "train:run") if e["reason_code"] == "started"]
    assert json.loads(started[0]["detail"])["init_from"] == f"base:1 sha256:{digest}"


@pytest.mark.slow
def test_train_head_only_keeps_every_other_layer_and_a_new_head_shape_is_fresh(
    settings: Settings, instance: Engine
) -> None:
    public = base_model(classes=3)  # three classes there, five here: the head is fresh
    publish_model(settings, instance, "base3", Privacy.PUBLIC, public)
    outcome = run(settings, instance, request(init_from="base3", train_head_only=True))
    result = outcome.result
    assert outcome.plan.frozen_layers == ("dense_0",)
    assert result.init_head is not None and result.init_head.startswith("freshly initialised")
    for kept, theirs in zip(
        result.model.get_layer("dense_0").get_weights(),
        public.get_layer("dense_0").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(kept, theirs)


@pytest.mark.slow
def test_the_cli_imports_a_public_model_and_fine_tunes_from_it(
    settings: Settings, instance: Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, "TF_CPP_MIN_LOG_LEVEL": "3"}
    path = tmp_path / "base.keras"
    base_model().save(path)
    imported = run_cli("models", "import", str(path), "--name", "base", "--public", env=env)
    assert imported.returncode == 0, imported.stderr
    assert "published base:1 (public;" in imported.stdout
    shown = json.loads(run_cli("models", "show", "base:1", "--format", "json", env=env).stdout)
    assert shown[0]["privacy"] == "public" and shown[0]["epsilon"] is None
    (event,) = audit_rows(instance, "model:publish")
    assert json.loads(event["detail"])["privacy"] == "public"

    trained = run_cli(
        "train", "--dataset", "upper", "--model-name", "upper-ft", "--arch", "mlp",
        "--units", "8", "--epochs", "1", "--noise-multiplier", "1", "--init-from", "base:1",
        "--train-head-only", env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "starting from public model base:1" in trained.stdout
    assert "frozen: dense_0" in trained.stdout and "Public pre-training" in trained.stdout

    # A DP model is no starting point: one line, exit status 1.
    refused = run_cli(
        "train", "--dataset", "upper", "--model-name", "again", "--arch", "mlp",
        "--units", "8", "--epochs", "1", "--noise-multiplier", "1", "--init-from", "upper-ft:1",
        env=env,
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0
    assert "its privacy class is 'dp', not 'public'" in refused.stderr


def _registered(engine: Engine):
    with Session(engine, expire_on_commit=False) as session:
        return dataset_catalog.get_dataset(session, "upper")
