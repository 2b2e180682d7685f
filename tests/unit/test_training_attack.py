"""Membership-inference attacks: the statistics, and a memorising model against a DP one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secure_maas.training import attack
from secure_maas.training.attack import AttackError


def test_clopper_pearson_known_values() -> None:
    assert attack.clopper_pearson(0, 10, 0.95) == (0.0, pytest.approx(0.30849, abs=1e-5))
    low, high = attack.clopper_pearson(5, 10, 0.95)
    assert low == pytest.approx(0.18709, abs=1e-5) and high == pytest.approx(0.81291, abs=1e-5)
    assert attack.clopper_pearson(10, 10, 0.95) == (pytest.approx(0.69151, abs=1e-5), 1.0)


def test_empirical_epsilon_formula_at_a_given_threshold() -> None:
    members = np.array([1.0] * 90 + [0.0] * 10)
    non_members = np.array([1.0] * 5 + [0.0] * 95)
    eps, threshold, tpr, fpr = attack.empirical_epsilon(
        members, non_members, delta=1e-5, confidence=0.95, threshold=1.0
    )
    assert (threshold, tpr, fpr) == (1.0, 0.9, 0.05)
    tpr_low, _ = attack.clopper_pearson(90, 100, 0.95)
    _, fpr_high = attack.clopper_pearson(5, 100, 0.95)
    expected = max(
        math.log((tpr_low - 1e-5) / fpr_high), math.log((1 - fpr_high - 1e-5) / (1 - tpr_low))
    )
    assert eps == pytest.approx(expected)
    assert 1.5 < eps < math.log(0.9 / 0.05)  # below the point estimate, as a bound must be


def test_separable_scores_give_a_high_auc_and_a_positive_bound() -> None:
    rng = np.random.default_rng(0)
    result = attack.loss_threshold_attack(
        rng.normal(0.0, 0.3, 400), rng.normal(3.0, 0.3, 400), delta=1e-5
    )
    assert result.auc > 0.99 and result.advantage > 0.9
    assert result.epsilon_lower_bound > 2.0
    assert result.members == result.non_members == 400


def test_identical_distributions_give_chance_and_no_bound() -> None:
    rng = np.random.default_rng(1)
    result = attack.loss_threshold_attack(
        rng.exponential(size=500), rng.exponential(size=300), delta=1e-5
    )
    assert abs(result.auc - 0.5) < 0.08
    assert result.members == result.non_members == 300  # balanced
    assert result.epsilon_lower_bound < 0.5


def test_logistic_regression_attack_finds_a_signal_in_features() -> None:
    rng = np.random.default_rng(2)
    members = rng.normal(size=(300, 4))
    non_members = rng.normal(size=(300, 4))
    non_members[:, 2] += 1.5
    result = attack.logistic_regression_attack(members, non_members, delta=1e-5)
    assert result.attack == "logistic-regression" and result.auc > 0.8
    noise = attack.logistic_regression_attack(
        rng.normal(size=(300, 4)), rng.normal(size=(300, 4)), delta=1e-5
    )
    assert abs(noise.auc - 0.5) < 0.1


def test_features_from_probabilities() -> None:
    class Model:
        def predict(self, x, batch_size, verbose):
            return np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])

    losses, log_probs = attack.model_outputs(Model(), np.zeros((2, 3)), np.array([0, 0]))
    np.testing.assert_allclose(losses, [-np.log(0.7), -np.log(0.1)])
    features = attack.attack_features(losses, log_probs)
    assert features.shape == (2, 5)
    np.testing.assert_allclose(features[1, 1:4], np.log([0.8, 0.1, 0.1]))


def test_too_few_examples_are_refused() -> None:
    with pytest.raises(AttackError, match="at least two"):
        attack.loss_threshold_attack(np.array([1.0]), np.array([1.0, 2.0]), delta=1e-5)
