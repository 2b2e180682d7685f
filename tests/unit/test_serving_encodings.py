"""`Content-Encoding`: the parser (`encodings.content_coding`) and the pattern the OpenAPI
document states (`encodings.PATTERN`) accept exactly the same header values.

schemathesis found `Content-Encoding: ,` (a list of empty elements, which RFC 9110 says a
recipient must accept) served where the document's enum said it was not; both now follow the
list grammar, and Hypothesis draws values from the pieces that matter (codings, `identity`,
commas, spaces, tabs, other whitespace, other letters, non-ASCII case variants).
"""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from secure_maas.serving.encodings import PATTERN, Coding, EncodingRefused, content_coding

PIECES = st.sampled_from(
    ["gzip", "GZIP", "x-gzip", "deflate", "Deflate", "identity", "IDENTITY", "br", "zstd",
     ",", " ", "\t", "\xa0", "\n", "x", "İ", "gz", "ip", ""]
)  # fmt: skip


def accepted(value: str) -> bool:
    try:
        content_coding([value])
    except EncodingRefused:
        return False
    return True


@given(st.lists(PIECES, max_size=8).map("".join))
@example(",")
@example(" , identity ,\tGZip ,")
@example("gzip, gzip")
@example("gzip\xa0")
def test_the_pattern_is_the_parser(value: str) -> None:
    assert accepted(value) == bool(re.fullmatch(PATTERN, value)), repr(value)


def test_what_each_value_means() -> None:
    assert content_coding([","]) is None
    assert content_coding(["identity", ""]) is None
    assert content_coding([" X-GZIP ,"]) is Coding.GZIP
    assert content_coding(["identity,deflate"]) is Coding.DEFLATE
    for refused in ("gzip, deflate", "br", "gzip\xa0", "\u0130dentity"):
        assert not accepted(refused), refused
