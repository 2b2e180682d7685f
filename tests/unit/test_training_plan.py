"""The one validator of a training run (`plan.make_plan`): every refused combination, every
refused value, and the run's noise calibrated and its ε computed exactly once, without
TensorFlow."""

from __future__ import annotations

import dataclasses
import math

import pytest

from secure_maas.training import accounting, plan
from secure_maas.training.datasets import Dataset, load_dataset
from secure_maas.training.plan import ConflictingOptions, TrainingError, TrainingRequest


@pytest.fixture(scope="module")
def wine() -> Dataset:
    """No public value range: `auto` preprocessing is dp-standardize."""
    return load_dataset("sklearn:wine")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """A public value range (0..16): `auto` preprocessing is public-range."""
    return load_dataset("sklearn:digits")


def request(**fields: object) -> TrainingRequest:
    return TrainingRequest(**{"dataset": "d", "model_name": "m", "arch": "mlp", **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dp": False, "noise_multiplier": 1.0}, "--no-dp takes no"),
        ({"dp": False, "target_epsilon": 1.0}, "--no-dp takes no"),
        ({"dp": False, "auto": True}, "--no-dp takes no"),
        ({}, "exactly one of --noise-multiplier and --target-epsilon"),
        ({"noise_multiplier": 1.0, "target_epsilon": 1.0}, "exactly one"),
        ({"noise_multiplier": 1.0, "auto": True}, "--auto chooses hyperparameters for a target"),
        ({"arch": "lstm", "noise_multiplier": 1.0, "sizes": {"units": (64, 32)}}, "one --units"),
        ({"arch": "mlp", "noise_multiplier": 1.0, "sizes": {"filters": (16,)}}, "unknown option"),
        ({"arch": "gru", "noise_multiplier": 1.0, "sizes": {"heads": 2}}, "unknown option"),
    ],
)
def test_options_that_do_not_go_together_are_refused_as_such(wine, fields, message) -> None:
    with pytest.raises(ConflictingOptions, match=message):
        plan.make_plan(request(**fields), wine)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"arch": "resnet", "noise_multiplier": 1.0}, "unknown architecture"),
        ({"noise_multiplier": 0.0}, "noise multiplier must be positive"),
        ({"noise_multiplier": math.inf}, "noise multiplier must be positive"),
        ({"target_epsilon": -1.0}, "target ε must be a positive number"),
        ({"target_epsilon": math.nan}, "target ε must be a positive number"),
        ({"noise_multiplier": 1.0, "optimizer": "rmsprop"}, "unknown optimizer"),
        ({"noise_multiplier": 1.0, "learning_rate": 0.0}, "learning rate"),
        ({"noise_multiplier": 1.0, "l2_norm_clip": 0.0}, "clip norm"),
        ({"noise_multiplier": 1.0, "l2_norm_clip": math.nan}, "clip norm"),
        ({"noise_multiplier": 1.0, "clipping_path": "magic"}, "unknown clipping path"),
        ({"noise_multiplier": 1.0, "preprocessing": "whiten"}, "unknown preprocessing"),
        ({"noise_multiplier": 1.0, "batch_size": 10_000}, "batch size"),
        ({"noise_multiplier": 1.0, "batch_size": 0}, "batch size"),
        ({"noise_multiplier": 1.0, "epochs": 0}, "epochs"),
        ({"noise_multiplier": 1.0, "stats_noise_multiplier": -2.0}, "statistics' noise"),
        ({"noise_multiplier": 1.0, "preprocessing": "standardize"}, "no DP guarantee covers"),
    ],
)
def test_values_that_cannot_be_honoured_are_refused(wine, fields, message) -> None:
    with pytest.raises(TrainingError, match=message) as refused:
        plan.make_plan(request(**fields), wine)
    assert not isinstance(refused.value, ConflictingOptions)


def test_delta_and_statistics_noise_are_checked_against_the_data(wine, digits) -> None:
    with pytest.raises(TrainingError, match="δ must be in"):
        plan.make_plan(request(noise_multiplier=1.0), wine, delta=0.01)
    with pytest.raises(TrainingError, match="δ must be in"):
        plan.make_plan(request(noise_multiplier=1.0), wine, delta=0.0)
    # digits has a public range, so no statistics are released: their noise has no place
    with pytest.raises(TrainingError, match="dp-standardize only"):
        plan.make_plan(request(noise_multiplier=1.0, stats_noise_multiplier=4.0), digits)


