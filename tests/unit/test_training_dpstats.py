"""The statistics' release: its grid, its sensitivity, its noise, and the attack it stops.

The reconstruction attack of the privacy review: with exact standardisation statistics stored in
a model and every other record known, a missing record is `n·mean - Σ others`. These tests run
that attack against the old statistics (it recovers the record) and the strongest membership
test against the new release (it does no better than a Gaussian with the accounted noise).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from secure_maas.training import datasets, dpstats
from secure_maas.training.dpstats import StatisticsError


@pytest.fixture(scope="module")
def cancer() -> datasets.Dataset:
    return datasets.load_dataset("sklearn:breast_cancer")


def test_every_value_falls_in_the_bin_whose_edges_hold_it() -> None:
    edges = dpstats.bin_edges()
    assert edges.shape == (dpstats.BINS, 2) and np.all(np.diff(edges.mean(axis=1)) > 0)
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(0, 1, 200) * 10.0 ** rng.integers(-4, 9, 200),
            [0.0, -0.0, 1.0, 2.0, -2.0, 0.5, 2.0**-16, -(2.0**-17), 2.0**31 * 1.5],
        ]
    )
    index = dpstats.bin_index(values)
    low, high = edges[index, 0], edges[index, 1]
    inside = (np.abs(values) < 2.0**dpstats.E_MIN) | ((low <= values) & (values < high))
    inside |= (values < 0) & (low < values) & (values <= high)
    assert inside.all()
    assert index[values == 0.0].tolist() == [dpstats.ZERO_BIN] * 2
    huge = dpstats.bin_index(np.array([1e300, -1e300]))
    assert huge.tolist() == [dpstats.BINS - 1, 0]  # beyond the grid: the outermost bins


def test_one_record_moves_the_counts_by_exactly_root_d(cancer) -> None:
    with_all = dpstats.histogram(cancer.x)
    without_one = dpstats.histogram(cancer.x[1:])
    assert with_all.shape == (30, dpstats.BINS)
    assert np.all(with_all.sum(axis=1) == cancer.n)
    assert np.linalg.norm(with_all - without_one) == pytest.approx(math.sqrt(30))


def test_the_noise_has_the_accounted_scale(cancer) -> None:
    released = dpstats.release(cancer.x, 8.0, np.random.default_rng(1))
    noise = released.counts - dpstats.histogram(cancer.x)
    assert released.count_stddev == pytest.approx(8.0 * math.sqrt(30))
    # 2,910 independent draws: the sample deviation is within 4% of z·√d with overwhelming odds.
    assert np.std(noise) == pytest.approx(released.count_stddev, rel=0.04)
    assert abs(np.mean(noise)) < 4 * released.count_stddev / math.sqrt(noise.size)
    with pytest.raises(StatisticsError, match="positive"):
        dpstats.release(cancer.x, 0.0, np.random.default_rng(0))
    with pytest.raises(StatisticsError, match="no examples"):
        dpstats.release(cancer.x[:0], 8.0, np.random.default_rng(0))


def test_moments_bring_every_feature_to_a_common_scale(cancer) -> None:
    released = dpstats.release(cancer.x, 8.0, np.random.default_rng(2))
    scaled = (cancer.x - released.mean) / np.sqrt(released.variance)
    assert np.all(np.abs(scaled.mean(axis=0)) < 2.0)
    assert np.all((scaled.std(axis=0) > 0.1) & (scaled.std(axis=0) < 5.0))
    raw_spread = cancer.x.std(axis=0).max() / cancer.x.std(axis=0).min()
    assert raw_spread > 1e4  # what the scaling is for: areas in the thousands, ratios near 0.01


def test_exact_statistics_give_a_missing_record_away(cancer) -> None:
    """The old behaviour: the model stores the exact mean of its training split."""
    train, _ = datasets.split(cancer)
    stored = datasets.preprocessing_for(cancer, train, kind="standardize").mean.astype(np.float64)
    target, others = train[0], train[1:]
    reconstructed = len(train) * stored - cancer.x[others].astype(np.float64).sum(axis=0)
    relative = np.abs(reconstructed - cancer.x[target]) / np.abs(cancer.x[target]).clip(1e-3)
    assert np.median(relative) < 1e-3  # the review saw 3e-5


def test_the_same_attack_on_released_statistics_recovers_nothing(cancer) -> None:
    train, _ = datasets.split(cancer)
    rng = np.random.default_rng(3)
    stored = datasets.preprocessing_for(cancer, train, rng=rng).mean.astype(np.float64)
    target, others = train[0], train[1:]
    reconstructed = len(train) * stored - cancer.x[others].astype(np.float64).sum(axis=0)
    relative = np.abs(reconstructed - cancer.x[target]) / np.abs(cancer.x[target]).clip(1e-3)
    assert np.median(relative) > 1.0  # worse than guessing zero for most features


def test_the_best_membership_test_does_no_better_than_the_accounted_noise(cancer) -> None:
    """Neyman-Pearson against the release itself, with every other record known.

    With the others known, the attacker subtracts their exact histogram; what remains is the
    target's one-hot counts (if it was in) plus the noise. The optimal statistic sums the
    residual over the target's bins: N(d, d·z²·d) if in, N(0, d·z²·d) if out, a shift of 1/z
    standard deviations, so no test beats AUC Φ(1/(z·√2)) (0.535 at z = 8). Against the exact
    histogram the same statistic separates perfectly.
    """
    z, trials = 8.0, 400
    train, _ = datasets.split(cancer)
    target, others = cancer.x[train[0]], cancer.x[train[1:]]
    known = dpstats.histogram(others)
    bins = dpstats.bin_index(target.astype(np.float64)[None, :])[0]
    columns = np.arange(len(bins))
    rng = np.random.default_rng(4)

    def statistic(x: np.ndarray, noisy: bool) -> float:
        counts = dpstats.release(x, z, rng).counts if noisy else dpstats.histogram(x)
        return float((counts - known)[columns, bins].sum())

    inside = np.vstack([others, target[None, :]])
    member = np.array([statistic(inside, True) for _ in range(trials)])
    outsider = np.array([statistic(others, True) for _ in range(trials)])
    auc = float(np.mean(member[:, None] > outsider[None, :]))
    bound = float(norm.cdf(1.0 / (z * math.sqrt(2.0))))
    assert bound == pytest.approx(0.535, abs=1e-3)
    # Standard error of the AUC estimate is about 0.02 here; the seed is fixed.
    assert auc < bound + 0.08
    assert statistic(inside, False) - statistic(others, False) == len(bins)  # exact: perfect
