"""Privacy accounting for DP-SGD with dp_accounting 0.4.3 (RDP and PLD) and TF Privacy's text.

Training samples every batch by Poisson sampling: each training example joins each step
independently with probability `q = batch_size / n`, and a step adds Gaussian noise of
standard deviation `noise_multiplier * clip` to the sum of per-example clipped gradients. That
is `SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)`, and it is the
ε that training reports, under add-or-remove-one-example adjacency. The guarantee covers every
intermediate model, not only the last.

Both accountants are run; the larger ε (the conservative one, almost always RDP's) is THE ε.
For reference the report also carries what TF Privacy's statement calls "each example occurring
once per epoch": the Gaussian mechanism composed once per epoch with no amplification by
sampling, the figure one would quote for shuffled fixed-size batches. It is not the guarantee
of our training (which is Poisson sampled), only a comparison point.

When the run's preprocessing statistics are released with the Gaussian mechanism (see
`dpstats`), that release is one more `GaussianDpEvent(stats_noise_multiplier)` composed with the
DP-SGD steps: every ε here (the guarantee, both accountants, the reference figure and the RDP
curve the ledger composes) then covers the whole artifact, statistics included.

`compose_rdp` composes several runs on the same dataset by adding their RDP curves order by
order; `sum_epsilon` is the plain (weaker) composition theorem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from secure_maas.errors import SecureMaasError

RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
SAMPLING = "poisson"


class AccountingError(SecureMaasError):
    """Privacy parameters that cannot be accounted: out of range, or a budget unreachable."""


@dataclass(frozen=True)
class RdpCurve:
    """RDP of one run at each order; add curves to compose runs on the same data."""

    orders: tuple[float, ...]
    values: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"orders": list(self.orders), "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RdpCurve:
        orders = tuple(float(a) for a in data["orders"])
        values = tuple(float(v) for v in data["values"])
        if len(orders) != len(values):
            raise AccountingError("an RDP curve needs one value per order")
        return cls(orders, values)


@dataclass(frozen=True)
class PrivacyReport:
    """The (ε, δ) guarantee of a DP-SGD run and every parameter that produced it."""

    epsilon: float  # THE ε: the larger of RDP's and PLD's, for the sampling used
    delta: float
    noise_multiplier: float
    l2_norm_clip: float | None
    batch_size: int | None  # expected batch size, q * n
    number_of_examples: int | None
    sampling_rate: float
    epochs: float  # steps * q, expected passes over the data
    steps: int
    sampling: str  # "poisson"
    accountant: str  # which accountant gave THE ε: "RDP" or "PLD"
    epsilon_rdp: float
    epsilon_pld: float
    # Reference only: no amplification, each example once per epoch (TF Privacy's first line).
    epsilon_once_per_epoch_rdp: float
    epsilon_once_per_epoch_pld: float
    rdp: RdpCurve
    statement: str | None  # TF Privacy's compute_dp_sgd_privacy_statement, RDP (DP-SGD alone)
    # Noise multiplier of the statistics' Gaussian release; None when preprocessing used none.
    stats_noise_multiplier: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; what a model version stores."""
        data = asdict(self)
        data["rdp"] = self.rdp.to_dict()
        return data


def gaussian_event(noise_multiplier: float, sampling_rate: float, steps: int) -> Any:
    """The DpEvent of `steps` Poisson-sampled Gaussian steps."""
    _check(noise_multiplier, sampling_rate, steps)
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        steps,
    )


def run_event(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    stats_noise_multiplier: float | None = None,
) -> Any:
    """The DpEvent of a whole run: the statistics' release (if any), then the DP-SGD steps."""
    steps_event = gaussian_event(noise_multiplier, sampling_rate, steps)
    if stats_noise_multiplier is None:
        return steps_event
    _check_stats(stats_noise_multiplier)
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(stats_noise_multiplier), steps_event]
    )


def rdp_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    *,
    stats_noise_multiplier: float | None = None,
) -> float:
    """ε of the RDP accountant alone (fast: used to calibrate and to plan)."""
    accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    accountant.compose(run_event(noise_multiplier, sampling_rate, steps, stats_noise_multiplier))
    return float(accountant.get_epsilon(delta))


