"""The canonical encodings, versions 1 and 2, are frozen: these known-answer vectors must never
change.

If one of these tests fails, an event written by an earlier release no longer verifies. Add a
new encoding version instead of editing version 1, version 2 or these vectors.
"""

import hashlib
import hmac

import pytest

from secure_maas.audit.chain import GENESIS_MAC, compute_mac
from secure_maas.audit.encoding import (
    FIELDS,
    FIELDS_V2,
    VERSION,
    UnknownEncoding,
    canonical,
    canonical_v1,
    canonical_v2,
)

KEY = bytes(range(32))

EVENT_1 = (
    1,
    1795865425957853,
    "req-1",
    "alice",
    "user",
    "model:predict",
    "iris",
    3,
    "allow",
    "rule:7",
    "allowed by rule 7",
    200,
    "10.0.0.1",
    1500,
    4,
    "ab" * 32,
    None,
    "audit-0123456789ab",
)
ENCODED_1 = (
    b"secure-maas/audit/1\n"
    b"i1;i1795865425957853;s5:req-1s5:alices4:users13:model:predicts4:irisi3;s5:allow"
    b"s6:rule:7s17:allowed by rule 7i200;s8:10.0.0.1i1500;i4;"
    b"s64:abababababababababababababababababababababababababababababababab~"
    b"s18:audit-0123456789ab"
)
MAC_1 = "8897bfd74eff741bb59d78f47d2b207924d8682ae6d02cb780fd8c5bdb78ec54"

EVENT_2 = (
    2,
    0,
    None,
    "bob",
    "os",
    "audit:checkpoint",
    None,
    None,
    "deny",
    None,
    "naïve — ünïcode ☃",
    -1,
    None,
    None,
    None,
    None,
    '{"head_seq":1}',
    "audit-0123456789ab",
)
ENCODED_2 = (
    b"secure-maas/audit/1\n"
    b"i2;i0;~s3:bobs2:oss16:audit:checkpoint~~s4:deny~"
    b"s24:na\xc3\xafve \xe2\x80\x94 \xc3\xbcn\xc3\xafcode \xe2\x98\x83i-1;~~~~"
    b's14:{"head_seq":1}s18:audit-0123456789ab'
)
MAC_2 = "f8b2a139ff57778940786a16c0bd6c86be7ca434dec2047a0b57fcdfa306ad43"

# Version 2: the same events, the time as its canonical text (what `at` stores).
EVENT_1_V2 = (1, "2026-11-28T11:30:25.957853Z", *EVENT_1[2:])
ENCODED_1_V2 = (
    b"secure-maas/audit/2\n"
    b"i1;s27:2026-11-28T11:30:25.957853Zs5:req-1s5:alices4:users13:model:predicts4:iris"
    b"i3;s5:allows6:rule:7s17:allowed by rule 7i200;s8:10.0.0.1i1500;i4;"
    b"s64:abababababababababababababababababababababababababababababababab~"
    b"s18:audit-0123456789ab"
)
MAC_1_V2 = "6789ae0bbd24a1ff4a73ec7ba51cd5720c37ad08c48514430590f4f5f3e6d5b3"
EVENT_2_V2 = (2, "1970-01-01T00:00:00.000000Z", *EVENT_2[2:])
ENCODED_2_V2 = (
    b"secure-maas/audit/2\n"
    b"i2;s27:1970-01-01T00:00:00.000000Z~s3:bobs2:oss16:audit:checkpoint~~s4:deny~"
    b"s24:na\xc3\xafve \xe2\x80\x94 \xc3\xbcn\xc3\xafcode \xe2\x98\x83i-1;~~~~"
    b's14:{"head_seq":1}s18:audit-0123456789ab'
)
MAC_2_V2 = "702ff62aedc3b56d279edc0d9d9360456d03eeb79df172ecb787e591d3899bf7"


def test_field_order_is_frozen() -> None:
    assert [name for name, _kind in FIELDS] == [
        "seq",
        "at_us",
        "request_id",
        "actor",
        "actor_kind",
        "action",
        "model",
        "model_version",
        "decision",
        "reason_code",
        "reason",
        "http_status",
        "client",
        "latency_us",
        "rows",
        "body_sha256",
        "detail",
        "key_id",
    ]


