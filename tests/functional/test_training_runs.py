"""Whole DP-SGD training runs: the model learns, reports its privacy and its clipping path on
every architecture, is a plain servable Keras model, and does not leak membership where an
undefended one does."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from secure_maas.registry.signature import ServingSignature  # noqa: E402
from secure_maas.training import attack, clipping, train  # noqa: E402
from secure_maas.training.datasets import Dataset, load_dataset  # noqa: E402
from secure_maas.training.plan import TrainingRequest, make_plan  # noqa: E402
from tests.unit.train_support import digits_subset, fit  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("sklearn:digits")


@pytest.fixture(scope="module")
def small_digits(digits: Dataset) -> Dataset:
    return digits_subset(digits, 300)


def test_dp_training_on_digits_learns_and_reports_its_privacy(digits) -> None:
    seen = []
    result = fit(
        digits,
        "mlp",
        target_epsilon=3.0,
        batch_size=256,
        epochs=12,
        learning_rate=0.15,
        noise_seed=1,
        progress=seen.append,
    )
    assert result.plan.dp and result.path_used == clipping.FAST
    assert result.test_accuracy > 0.8  # chance is 0.1
    privacy = result.plan.privacy
    assert privacy is not None
    assert 2.97 <= privacy.epsilon <= 3.0 and privacy.delta == 1e-5
    assert privacy.steps == result.plan.steps == 6 * 12
    assert privacy.sampling_rate == 256 / len(result.plan.train_indices)
    assert privacy.l2_norm_clip == 1.0 and privacy.batch_size == 256
    assert privacy.noise_multiplier == result.plan.noise_multiplier
    assert [p.epoch for p in seen] == list(range(1, 13))
    assert seen[-1].eta_s == 0.0 and seen[0].eta_s > 0 and seen[-1].elapsed_s > 0
    assert len(result.history) == 12 and {"loss", "accuracy"} <= set(result.history[0])
    assert len(result.plan.train_indices) + len(result.plan.test_indices) == digits.n


def test_the_result_is_a_plain_servable_model(small_digits) -> None:
    result = fit(small_digits, "mlp", noise_multiplier=1.0, batch_size=64, epochs=1, noise_seed=2)
    model = result.model
    assert type(model).__name__ == "Functional"  # not TF Privacy's DPModel
    signature = ServingSignature.from_model(model)
    assert signature.input_names == ["features"] and signature.output_names == ["probabilities"]
    probs = model.predict(small_digits.x[:5], verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    rebuilt = tf.keras.Model.from_config(model.get_config())
    assert rebuilt.count_params() == model.count_params()


def test_no_dp_is_marked_as_such(small_digits) -> None:
    result = fit(small_digits, "mlp", dp=False, batch_size=32, epochs=3, noise_seed=3)
    assert not result.plan.dp and result.plan.privacy is None
    assert result.path_used == train.NON_PRIVATE
    assert result.plan.noise_multiplier is None and result.plan.delta is None
    assert result.test_accuracy > 0.5


@pytest.mark.parametrize("arch", ["cnn", "lstm", "gru", "transformer"])
def test_every_architecture_trains_and_reports_its_path(small_digits, arch) -> None:
    result = fit(small_digits, arch, noise_multiplier=1.0, batch_size=60, epochs=1, noise_seed=4)
    # Every trainable layer of every architecture has a registry function: the fast path.
    assert result.path_used == clipping.FAST
    for kind in {"cnn": "Conv2D", "lstm": "LSTM", "gru": "GRU", "transformer": "MultiHead"}[
        arch
    ].split():
        assert kind in result.path_reason
    assert result.plan.privacy is not None and result.plan.privacy.steps == 4


def test_the_per_example_path_can_be_forced_and_is_reported(small_digits) -> None:
    result = fit(
        small_digits,
        "mlp",
        noise_multiplier=1.0,
        batch_size=60,
        epochs=1,
        noise_seed=5,
        clipping_path="per-example",
    )
    assert result.path_used == clipping.PER_EXAMPLE
    assert "requested" in result.path_reason


def test_memorising_model_leaks_and_the_dp_model_does_not() -> None:
    """Random labels, no DP, many epochs: membership shows. Same data at ε=3: it does not."""
    digits = load_dataset("sklearn:digits")
    rng = np.random.default_rng(0)
    pick = rng.choice(digits.n, 800, replace=False)
    data = Dataset(
        source="random-labels",
        x=digits.x[pick],
        y=rng.integers(0, 10, size=800),
        classes=digits.classes,
        fingerprint="random-labels",
        value_range=digits.value_range,
    )
    common = {"test_fraction": 0.5, "seed": 0, "noise_seed": 0, "sizes": {"units": (256,)}}

    def audit(result, delta):
        return attack.run_attacks(
            result.model,
            data.x[result.plan.train_indices],
            data.y[result.plan.train_indices],
            data.x[result.plan.test_indices],
            data.y[result.plan.test_indices],
            delta=delta,
        )

    def fit(**fields):
        request = TrainingRequest(dataset=data.source, model_name="m", arch="mlp", **fields)
        return train.train(data, make_plan(request, data))

    memorised = fit(
        dp=False,
        batch_size=32,
        epochs=150,
        optimizer="adam",
        learning_rate=3e-3,
        **common,
    )
    leaky = audit(memorised, 1e-5)
    assert leaky.max_auc > 0.8
    assert leaky.max_epsilon_lower_bound > 0.5

    private = fit(target_epsilon=3.0, batch_size=100, epochs=20, learning_rate=0.05, **common)
    assert private.plan.privacy is not None
    report = audit(private, private.plan.privacy.delta)
    for result in report.results:
        assert abs(result.auc - 0.5) < 0.1, result
    assert report.max_epsilon_lower_bound < private.plan.privacy.epsilon