def pld_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    *,
    stats_noise_multiplier: float | None = None,
) -> float:
    """ε of the PLD accountant alone (tighter, about a second)."""
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(run_event(noise_multiplier, sampling_rate, steps, stats_noise_multiplier))
    return float(accountant.get_epsilon(delta))


def stats_epsilon(stats_noise_multiplier: float, delta: float) -> float:
    """ε (RDP) of the statistics' release alone: what a run spends before its first step."""
    _check_delta(delta)
    _check_stats(stats_noise_multiplier)
    accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    accountant.compose(dp_accounting.GaussianDpEvent(stats_noise_multiplier))
    return float(accountant.get_epsilon(delta))


def epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    *,
    l2_norm_clip: float | None = None,
    batch_size: int | None = None,
    number_of_examples: int | None = None,
    stats_noise_multiplier: float | None = None,
) -> PrivacyReport:
    """The full report of a Poisson-sampled DP-SGD run (with its statistics' release, if any).

    TF Privacy's statement needs the integer batch size and number of examples; it is left out
    (None) when they are not given. It is computed with `used_microbatching=False`: every
    example is clipped on its own on both of our clipping paths. It describes the DP-SGD steps
    alone; every ε of the report itself covers the statistics' release too.
    """
    _check_delta(delta)
    _check(noise_multiplier, sampling_rate, steps)
    event = run_event(noise_multiplier, sampling_rate, steps, stats_noise_multiplier)
    accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    accountant.compose(event)
    eps_rdp = float(accountant.get_epsilon(delta))
    curve = RdpCurve(RDP_ORDERS, tuple(float(v) for v in accountant.rdp))
    eps_pld = float(dp_accounting.pld.PLDAccountant().compose(event).get_epsilon(delta))
    epochs = _epochs(sampling_rate, steps)
    passes = max(1, math.ceil(epochs))
    once_events = [
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), passes)
    ]
    if stats_noise_multiplier is not None:
        once_events.insert(0, dp_accounting.GaussianDpEvent(stats_noise_multiplier))
    once = dp_accounting.ComposedDpEvent(once_events)
    once_rdp = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS)).compose(once).get_epsilon(delta)
    once_pld = dp_accounting.pld.PLDAccountant().compose(once).get_epsilon(delta)
    statement = None
    if batch_size is not None and number_of_examples is not None:
        if not math.isclose(batch_size / number_of_examples, sampling_rate, rel_tol=1e-9):
            raise AccountingError(
                f"batch size {batch_size} over {number_of_examples} examples is not the "
                f"sampling rate {sampling_rate}"
            )
        statement = privacy_statement(
            number_of_examples, batch_size, epochs, noise_multiplier, delta
        )
    conservative = "RDP" if eps_rdp >= eps_pld else "PLD"
    return PrivacyReport(
        epsilon=max(eps_rdp, eps_pld),
        delta=delta,
        noise_multiplier=float(noise_multiplier),
        l2_norm_clip=l2_norm_clip,
        batch_size=batch_size,
        number_of_examples=number_of_examples,
        sampling_rate=float(sampling_rate),
        epochs=epochs,
        steps=int(steps),
        sampling=SAMPLING,
        accountant=conservative,
        epsilon_rdp=eps_rdp,
        epsilon_pld=eps_pld,
        epsilon_once_per_epoch_rdp=float(once_rdp),
        epsilon_once_per_epoch_pld=float(once_pld),
        rdp=curve,
        statement=statement,
        stats_noise_multiplier=(
            None if stats_noise_multiplier is None else float(stats_noise_multiplier)
        ),
    )


def privacy_statement(
    number_of_examples: int, batch_size: int, epochs: float, noise_multiplier: float, delta: float
) -> str:
    """TF Privacy's own text for the run (RDP accounting, no microbatching)."""
    from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib as lib

    return str(
        lib.compute_dp_sgd_privacy_statement(
            number_of_examples=number_of_examples,
            batch_size=batch_size,
            num_epochs=epochs,
            noise_multiplier=noise_multiplier,
            delta=delta,
            used_microbatching=False,
            accountant_type=lib.AccountantType.RDP,
        )
    )


