"""`registry.signed`: which row differences are refused, which narrowings are kept (no database:
rows and headers built in memory)."""

from __future__ import annotations

from typing import Any

import pytest

from secure_maas.crypto.envelope import Header, InvalidArtifact
from secure_maas.registry.models import Model, ModelVersion
from secure_maas.registry.publish import DP_FIELDS
from secure_maas.registry.signed import check_row, header_facts

SIGNATURE = {"inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}], "outputs": []}
GUARANTEE = {
    "epsilon": 1.5,
    "delta": 1e-5,
    "noise_multiplier": 1.1,
    "clip_norm": 1.0,
    "batch_size": 32,
    "sampling_rate": 0.01,
    "epochs": 3,
    "steps": 300,
    "accountant": "rdp",
    "statement": "(1.5, 1e-05)-DP",
    "preprocessing": "public-range",
    "stats_noise_multiplier": None,
}


def header(privacy: str = "dp", dp: dict[str, Any] | None = None) -> Header:
    metadata = {
        "signature": SIGNATURE,
        "privacy": privacy,
        "dp": dp,
        "dataset": {"name": "digits", "fingerprint": "f0"},
    }
    return Header("m", 1, metadata, 10, "0" * 64, 1 << 20, b"\x00" * 7)


def row(**changes: Any) -> ModelVersion:
    dp = {} if changes.get("privacy") == "imported" else GUARANTEE  # 0006 keeps dp_* columns
    values: dict[str, Any] = {
        "version": 1,
        "privacy": "dp",
        **{f"dp_{key}": dp.get(key) for key in DP_FIELDS},
        "dataset_name": "digits",
        "dataset_fingerprint": "f0",
        "signature": SIGNATURE,
        "plaintext_sha256": "0" * 64,
        "plaintext_bytes": 10,
        "publisher_key_id": "pub",
    }
    values.update(changes)
    made = ModelVersion(**values)
    made.model = Model(name="m")
    return made


def test_a_row_equal_to_its_header_gives_the_header_facts() -> None:
    facts = check_row(row(), header(dp=GUARANTEE), "pub")
    assert (facts.privacy, facts.epsilon, facts.dataset_name) == ("dp", 1.5, "digits")
    assert facts.dp == GUARANTEE


def test_numbers_compare_by_value_and_types_otherwise() -> None:
    check_row(row(dp_epochs=3.0), header(dp=GUARANTEE), "pub")  # a Float column holds 3.0
    with pytest.raises(InvalidArtifact, match="tampered") as caught:
        check_row(row(dp_accountant=1), header(dp={**GUARANTEE, "accountant": "1"}), "pub")
    assert caught.value.reason.endswith("in: dp_accountant")


def test_a_non_dp_header_leaves_no_room_for_a_guarantee_in_the_row() -> None:
    with pytest.raises(InvalidArtifact) as caught:
        check_row(row(privacy="imported", dp_epsilon=0.5), header("imported"), "pub")
    assert caught.value.code == "row_mismatch"
    assert caught.value.reason.endswith("in: dp_epsilon")


def test_a_withdrawn_dp_label_is_kept_and_used() -> None:
    facts = check_row(row(privacy="non-private"), header(dp=GUARANTEE), "pub")
    assert (facts.privacy, facts.dp, facts.epsilon) == ("non-private", None, None)


def test_legacy_headers_take_the_preprocessing_the_upgrade_found() -> None:
    legacy = {k: v for k, v in GUARANTEE.items() if k not in ("preprocessing",)}
    facts = check_row(row(), header(dp=legacy), "pub")
    assert facts.dp is not None and facts.dp["preprocessing"] == "public-range"
    with pytest.raises(InvalidArtifact):
        check_row(row(dp_preprocessing="dp-standardize"), header(dp=legacy), "pub")
    with pytest.raises(InvalidArtifact):  # a header that says it is refused if the row differs
        check_row(row(dp_preprocessing="none"), header(dp=GUARANTEE), "pub")


@pytest.mark.parametrize(
    "metadata",
    [
        {"privacy": "secret", "dp": None},
        {"privacy": "dp", "dp": None},
        {"privacy": "imported", "dp": GUARANTEE},
        {"privacy": "dp", "dp": {**GUARANTEE, "size": 3000}},
    ],
)
def test_a_signed_header_with_malformed_facts_is_refused(metadata: dict[str, Any]) -> None:
    made = header()
    bad = Header("m", 1, {**made.metadata, **metadata}, 10, "0" * 64, 1 << 20, b"\x00" * 7)
    with pytest.raises(InvalidArtifact) as caught:
        header_facts(bad, "pub")
    assert caught.value.code == "header_facts"
