"""Privacy accounting checked against dp_accounting used directly, calibration, composition."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest

from secure_maas.training import accounting, auto
from secure_maas.training.accounting import AccountingError, RdpCurve

Q, STEPS, SIGMA, DELTA = 256 / 1437, 120, 2.0, 1e-5


def direct_event(sigma=SIGMA, q=Q, steps=STEPS):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


@pytest.fixture(scope="module")
def report():
    return accounting.epsilon(
        SIGMA, Q, STEPS, DELTA, l2_norm_clip=1.5, batch_size=256, number_of_examples=1437
    )


def test_epsilon_matches_dp_accounting_used_directly(report) -> None:
    rdp = dp_accounting.rdp.RdpAccountant().compose(direct_event()).get_epsilon(DELTA)
    pld = dp_accounting.pld.PLDAccountant().compose(direct_event()).get_epsilon(DELTA)
    assert report.epsilon_rdp == pytest.approx(rdp, rel=1e-12)
    assert report.epsilon_pld == pytest.approx(pld, rel=1e-12)
    assert report.epsilon == max(rdp, pld)
    assert report.accountant == ("RDP" if rdp >= pld else "PLD")
    assert pld <= rdp  # PLD is the tighter of the two here


def test_report_carries_every_parameter(report) -> None:
    assert report.delta == DELTA and report.noise_multiplier == SIGMA
    assert report.l2_norm_clip == 1.5 and report.batch_size == 256
    assert report.number_of_examples == 1437 and report.sampling_rate == Q
    assert report.steps == STEPS and report.epochs == pytest.approx(STEPS * Q)
    assert report.sampling == "poisson"
    assert len(report.rdp.orders) == len(report.rdp.values) > 10
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rdp"]["orders"] == list(report.rdp.orders)
    assert RdpCurve.from_dict(data["rdp"]) == report.rdp


def test_once_per_epoch_reference_is_the_unamplified_gaussian(report) -> None:
    passes = math.ceil(STEPS * Q)
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(SIGMA), passes)
    expected = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(DELTA)
    assert report.epsilon_once_per_epoch_rdp == pytest.approx(expected)
    assert report.epsilon_once_per_epoch_rdp > report.epsilon


def test_statement_is_tf_privacys_without_microbatching(report) -> None:
    text = report.statement
    assert text is not None
    assert "without microbatching" in text
    assert "1437 examples with 256 examples per iteration" in text
    poisson_line = next(line for line in text.splitlines() if "Poisson sampling (*)" in line)
    assert float(poisson_line.split()[-1]) == pytest.approx(report.epsilon_rdp, abs=1e-3)


def test_statement_needs_consistent_batch_and_size() -> None:
    with pytest.raises(AccountingError, match="sampling rate"):
        accounting.epsilon(SIGMA, 0.5, 3, DELTA, batch_size=10, number_of_examples=100)


@pytest.mark.parametrize(("target", "q", "steps"), [(3.0, 256 / 1437, 360), (1.0, 128 / 455, 40)])
def test_calibration_round_trip(target, q, steps) -> None:
    sigma = accounting.calibrate_noise(target, q, steps, DELTA)
    eps = accounting.rdp_epsilon(sigma, q, steps, DELTA)
    assert 0.99 * target <= eps <= target
    assert accounting.pld_epsilon(sigma, q, steps, DELTA) <= target


def test_rdp_composition_of_runs_matches_composing_the_events() -> None:
    first = dp_accounting.rdp.RdpAccountant(list(accounting.RDP_ORDERS)).compose(direct_event())
    second = dp_accounting.rdp.RdpAccountant(list(accounting.RDP_ORDERS)).compose(
        direct_event(sigma=3.0, steps=50)
    )
    curves = [
        RdpCurve(accounting.RDP_ORDERS, tuple(first.rdp)),
        RdpCurve(accounting.RDP_ORDERS, tuple(second.rdp)),
    ]
    both = dp_accounting.rdp.RdpAccountant(list(accounting.RDP_ORDERS))
    both.compose(direct_event()).compose(direct_event(sigma=3.0, steps=50))
    composed = accounting.compose_rdp(curves, DELTA)
    assert composed == pytest.approx(both.get_epsilon(DELTA), rel=1e-9)
    total = accounting.sum_epsilon([first.get_epsilon(DELTA), second.get_epsilon(DELTA)])
    assert composed < total
    assert accounting.compose_rdp([], DELTA) == 0.0


def test_curves_at_different_orders_are_not_added() -> None:
    with pytest.raises(AccountingError, match="different orders"):
        accounting.compose_rdp([RdpCurve((2.0, 3.0), (0.1, 0.2)), RdpCurve((2.0,), (0.1,))], DELTA)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, Q, 10, DELTA), "noise multiplier"),
        ((1.0, 0.0, 10, DELTA), "sampling rate"),
        ((1.0, 1.5, 10, DELTA), "sampling rate"),
        ((1.0, Q, 0, DELTA), "steps"),
        ((1.0, Q, 2.5, DELTA), "steps"),
        ((1.0, Q, 10, 0.0), "δ"),
        ((1.0, Q, 10, 1.0), "δ"),
    ],
)
def test_bad_parameters_are_refused(args, message) -> None:
    with pytest.raises(AccountingError, match=message):
        accounting.epsilon(*args)


def test_bad_targets_are_refused() -> None:
    with pytest.raises(AccountingError, match="target ε"):
        accounting.calibrate_noise(0.0, Q, 10, DELTA)
    with pytest.raises(AccountingError, match="target ε"):
        accounting.calibrate_noise(math.inf, Q, 10, DELTA)


def test_auto_suggestion_uses_public_quantities_and_meets_the_target() -> None:
    s = auto.suggest(1437, 3.0, DELTA)
    assert s.batch_size == 256 and s.epochs in auto.EPOCH_GRID
    steps = round(1437 / s.batch_size) * s.epochs
    assert accounting.rdp_epsilon(s.noise_multiplier, s.batch_size / 1437, steps, DELTA) <= 3.0
    assert auto.auto_batch_size(40) == 20 and auto.auto_batch_size(10**6) == 8192


# --------------------------------------------------------------------------- the whole artifact


def test_the_statistics_release_is_composed_into_every_figure() -> None:
    z = 8.0
    whole = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z), direct_event()])
    report = accounting.epsilon(SIGMA, Q, STEPS, DELTA, stats_noise_multiplier=z)
    rdp = dp_accounting.rdp.RdpAccountant().compose(whole).get_epsilon(DELTA)
    pld = dp_accounting.pld.PLDAccountant().compose(whole).get_epsilon(DELTA)
    assert report.epsilon_rdp == pytest.approx(rdp, rel=1e-12)
    assert report.epsilon_pld == pytest.approx(pld, rel=1e-9)
    assert report.stats_noise_multiplier == z
    alone = accounting.epsilon(SIGMA, Q, STEPS, DELTA)
    assert report.epsilon > alone.epsilon and alone.stats_noise_multiplier is None
    # The ledger composes runs by their RDP curves: this one must include the release.
    curve = dp_accounting.rdp.RdpAccountant(list(accounting.RDP_ORDERS)).compose(whole)
    assert list(report.rdp.values) == pytest.approx(list(curve._rdp), rel=1e-12)
    assert report.epsilon_once_per_epoch_rdp > report.epsilon


def test_calibration_leaves_room_for_the_statistics() -> None:
    z = 8.0
    sigma = accounting.calibrate_noise(1.0, Q, STEPS, DELTA, stats_noise_multiplier=z)
    report = accounting.epsilon(sigma, Q, STEPS, DELTA, stats_noise_multiplier=z)
    assert 0.99 <= report.epsilon <= 1.0
    assert sigma > accounting.calibrate_noise(1.0, Q, STEPS, DELTA)
    assert accounting.stats_epsilon(z, DELTA) < 1.0
    with pytest.raises(AccountingError, match="statistics alone"):
        accounting.calibrate_noise(0.5, Q, STEPS, DELTA, stats_noise_multiplier=2.0)
    with pytest.raises(AccountingError, match="noise multiplier must be positive"):
        accounting.epsilon(SIGMA, Q, STEPS, DELTA, stats_noise_multiplier=0.0)


@pytest.mark.parametrize(
    ("n", "delta"),
    [
        (1, 1e-5),
        (569, 1e-5),
        (10_000, 1e-5),
        (10_001, 1e-6),
        (60_000, 1e-6),
        (99_999, 1e-6),
        (100_000, 1e-6),
        (100_001, 1e-7),
        (2_500_000, 1e-8),
    ],
)
def test_default_delta_is_a_power_of_ten_below_one_over_n(n, delta) -> None:
    from secure_maas.training.dataset_catalog import default_delta

    assert default_delta(n) == delta
    assert default_delta(n) < 1 / n