def calibrate_noise(
    target_epsilon: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    *,
    tol: float = 1e-4,
    stats_noise_multiplier: float | None = None,
) -> float:
    """The smallest DP-SGD noise multiplier whose conservative ε is at most `target_epsilon`.

    Calibrated with dp_accounting's `calibrate_dp_mechanism` on the RDP accountant, then checked
    against PLD too (PLD is almost always tighter; if not, the noise is raised until both fit).
    With `stats_noise_multiplier`, the ε is that of the whole run, statistics' release included.
    """
    sigma = calibrate_rdp(
        target_epsilon,
        sampling_rate,
        steps,
        delta,
        tol=tol,
        stats_noise_multiplier=stats_noise_multiplier,
    )
    for _ in range(100):
        eps = pld_epsilon(
            sigma, sampling_rate, steps, delta, stats_noise_multiplier=stats_noise_multiplier
        )
        if eps <= target_epsilon:
            return sigma
        sigma *= 1.01
    raise AccountingError(f"PLD accounting does not reach ε={target_epsilon}; noise {sigma:.3f}")


def calibrate_rdp(
    target_epsilon: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    *,
    tol: float = 1e-4,
    stats_noise_multiplier: float | None = None,
) -> float:
    """The smallest noise multiplier meeting `target_epsilon` by the RDP accountant alone."""
    _check_delta(delta)
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise AccountingError(f"target ε must be a positive number, got {target_epsilon}")
    _check(1.0, sampling_rate, steps)
    if stats_noise_multiplier is not None:
        before = stats_epsilon(stats_noise_multiplier, delta)
        if before >= target_epsilon:
            raise AccountingError(
                f"the preprocessing statistics alone (noise multiplier "
                f"{stats_noise_multiplier:g}) spend ε={before:.4g}, leaving nothing of the target "
                f"ε={target_epsilon:g} for training: raise the statistics' noise multiplier, "
                "declare public feature ranges at registration, or raise the target"
            )

    def event(sigma: float) -> Any:
        return run_event(max(sigma, 1e-6), sampling_rate, steps, stats_noise_multiplier)

    try:
        return float(
            dp_accounting.calibrate_dp_mechanism(
                lambda: dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS)),
                event,
                target_epsilon,
                delta,
                dp_accounting.LowerEndpointAndGuess(0.05, 1.0),
                tol=tol,
            )
        )
    except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as exc:
        raise AccountingError(
            f"no noise multiplier reaches ε={target_epsilon} at δ={delta} in {steps} steps: {exc}"
        ) from exc


def compose_rdp(curves: Sequence[RdpCurve], delta: float) -> float:
    """ε at `delta` of several runs on the same data: their RDP curves added order by order."""
    _check_delta(delta)
    if not curves:
        return 0.0
    orders = curves[0].orders
    if any(curve.orders != orders for curve in curves):
        raise AccountingError("RDP curves computed at different orders cannot be added")
    total = np.sum([np.asarray(curve.values) for curve in curves], axis=0)
    eps, _ = rdp_privacy_accountant.compute_epsilon(list(orders), list(total), delta)
    return float(eps)


def sum_epsilon(epsilons: Sequence[float]) -> float:
    """Basic composition: k runs at (ε_i, δ_i) together are (Σε_i, Σδ_i)-DP."""
    return float(math.fsum(epsilons))


def _epochs(sampling_rate: float, steps: int) -> float:
    """`steps * q`, nudged down so that TF Privacy's ceil(epochs / q) gives back `steps`."""
    epochs = steps * sampling_rate
    while math.ceil(epochs / sampling_rate) > steps:
        epochs = math.nextafter(epochs, 0.0)
    return epochs


def _check(noise_multiplier: float, sampling_rate: float, steps: int) -> None:
    if not noise_multiplier > 0 or not math.isfinite(noise_multiplier):
        raise AccountingError(f"noise multiplier must be positive, got {noise_multiplier}")
    if not 0.0 < sampling_rate <= 1.0:
        raise AccountingError(f"sampling rate must be in (0, 1], got {sampling_rate}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise AccountingError(f"steps must be a positive integer, got {steps!r}")


def _check_stats(stats_noise_multiplier: float) -> None:
    if not stats_noise_multiplier > 0 or not math.isfinite(stats_noise_multiplier):
        raise AccountingError(
            f"the statistics' noise multiplier must be positive, got {stats_noise_multiplier}"
        )


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise AccountingError(f"δ must be in (0, 1), got {delta}")
