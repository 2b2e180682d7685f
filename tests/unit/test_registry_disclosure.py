"""What callers are told about a model's privacy: the guarantee's fields, rounded so that they
cannot be solved for the sampling rate, and nothing about the data."""

from __future__ import annotations

import pytest

from secure_maas.registry import disclosure
from secure_maas.registry.disclosure import PUBLIC_DP_FIELDS, public_dp, public_guarantee

OPERATOR = {
    "epsilon": 0.99991834,
    "delta": 1e-5,
    "noise_multiplier": 8.5633234,
    "clip_norm": 1.0,
    "batch_size": 128,
    "sampling_rate": 128 / 455,
    "epochs": 40 * 128 / 455,
    "steps": 40,
    "accountant": "dp_accounting RDP, poisson sampling",
    "statement": "... Training-set size: 455 ...",
    "preprocessing": "dp-standardize",
    "stats_noise_multiplier": 8.0,
}


@pytest.mark.parametrize(
    ("value", "up", "nearest"),
    [(0.99991834, 1.0, 1.0), (2.9994, 3.0, 3.0), (1.2341, 1.24, 1.23), (12.01, 12.1, 12.0),
     (0.0123, 0.0123, 0.0123), (3.0, 3.0, 3.0)],
)  # fmt: skip
def test_rounding(value, up, nearest) -> None:
    assert disclosure.round_up(value) == pytest.approx(up)
    assert disclosure.round_up(value) >= value
    assert disclosure.round_to(value) == pytest.approx(nearest)


def test_callers_get_the_guarantee_and_what_it_covers_only() -> None:
    shown = public_dp(OPERATOR)
    assert tuple(shown) == PUBLIC_DP_FIELDS
    assert shown["epsilon"] == 1.0 and shown["noise_multiplier"] == 8.56
    assert shown["epochs"] == 11 and shown["steps"] == 40 and shown["delta"] == 1e-5
    assert shown["preprocessing"] == {
        "kind": "dp-standardize",
        "covered": True,
        "stats_noise_multiplier": 8.0,
    }
    assert "(1, 1e-05)-DP" in shown["statement"] and "455" not in str(shown)
    assert "128" not in str(shown) and "0.2813" not in str(shown)


def test_only_dp_models_have_a_guarantee_to_show() -> None:
    assert public_guarantee("dp", OPERATOR) is not None
    assert public_guarantee("non-private", None) is None
    assert public_guarantee("imported", None) is None