class Counting:
    """Wraps an accounting function and counts its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counting]:
    counters = {
        name: Counting(getattr(accounting, name))
        for name in ("epsilon", "calibrate_noise", "rdp_epsilon", "pld_epsilon")
    }
    for name, counter in counters.items():
        monkeypatch.setattr(accounting, name, counter)
    return counters


def test_a_target_epsilon_is_calibrated_once_and_its_epsilon_computed_once(wine, counted) -> None:
    made = plan.make_plan(request(target_epsilon=2.0, batch_size=64, epochs=3), wine)
    assert counted["calibrate_noise"].calls == 1
    assert counted["epsilon"].calls == 1
    report = made.privacy
    assert report is not None and report.epsilon <= 2.0
    # Every figure of the run is the one report's: the ledger's, the model's, the CLI's.
    assert made.guarantee is report
    assert made.noise_multiplier == report.noise_multiplier and made.delta == report.delta == 1e-5
    assert report.steps == made.steps == made.steps_per_epoch * 3
    assert report.sampling_rate == made.sampling_rate == 64 / made.n_train
    assert report.batch_size == 64 and report.number_of_examples == made.n_train
    assert report.stats_noise_multiplier == made.stats_noise_multiplier == 8.0
    assert made.preprocessing == "dp-standardize" and made.private


def test_a_given_noise_multiplier_is_accounted_once_and_not_calibrated(wine, counted) -> None:
    made = plan.make_plan(request(noise_multiplier=1.3, epochs=2), wine, delta=1e-6)
    assert counted["calibrate_noise"].calls == 0
    assert counted["epsilon"].calls == 1
    assert made.noise_multiplier == 1.3 and made.delta == 1e-6
    assert made.privacy is not None and made.privacy.epsilon > 0


def test_a_run_without_dp_is_not_accounted_and_carries_no_guarantee(wine, counted) -> None:
    made = plan.make_plan(request(dp=False, noise_seed=3, epochs=2), wine)
    assert [c.calls for c in counted.values()] == [0, 0, 0, 0]
    assert made.privacy is None and made.guarantee is None and not made.dp
    assert made.noise_multiplier is None and made.delta is None


def test_a_fixed_noise_seed_keeps_the_nominal_report_but_no_guarantee(wine) -> None:
    made = plan.make_plan(request(noise_multiplier=1.0, noise_seed=7, epochs=1), wine)
    assert made.privacy is not None and not made.private and made.guarantee is None


def test_defaults_auto_and_explicit_flags(wine) -> None:
    made = plan.make_plan(request(noise_multiplier=1.0), wine)
    assert (made.epochs, made.learning_rate, made.optimizer, made.l2_norm_clip) == (
        plan.DEFAULT_EPOCHS,
        plan.DEFAULT_LEARNING_RATE,
        plan.DEFAULT_OPTIMIZER,
        plan.DEFAULT_CLIP,
    )
    chosen = plan.make_plan(request(target_epsilon=3.0, auto=True, learning_rate=0.2), wine)
    assert chosen.auto_reason and "6·sqrt" in chosen.auto_reason
    assert chosen.learning_rate == 0.2  # a flag given beats --auto's choice
    assert chosen.privacy is not None and chosen.privacy.epsilon <= 3.0


def test_the_plan_is_frozen_and_holds_its_split_and_sizes(wine) -> None:
    made = plan.make_plan(
        request(arch="lstm", noise_multiplier=1.0, epochs=1, sizes={"units": (24,)}), wine
    )
    assert dict(made.sizes) == {"units": 24}  # a recurrent layer's one width, unpacked
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.epochs = 2
    with pytest.raises(TypeError):
        made.sizes["units"] = 48
    assert len(made.train_indices) == made.n_train and len(made.test_indices) == made.n_test
    assert made.n_train + made.n_test == wine.n and made.fingerprint == wine.fingerprint
