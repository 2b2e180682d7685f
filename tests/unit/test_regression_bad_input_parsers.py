"""Regression (issue 14, point 4), the parsers alone: text a caller chooses gets a value or a
`ValueError`/`BadRequest`, never an `OverflowError` or `int()`'s own refusal. Over HTTP:
tests/functional/test_regression_bad_input_http.py and tests/system/test_fuzz_inputs.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_maas.audit.query import parse_time
from secure_maas.registry.signature import ServingSignature
from secure_maas.serving.formats.oip import BadRequest, parse_infer
from secure_maas.timeutil import MAX_DURATION, parse_duration, parse_isoformat

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SIGNATURE = ServingSignature.from_dict(
    {
        "inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}],
        "outputs": [{"name": "probs", "shape": [None, 3], "dtype": "float32"}],
    }
)


@pytest.mark.parametrize(
    "text",
    [
        "999999999d",
        "99999999999999999999999d",
        "9" * 5000 + "s",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "\u0661h",  # ARABIC-INDIC DIGIT ONE: `\d` took it, `int()` read it as 1
        "\uff11h",  # FULLWIDTH DIGIT ONE
        "²h",
        "1h\x00",
    ],
)
def test_times_out_of_range_or_not_ascii_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_time(text, now=NOW)
    assert "\x00" not in str(caught.value) and len(str(caught.value)) < 200


def test_the_edges_that_a_datetime_holds_are_accepted() -> None:
    assert parse_time("0001-01-01T00:00:00Z", now=NOW) == datetime(1, 1, 1, tzinfo=UTC)
    assert parse_time("9999-12-31T23:59:59Z", now=NOW).year == 9999
    assert parse_time("36525d", now=NOW) == NOW - MAX_DURATION
    assert parse_time(" 7d\t", now=NOW) == NOW - timedelta(days=7)


@given(st.text(max_size=30))
def test_any_text_is_a_time_or_a_value_error(text: str) -> None:
    try:
        moment = parse_time(text, now=NOW)
    except ValueError:
        return
    assert moment.tzinfo is UTC or moment.utcoffset() == timedelta(0)


@given(st.text(max_size=30))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        delta = parse_duration(text)
    except ValueError:
        return
    assert timedelta(0) <= delta <= MAX_DURATION
    assert text.strip(" \t").rstrip("smhdw").strip(" \t").isascii()


def test_a_stored_timestamp_past_the_calendar_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="years 1 to 9999"):
        parse_isoformat("0001-01-01T00:00:00+14:00")


@pytest.mark.parametrize("header", ["²", "1²", "\xa05", "9" * 5000, "-1", "0x10", "1_0"])
def test_a_header_length_of_other_characters_is_a_bad_request(header: str) -> None:
    body = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1,2,3,4]}]}'
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        parse_infer(body, SIGNATURE, header_length=header)
    assert parse_infer(body, SIGNATURE, header_length=f" {len(body)}\t").rows == 1
