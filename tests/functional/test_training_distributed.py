"""DP-SGD on two worker processes (MultiWorkerMirroredStrategy on 127.0.0.1): the same ε and a
loss curve like one process's, both workers holding the same model, and the noise of a global
step added exactly once.

The noise test runs global steps in which no example contributes (every sample weight is 0), so
each coordinate's update is the step's noise alone, N(0, s²) with s = sigma·C/B if it is added
once; twice (once per replica) gives 2s², never gives 0. With N updates of known mean 0, the sum
of squares over s² is chi-square with N degrees of freedom, and Laurent and Massart's bounds
(2000, Lemma 1) give P(X ≥ N + 2√(Nx) + 2x) ≤ e^-x and P(X ≤ N - 2√(Nx)) ≤ e^-x. With x = 22
the test fails falsely with probability below 2e^-22 < 6e-10; with N ≈ 134,000 its band is about
±2.6 % of s², far from the 100 % that one noise too many or too few moves it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.functional.cli import SCRIPT, run_cli
from tests.functional.distributed_child import NOISE, small_digits, small_request
from tests.functional.serving_support import free_port

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.slow  # each test starts two TensorFlow processes

ROOT = Path(__file__).resolve().parents[2]
TAIL_X = 22.0


def tf_config(ports: tuple[int, int], task: str) -> str:
    return json.dumps(
        {
            "cluster": {
                "chief": [f"127.0.0.1:{ports[0]}"],
                "worker": [f"127.0.0.1:{ports[1]}"],
            },
            "task": {"type": task, "index": 0},
        }
    )


def two_workers(mode: str, tmp_path: Path) -> list[dict]:
    """Run the chief and one worker of `distributed_child` and return what each wrote."""
    ports = (free_port(), free_port())
    while ports[1] == ports[0]:
        ports = (ports[0], free_port())
    children = []
    for task in ("chief", "worker"):
        env = {
            **os.environ,
            "TF_CONFIG": tf_config(ports, task),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": "",
        }
        out = tmp_path / f"{task}.json"
        log = (tmp_path / f"{task}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.functional.distributed_child", mode, str(out)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        children.append((process, out, log, task))
    try:
        for process, _, _, _ in children:
            process.wait(timeout=300)
    finally:
        for process, _, log, _ in children:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    found = []
    for process, out, _, task in children:
        text = (tmp_path / f"{task}.log").read_text()[-3000:]
        assert process.returncode == 0, f"{task} failed:\n{text}"
        found.append(json.loads(out.read_text()))
    return found


def test_two_workers_train_like_one_process_at_the_same_epsilon(tmp_path: Path) -> None:
    from secure_maas.training import train
    from secure_maas.training.plan import make_plan

    chief, worker = two_workers("train", tmp_path)
    data = small_digits()
    plan = make_plan(small_request(), data)
    alone = train.train(data, plan)

    assert plan.privacy is not None
    assert chief["epsilon"] == worker["epsilon"] == plan.privacy.epsilon
    assert chief["steps"] == plan.steps and chief["path"] == "distributed fast-clipping"
    # Both workers applied the same updates to the same model, the chief's released input
    # statistics included (each drew its own release; only the chief's is used).
    assert chief["checksum"] == worker["checksum"] and chief["loss"] == worker["loss"]
    assert chief["statistics"] == worker["statistics"]
    assert chief["prediction"] == worker["prediction"]
    # The curves are alike: both fall the same way, epoch by epoch, within a wide band (the
    # two runs draw different batches and noise; the seeds fix each, so this does not flake).
    single = [row["loss"] for row in alone.history]
    assert single[-1] < 0.6 * single[0] and chief["loss"][-1] < 0.6 * chief["loss"][0]
    for mine, theirs in zip(chief["loss"], single, strict=True):
        assert abs(mine - theirs) <= 0.25 * theirs
    assert abs(chief["accuracy"][-1] - alone.history[-1]["accuracy"]) <= 0.15


def test_the_noise_of_a_global_step_is_added_once(tmp_path: Path) -> None:
    chief, worker = two_workers("noise", tmp_path)
    assert chief["checksum"] == worker["checksum"]  # the same noise reached both
    n = chief["count"]
    s2 = (NOISE["noise_multiplier"] * NOISE["l2_norm_clip"] / NOISE["batch_size"]) ** 2
    chi2 = chief["squares"] / s2
    upper = n + 2 * math.sqrt(n * TAIL_X) + 2 * TAIL_X
    lower = n - 2 * math.sqrt(n * TAIL_X)
    assert n > 100_000
    assert lower <= chi2 <= upper, (
        f"variance ratio {chi2 / n:.4f} outside [{lower / n:.4f}, {upper / n:.4f}]"
    )
    # The band excludes both mistakes by far: noise per replica (ratio 2) and none (ratio 0).
    assert upper < 1.5 * n and lower > 0.5 * n


# -- `secure-maas train --distributed` as an operator runs it, on both databases --------------

ARGS = ["--dataset", "small", "--arch", "mlp", "--units", "16", "--batch-size", "48"]


@pytest.fixture
def instance(settings, cli_env, tmp_path: Path):
    from tests.functional.training_support import initialised

    engine = initialised(settings)
    data = small_digits()
    path = tmp_path / "small.npz"
    import numpy as np

    np.savez(path, x=data.x, y=data.y)
    registered = run_cli(
        "dataset", "register", "small", "--source", f"npz:{path}", "--epsilon-budget", "50",
        "--feature-range", "0:16", env=cli_env,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    yield engine
    engine.dispose()


def start_cli(args: list[str], task: str, ports: tuple[int, int], env: dict[str, str], log: Path):
    handle = log.open("w")
    process = subprocess.Popen(
        [str(SCRIPT), "train", "--distributed", *args],
        env={**env, "TF_CONFIG": tf_config(ports, task), "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    return process


def ports() -> tuple[int, int]:
    chosen = (free_port(), free_port())
    while chosen[1] == chosen[0]:
        chosen = (chosen[0], free_port())
    return chosen


def finish(*processes: subprocess.Popen, timeout: float = 300) -> None:
    try:
        for process in processes:
            process.wait(timeout=timeout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_chief_reserves_publishes_and_audits_the_worker_only_trains(
    instance, cli_env, tmp_path: Path
) -> None:
    from tests.functional.training_support import audit_rows, runs, versions

    chosen = ports()
    args = [*ARGS, "--model-name", "dd", "--epochs", "3", "--target-epsilon", "5"]
    worker = start_cli(args, "worker", chosen, cli_env, tmp_path / "worker.log")
    chief = start_cli(args, "chief", chosen, cli_env, tmp_path / "chief.log")
    finish(chief, worker)
    said = (tmp_path / "chief.log").read_text()
    worked = (tmp_path / "worker.log").read_text()
    assert chief.returncode == 0, said[-3000:]
    assert worker.returncode == 0, worked[-3000:]
    assert "published dd:1" in said and "clipping path: distributed fast-clipping" in said
    assert "2 workers (MultiWorkerMirroredStrategy)" in said
    assert "worker done: " in worked and "published" not in worked
    (run,) = runs(instance)
    assert run.status == "finished" and run.epsilon == pytest.approx(5.0, abs=0.01)
    assert versions(instance) == 1
    # Exactly one run's events: the worker wrote none.
    events = [(e["action"], e["reason_code"]) for e in audit_rows(instance)]
    assert events == [
        ("dataset:register", "registered"),
        ("train:run", "started"),
        ("train:run", "finished"),
        ("model:publish", "trained"),
    ]


def test_a_worker_that_dies_fails_the_run_which_stays_counted(
    instance, cli_env, tmp_path: Path
) -> None:
    from tests.functional.training_support import runs, versions

    chosen = ports()
    args = [*ARGS, "--model-name", "dk", "--epochs", "400", "--noise-multiplier", "5"]
    worker = start_cli(args, "worker", chosen, cli_env, tmp_path / "worker.log")
    chief = start_cli(args, "chief", chosen, cli_env, tmp_path / "chief.log")
    log = tmp_path / "chief.log"
    try:
        for _ in range(1200):  # bounded: up to 300 s for the first epochs (a busy machine)
            if "epoch 2/400" in log.read_text() or chief.poll() is not None:
                break
            time.sleep(0.25)
        assert chief.poll() is None, log.read_text()[-3000:]
        worker.kill()
        worker.wait()
        chief.wait(timeout=300)
    finally:
        finish(chief, worker, timeout=1)
    said = log.read_text()
    assert chief.returncode == 1, said[-3000:]
    (error,) = [line for line in said.splitlines() if line.startswith("Error: ")]
    assert "a worker died, left or timed out" in error
    (run,) = runs(instance)
    assert run.status == "aborted" and run.epsilon is not None  # charged, like a killed run
    assert "a worker died" in (run.reason or "")
    assert versions(instance) == 0


def test_workers_started_with_different_plans_refuse_to_train(
    instance, cli_env, tmp_path: Path
) -> None:
    from tests.functional.training_support import runs, versions

    chosen = ports()
    args = [*ARGS, "--model-name", "dp", "--noise-multiplier", "2"]
    worker = start_cli([*args, "--epochs", "4"], "worker", chosen, cli_env, tmp_path / "w.log")
    chief = start_cli([*args, "--epochs", "3"], "chief", chosen, cli_env, tmp_path / "c.log")
    finish(chief, worker)
    for process, log in ((chief, "c.log"), (worker, "w.log")):
        said = (tmp_path / log).read_text()
        assert process.returncode == 1, said[-3000:]
        (error,) = [line for line in said.splitlines() if line.startswith("Error: ")]
        assert "the workers were not given the same training request" in error
    assert runs(instance) == [] and versions(instance) == 0  # refused before any reservation


def test_distributed_fine_tuning_starts_every_worker_from_the_chiefs_public_weights(
    instance, cli_env, settings, tmp_path: Path
) -> None:
    import numpy as np
    import tensorflow as tf

    from secure_maas.keys import Keyring
    from secure_maas.registry import artifacts, catalog, codec
    from secure_maas.registry.store import ArtifactStore
    from secure_maas.training import architectures
    from tests.functional.training_support import runs

    tf.keras.utils.set_random_seed(5)
    public = architectures.build_model("mlp", (64,), 10, units=(16,))
    public.save(tmp_path / "base.keras")
    imported = run_cli(
        "models", "import", str(tmp_path / "base.keras"), "--name", "base", "--public",
        env=cli_env,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    chosen = ports()
    args = [*ARGS, "--model-name", "df", "--epochs", "2", "--noise-multiplier", "2"]
    args += ["--init-from", "base:1", "--freeze-layers", "1"]
    worker = start_cli(args, "worker", chosen, cli_env, tmp_path / "worker.log")
    chief = start_cli(args, "chief", chosen, cli_env, tmp_path / "chief.log")
    finish(chief, worker)
    said = (tmp_path / "chief.log").read_text()
    assert chief.returncode == 0, said[-3000:]
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert "Public pre-training: training started from the weights of base:1" in said
    (run,) = runs(instance)
    assert run.status == "finished" and run.config["frozen_layers"] == ["dense_0"]

    from sqlalchemy.orm import Session

    with Session(instance) as session:
        row = catalog.resolve(session, catalog.ModelRef.parse("df:1"))
        opened = artifacts.open_version(
            ArtifactStore(settings.store_dir), Keyring.open(settings.keys_dir), row
        )
    try:
        tuned = codec.decode_model(opened.plaintext)
    finally:
        opened.wipe()
    for mine, theirs in zip(
        tuned.model.get_layer("dense_0").get_weights(),
        public.get_layer("dense_0").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(mine, theirs)  # frozen on every worker, bit for bit
    assert not np.array_equal(
        tuned.model.get_layer("logits").get_weights()[0],
        public.get_layer("logits").get_weights()[0],
    )
