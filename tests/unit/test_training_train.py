"""DP-SGD training step by step: each step is the clipped sum plus the accounted noise, batches
follow the sampling rate, and bad requests are refused before a step runs (whole training runs:
tests/functional/test_training_runs.py)."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from secure_maas.training import architectures, clipping, train  # noqa: E402
from secure_maas.training.architectures import ArchitectureError  # noqa: E402
from secure_maas.training.datasets import Dataset, load_dataset  # noqa: E402
from secure_maas.training.plan import TrainingError  # noqa: E402
from tests.unit.train_support import digits_subset, fit  # noqa: E402


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    return digits_subset(load_dataset("sklearn:digits"), 300)


def one_step_update(model, path, x, y, *, batch_size, clip, sigma, noise_seed):
    """Weights change after one DP step with plain SGD at learning rate 1."""
    tf.random.set_seed(noise_seed)
    trainer, plan = train.make_dp_trainer(
        model,
        l2_norm_clip=clip,
        noise_multiplier=sigma,
        batch_size=batch_size,
        optimizer="sgd",
        learning_rate=1.0,
        path=path,
    )
    assert plan.path == (clipping.FAST if path == "fast" else clipping.PER_EXAMPLE)
    before = [w.numpy().copy() for w in trainer.trainable_weights]
    weights = np.full(len(y), 1.0 / batch_size, np.float32)
    trainer.train_on_batch(x, y, sample_weight=weights)
    after = [w.numpy() for w in trainer.trainable_weights]
    for var, value in zip(trainer.trainable_weights, before, strict=True):
        var.assign(value)
    return [b - a for b, a in zip(before, after, strict=True)]


@pytest.fixture
def tiny_model():
    tf.keras.utils.set_random_seed(7)
    return architectures.build_model("mlp", (6,), 3, units=(20,))


def tiny_batch(rows=5):
    rng = np.random.default_rng(8)
    x = (3 * rng.normal(size=(rows, 6))).astype(np.float32)
    return x, rng.integers(0, 3, size=rows)


@pytest.mark.parametrize("path", ["fast", "per-example"])
def test_a_noiseless_step_is_the_clipped_sum_over_the_expected_batch(tiny_model, path) -> None:
    """(1/b) * sum_i clip_C(grad_i), b the EXPECTED batch size, not the rows in this batch."""
    x, y = tiny_batch()
    clip, batch_size = 0.5, 8
    got = one_step_update(
        tiny_model, path, x, y, batch_size=batch_size, clip=clip, sigma=0.0, noise_seed=0
    )
    logits = architectures.logits_model(tiny_model)
    expected = [np.zeros(v.shape, np.float64) for v in logits.trainable_weights]
    clipped_some = False
    for i in range(len(y)):
        with tf.GradientTape() as tape:
            loss = tf.keras.losses.sparse_categorical_crossentropy(
                y[i : i + 1], logits(x[i : i + 1]), from_logits=True
            )
        grads = [g.numpy() for g in tape.gradient(loss, logits.trainable_weights)]
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
        clipped_some |= norm > clip
        for acc, g in zip(expected, grads, strict=True):
            acc += g * min(1.0, clip / norm) / batch_size
    assert clipped_some
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("path", ["fast", "per-example"])
def test_noise_has_the_accounted_scale(tiny_model, path) -> None:
    """Two steps from the same weights differ only by noise: std sqrt(2) * sigma * C / b."""
    x, y = tiny_batch()
    clip, sigma, batch_size = 0.5, 3.0, 8
    first = one_step_update(
        tiny_model, path, x, y, batch_size=batch_size, clip=clip, sigma=sigma, noise_seed=1
    )
    second = one_step_update(
        tiny_model, path, x, y, batch_size=batch_size, clip=clip, sigma=sigma, noise_seed=2
    )
    diff = np.concatenate([(a - b).ravel() for a, b in zip(first, second, strict=True)])
    assert diff.size > 150
    expected = np.sqrt(2) * sigma * clip / batch_size
    # The sample standard deviation of ~200 normals is within 15% with overwhelming probability.
    assert abs(diff.std() / expected - 1) < 0.15
    assert abs(diff.mean()) < 4 * expected / np.sqrt(diff.size)


def test_poisson_batches_follow_the_sampling_rate() -> None:
    x = np.arange(1000, dtype=np.float32).reshape(500, 2)
    y = np.zeros(500, np.int64)
    data = train._poisson_batches(x, y, 0.1, 50, 200, np.random.default_rng(0))
    sizes, weights = [], set()
    for xb, _, wb in data.as_numpy_iterator():
        sizes.append(len(xb))
        weights.update(wb.tolist())
    assert len(sizes) == 200
    assert abs(np.mean(sizes) - 50) < 2 and np.std(sizes) > 3  # Binomial(500, 0.1)
    assert weights == {np.float32(1 / 50)}
    empty = list(train._poisson_batches(x, y, 1e-9, 50, 2, np.random.default_rng(0)))
    assert [float(w.numpy().sum()) for _, _, w in empty] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 1.0, "target_epsilon": 3.0}, "exactly one"),
        ({}, "exactly one"),
        ({"noise_multiplier": 1.0, "delta": 0.01}, "δ must be in"),
        ({"noise_multiplier": 1.0, "batch_size": 10_000}, "batch size"),
        ({"noise_multiplier": 1.0, "epochs": 0}, "epochs"),
        ({"noise_multiplier": 1.0, "optimizer": "rmsprop"}, "optimizer"),
        ({"noise_multiplier": 1.0, "learning_rate": 0.0}, "learning rate"),
        ({"noise_multiplier": 1.0, "l2_norm_clip": 0.0}, "clip norm"),
        ({"noise_multiplier": 0.0}, "noise multiplier must be positive"),
        ({"noise_multiplier": 1.0, "clipping_path": "magic"}, "clipping path"),
    ],
)
def test_bad_parameters_are_refused_before_training(small_digits, kwargs, message) -> None:
    with pytest.raises(TrainingError, match=message):
        fit(small_digits, "mlp", **{"batch_size": 32, "epochs": 1, **kwargs})


def test_unknown_architectures_and_options_are_refused(small_digits) -> None:
    with pytest.raises(TrainingError, match="unknown architecture"):
        fit(small_digits, "resnet", noise_multiplier=1.0)
    with pytest.raises(ArchitectureError, match="unknown option"):
        architectures.build_model("mlp", (4,), 2, filters=3)
    cancer = load_dataset("sklearn:breast_cancer")
    with pytest.raises(ArchitectureError, match="image-shaped"):
        fit(cancer, "cnn", noise_multiplier=1.0, batch_size=32, epochs=1)


def test_batch_normalisation_is_refused_for_dp_on_every_path() -> None:
    inputs = tf.keras.Input((6,), name=architectures.INPUT_NAME)
    x = tf.keras.layers.BatchNormalization(name="bn")(inputs)
    logits = tf.keras.layers.Dense(3, name=architectures.LOGITS_NAME)(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Softmax(name="probabilities")(logits))
    for path in ("auto", "per-example"):
        with pytest.raises(TrainingError, match="BatchNormalization stores exact statistics"):
            train.make_dp_trainer(
                model,
                l2_norm_clip=1.0,
                noise_multiplier=1.0,
                batch_size=4,
                optimizer="sgd",
                learning_rate=0.1,
                path=path,
            )


def test_training_that_changes_non_trainable_weights_is_refused(tiny_model) -> None:
    """The guard after every DP run: non-trainable state must not move (it would hold exact
    statistics of the batches, as BatchNormalization's moving averages do)."""
    model = tiny_model
    model.get_layer("dense_0").trainable = False
    frozen = train.non_trainable_values(model)
    assert frozen
    trainer, _ = train.make_dp_trainer(
        model, l2_norm_clip=1.0, noise_multiplier=1.0, batch_size=5, optimizer="sgd",
        learning_rate=1.0,
    )  # fmt: skip
    x, y = tiny_batch()
    trainer.train_on_batch(x, y, sample_weight=np.full(5, 0.2, np.float32))
    train.check_unchanged(model, frozen)  # frozen weights stay frozen under DP-SGD
    model.non_trainable_variables[0].assign_add(tf.ones_like(frozen[0]))
    with pytest.raises(TrainingError, match="changed non-trainable weights"):
        train.check_unchanged(model, frozen)


def test_exact_statistics_and_stray_statistics_noise_are_refused_with_dp() -> None:
    cancer = load_dataset("sklearn:breast_cancer")
    with pytest.raises(TrainingError, match="no DP guarantee covers"):
        fit(cancer, "mlp", noise_multiplier=1.0, preprocessing="standardize", epochs=1)
    digits = load_dataset("sklearn:digits")
    with pytest.raises(TrainingError, match="dp-standardize only"):
        fit(digits, "mlp", noise_multiplier=1.0, stats_noise_multiplier=4.0, epochs=1)
