"""`TF_CONFIG` read for `train --distributed` (one chief, its workers, this task's rank), the
options a distributed run refuses, and the plan checks of transfer learning, without
TensorFlow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from secure_maas.training import plan
from secure_maas.training.cluster import ClusterError, from_environment
from secure_maas.training.datasets import Dataset, load_dataset
from secure_maas.training.plan import ConflictingOptions, TrainingError, TrainingRequest
from secure_maas.training.transfer import InitLayer, InitRefused, PublicInit, frozen_layers

CLUSTER = {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222", "10.0.0.3:2222"]}


def env(cluster: object = CLUSTER, task: object = None) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task or {"type": "chief"}})}


def test_the_chief_is_rank_zero_and_workers_follow() -> None:
    chief = from_environment(env())
    assert chief.is_chief and chief.rank == 0 and chief.size == 3
    second = from_environment(env(task={"type": "worker", "index": 1}))
    assert not second.is_chief and second.rank == 2 and second.chief == "10.0.0.1:2222"
    alone = from_environment(env({"chief": ["h:1"]}))
    assert alone.size == 1 and alone.workers == ()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "--distributed needs TF_CONFIG"),
        ({"TF_CONFIG": "{"}, "not JSON"),
        ({"TF_CONFIG": "[]"}, "must be a JSON object"),
        ({"TF_CONFIG": json.dumps({"cluster": CLUSTER})}, "a 'task' object"),
        (env({"worker": ["h:1"]}), "exactly one chief"),
        (env({"chief": ["h:1", "h:2"]}), "exactly one chief"),
        (env({"chief": ["nohost"]}), "exactly one chief"),
        (env({**CLUSTER, "ps": ["h:3"]}), "only one 'chief' and 'worker'"),
        (env({"chief": ["h:1"], "worker": "h:2"}), "list of host:port"),
        (env(task={"type": "evaluator"}), "chief or worker"),
        (env(task={"type": "worker", "index": 2}), "not a worker of the cluster"),
        (env(task={"type": "chief", "index": 1}), "not a chief of the cluster"),
        (env(task={"type": "worker", "index": True}), "not a worker"),
    ],
)
def test_a_bad_tf_config_is_refused_with_one_line(environ: dict, message: str) -> None:
    with pytest.raises(ClusterError, match=message) as refused:
        from_environment(environ)
    assert "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("sklearn:digits")


def request(**fields: object) -> TrainingRequest:
    return TrainingRequest(
        **{"dataset": "d", "model_name": "m", "arch": "mlp", "noise_multiplier": 1.0, **fields}
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dp": False, "noise_multiplier": None}, "DP-SGD only"),
        ({"clipping_path": "per-example"}, "fast clipping path only"),
    ],
)
def test_what_a_distributed_run_does_not_take(digits: Dataset, fields: dict, message: str) -> None:
    with pytest.raises(ConflictingOptions, match=message):
        plan.make_plan(request(distributed=True, **fields), digits)


@pytest.mark.parametrize("source", ["sklearn:digits", "sklearn:wine"])
def test_a_distributed_run_is_accounted_as_one_process(source: str) -> None:
    data = load_dataset(source)  # wine has no public range: dp-standardize, released once
    planned = plan.make_plan(request(distributed=True), data)
    alone = plan.make_plan(request(), data)
    assert planned.privacy == alone.privacy  # the accountant sees the same run


def public_init(*names: str) -> PublicInit:
    layers = tuple(InitLayer(name, (np.zeros((2, 2), np.float32),)) for name in names)
    return PublicInit("base", 3, "ab" * 32, layers)


def test_frozen_layers_by_the_options() -> None:
    init = public_init("conv_0", "conv_1", "dense", "logits")
    assert frozen_layers(init, None, False) == ()
    assert frozen_layers(init, 2, False) == ("conv_0", "conv_1")
    assert frozen_layers(init, None, True) == ("conv_0", "conv_1", "dense")
    with pytest.raises(InitRefused, match="freeze between 0 and 3"):
        frozen_layers(init, 4, False)
    with pytest.raises(InitRefused, match="does not end in a layer named 'logits'"):
        frozen_layers(public_init("dense", "out"), None, True)


def test_the_init_model_costs_no_epsilon(digits: Dataset) -> None:
    init = public_init("dense_0", "logits")
    tuned = plan.make_plan(request(init_from="base:3", train_head_only=True), digits, init=init)
    alone = plan.make_plan(request(), digits)
    assert tuned.privacy == alone.privacy and tuned.frozen_layers == ("dense_0",)
    assert tuned.init is init
    with pytest.raises(TrainingError, match="plan the run with the public model"):
        plan.make_plan(request(init_from="base:3"), digits)
    with pytest.raises(TrainingError, match="plan the run with the public model"):
        plan.make_plan(request(), digits, init=init)
    with pytest.raises(TrainingError, match="0 or more"):
        plan.make_plan(request(init_from="base:3", freeze_layers=-1), digits, init=init)
