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
