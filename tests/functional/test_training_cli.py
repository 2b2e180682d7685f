"""`secure-maas train` and `secure-maas privacy` as a user runs them, in a child process, on both
databases: a DP model published with its guarantee, non-private ones (--no-dp, --noise-seed)
marked so and allowed only where the registration allows them, a run killed mid-training that
publishes nothing yet stays counted, and a membership check stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.config import Settings
from secure_maas.registry.models import ModelVersion
from secure_maas.training.models import TrainingRun
from tests.functional.cli import SCRIPT, run_cli
from tests.functional.training_support import audit_rows, initialised, runs, versions

pytestmark = pytest.mark.slow  # every test here trains through the CLI

pytest.importorskip("tensorflow")

QUICK = ["--arch", "mlp", "--units", "16", "--epochs", "3"]


@pytest.fixture
def env(settings: Settings, cli_env: dict[str, str]) -> dict[str, str]:
    return {**cli_env, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture
def instance(settings: Settings, env: dict[str, str]) -> Iterator[Engine]:
    engine = initialised(settings)
    result = run_cli(
        "dataset", "register", "wine", "--source", "sklearn:wine", "--epsilon-budget", "5",
        "--allow-non-private", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    yield engine
    engine.dispose()


def ok(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def report(env: dict[str, str]) -> dict:
    return json.loads(
        ok("privacy", "report", "--dataset", "wine", "--format", "json", env=env).stdout
    )[0]


def test_train_publishes_a_dp_version_then_attack_stores_its_results(
    instance: Engine, env: dict[str, str]
) -> None:
    trained = ok(
        "train",
        "--dataset",
        "wine",
        "--model-name",
        "wine-dp",
        "--target-epsilon",
        "2",
        *QUICK,
        env=env,
    )
    out = trained.stdout
    assert "published wine-dp:1" in out
    assert "epoch 3/3" in out and "eta" in out  # one progress line per epoch off a terminal
    assert "clipping path: fast-clipping" in out
    assert "test accuracy" in out and "TF Privacy's statement" in out

    shown = json.loads(ok("models", "show", "wine-dp:1", "--format", "json", env=env).stdout)[0]
    assert shown["privacy"] == "dp" and shown["dataset"] == "wine"
    dp = shown["dp"]
    assert 1.99 <= dp["epsilon"] <= 2.0 and dp["delta"] == 1e-5
    assert dp["steps"] == 6 and dp["batch_size"] == 64 and dp["clip_norm"] == 1.0
    assert dp["noise_multiplier"] > 0 and "poisson" in dp["accountant"]
    assert "(2, 1e-05)-DP for each example of the training split" in dp["statement"]
    assert "covering the whole model" in dp["statement"]
    # wine has no public range: its statistics are a DP release, composed into ε
    assert dp["preprocessing"] == "dp-standardize" and dp["stats_noise_multiplier"] == 8.0
    assert "released by the Gaussian mechanism" in dp["statement"]
    assert "Training-set size:" in dp["statement"]  # the operator sees n; callers do not

    ledger = report(env)
    assert ledger["finished"] == 1 and ledger["spent_epsilon_rdp"] == pytest.approx(
        dp["epsilon"], abs=1e-4
    )
    assert ledger["runs"][0]["version"] == 1 and ledger["runs"][0]["path_used"] == "fast-clipping"

    attacked = json.loads(ok("privacy", "attack", "wine-dp:1", "--format", "json", env=env).stdout)[
        0
    ]
    assert attacked["accounted_epsilon"] == dp["epsilon"]
    assert {r["attack"] for r in attacked["results"]} == {"loss-threshold", "logistic-regression"}
    with Session(instance) as session:
        row = session.execute(sa.select(ModelVersion)).scalar_one()
        assert row.mia_auc == pytest.approx(attacked["max_auc"])
        assert row.mia_epsilon_lower_bound == pytest.approx(attacked["max_epsilon_lower_bound"])
        assert row.mia_advantage is not None and row.mia_at is not None
    actions = [(e["action"], e["reason_code"]) for e in audit_rows(instance)]
    assert actions == [
        ("dataset:register", "registered"),
        ("train:run", "started"),
        ("train:run", "finished"),
        ("model:publish", "trained"),
        ("privacy:attack", "membership-inference"),
    ]

    # A model trained before record-local splits cannot be attacked: its split is unknown.
    with Session(instance) as session:
        (run,) = session.execute(sa.select(TrainingRun)).scalars()
        run.config = {k: v for k, v in run.config.items() if k != "split"}
        session.commit()
    legacy = run_cli("privacy", "attack", "wine-dp:1", env=env)
    assert legacy.returncode == 1 and "before record-local splits" in legacy.stderr


def test_no_dp_is_marked_non_private_and_outside_the_budget(
    instance: Engine, env: dict[str, str]
) -> None:
    trained = ok(
        "train", "--dataset", "wine", "--model-name", "wine-plain", "--no-dp", *QUICK, env=env
    )
    assert "WITHOUT differential privacy" in trained.stdout
    shown = json.loads(ok("models", "show", "wine-plain:1", "--format", "json", env=env).stdout)[0]
    assert shown["privacy"] == "non-private"
    assert set(shown["dp"].values()) == {None}
    ledger = report(env)
    assert ledger["non_private"] == 1 and ledger["spent_epsilon_rdp"] == 0.0
    refused = run_cli(
        "train",
        "--dataset",
        "wine",
        "--model-name",
        "x",
        "--no-dp",
        "--target-epsilon",
        "1",
        *QUICK,
        env=env,
    )
    assert refused.returncode == 2 and "--no-dp takes no" in refused.stderr
    assert len(runs(instance)) == 1


def test_a_fixed_noise_seed_publishes_a_non_private_model_and_reserves_nothing(
    instance: Engine, env: dict[str, str]
) -> None:
    trained = ok(
        "train", "--dataset", "wine", "--model-name", "wine-seeded", "--target-epsilon", "1",
        "--noise-seed", "7", *QUICK, env=env,
    )  # fmt: skip
    assert "will carry NO guarantee" in trained.stdout
    assert "privacy: NONE (trained with a fixed --noise-seed" in trained.stdout
    shown = json.loads(ok("models", "show", "wine-seeded:1", "--format", "json", env=env).stdout)
    assert shown[0]["privacy"] == "non-private" and set(shown[0]["dp"].values()) == {None}
    ledger = report(env)
    assert ledger["non_private"] == 1 and ledger["spent_epsilon_rdp"] == 0.0
    (run,) = runs(instance)
    assert not run.dp and run.epsilon is None and run.config["noise_seed_fixed"]


def test_runs_without_a_guarantee_are_refused_unless_the_registration_allows_them(
    instance: Engine, env: dict[str, str]
) -> None:
    ok(
        "dataset", "register", "bc", "--source", "sklearn:breast_cancer",
        "--epsilon-budget", "2", env=env,
    )  # fmt: skip
    for extra in (["--no-dp"], ["--target-epsilon", "1", "--noise-seed", "3"]):
        refused = run_cli(
            "train", "--dataset", "bc", "--model-name", "bc-x", *extra, *QUICK, env=env
        )
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "without --allow-non-private" in refused.stderr
    exact = run_cli(
        "train", "--dataset", "bc", "--model-name", "bc-x", "--target-epsilon", "1",
        "--preprocessing", "standardize", *QUICK, env=env,
    )  # fmt: skip
    assert exact.returncode == 1 and "no DP guarantee covers" in exact.stderr
    assert versions(instance) == 0
    assert [run.status for run in runs(instance)] == ["refused", "refused"]


def test_a_killed_run_publishes_nothing_and_its_epsilon_stays_counted(
    instance: Engine, env: dict[str, str], settings: Settings
) -> None:
    child = subprocess.Popen(
        [str(SCRIPT), "train", "--dataset", "wine", "--model-name", "doomed",
         "--target-epsilon", "3", "--arch", "mlp", "--epochs", "2000"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(180, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("epoch 2/"):  # mid-training, well before publishing
                os.kill(child.pid, signal.SIGKILL)
                break
        child.wait(timeout=30)
    finally:
        watchdog.cancel()
    assert child.returncode == -signal.SIGKILL

    assert versions(instance) == 0
    assert not list(Path(settings.store_dir).rglob("*.sealed"))
    (run,) = runs(instance)
    assert run.status == "started" and run.model_version is None and run.epsilon > 0
    ledger = report(env)
    assert ledger["started"] == 1 and ledger["counted_runs"] == 1
    assert ledger["spent_epsilon_rdp"] == pytest.approx(run.epsilon, rel=1e-9)
    table = ok("privacy", "report", "--dataset", "wine", env=env).stdout
    assert "started, not finished" in table and "counted as spent" in table