def test_known_answer_vectors() -> None:
    assert canonical_v1(EVENT_1) == ENCODED_1
    assert canonical(1, EVENT_2) == ENCODED_2
    first = compute_mac(KEY, ENCODED_1, GENESIS_MAC)
    assert first.hex() == MAC_1
    assert compute_mac(KEY, ENCODED_2, first).hex() == MAC_2


def test_known_answer_vectors_version_2() -> None:
    assert VERSION == 2  # what new events are written with
    assert [name for name, _kind in FIELDS_V2] == ["seq", "at"] + [n for n, _k in FIELDS[2:]]
    assert canonical_v2(EVENT_1_V2) == ENCODED_1_V2
    assert canonical(2, EVENT_2_V2) == ENCODED_2_V2
    first = compute_mac(KEY, ENCODED_1_V2, GENESIS_MAC)
    assert first.hex() == MAC_1_V2
    assert compute_mac(KEY, ENCODED_2_V2, first).hex() == MAC_2_V2


def test_version_2_macs_the_time_text_so_another_spelling_differs() -> None:
    # The same instant written with an offset is another text, so another encoding and MAC.
    other = (1, "2026-11-28T04:30:25.957853-07:00", *EVENT_1[2:])
    assert canonical_v2(other) != ENCODED_1_V2
    with pytest.raises(TypeError):
        canonical_v2(EVENT_1)  # an integer time is not version 2


def test_the_link_is_plain_hmac_sha256_over_encoding_then_previous_mac() -> None:
    expected = hmac.new(KEY, ENCODED_2 + bytes.fromhex(MAC_1), hashlib.sha256).hexdigest()
    assert expected == MAC_2
    assert bytes(32) == GENESIS_MAC


def test_text_lengths_count_utf8_bytes() -> None:
    values = list(EVENT_1)
    values[3] = "é"
    assert b"s2:\xc3\xa9" in canonical_v1(values)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (11, "200"),  # text in an integer field (SQLite stores what it is given)
        (11, True),  # bool is not an integer here
        (11, 200.0),
        (3, 7),  # an integer in a text field
        (3, b"alice"),
    ],
)
def test_wrong_types_are_refused_so_fields_cannot_shift(index: int, value: object) -> None:
    values = list(EVENT_1)
    values[index] = value
    with pytest.raises(TypeError):
        canonical_v1(values)  # type: ignore[arg-type]


def test_type_confusion_would_otherwise_collide() -> None:
    # Why types are checked: "200;s3:a;~" in an integer field followed by two absent fields
    # would give the same bytes as 200, "a;~", absent.
    honest = list(EVENT_1)
    honest[11], honest[12], honest[13] = 200, "a;~", None
    forged = list(EVENT_1)
    forged[11], forged[12], forged[13] = "200;s3:a;~", None, None  # type: ignore[call-overload]
    assert b"i200;s3:a;~~" in canonical_v1(honest)
    with pytest.raises(TypeError):
        canonical_v1(forged)


def test_wrong_arity_and_unknown_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="expected 18 values"):
        canonical_v1(EVENT_1[:-1])
    with pytest.raises(ValueError, match="expected 18 values"):
        canonical_v2(EVENT_1_V2[:-1])
    with pytest.raises(UnknownEncoding):
        canonical(3, EVENT_1)


def test_every_field_changes_the_encoding() -> None:
    base = canonical_v1(EVENT_1)
    for index, (_name, kind) in enumerate(FIELDS):
        values = list(EVENT_1)
        values[index] = 987654 if kind == "i" else "changed"
        assert canonical_v1(values) != base
        values[index] = None
        assert canonical_v1(values) != base or EVENT_1[index] is None


def test_the_memo_changes_nothing_but_speed() -> None:
    memo: dict[str, str] = {}
    for values in (EVENT_1, EVENT_2, EVENT_1, EVENT_2):
        assert canonical_v1(values, memo) == canonical_v1(values)
    assert memo["alice"] == "s5:alice"
    forged = list(EVENT_1)
    forged[11] = "alice"
    with pytest.raises(TypeError):
        canonical_v1(forged, memo)
