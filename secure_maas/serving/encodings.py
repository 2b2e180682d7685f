"""Request bodies sent with a content coding: `Content-Encoding: gzip` or `deflate`.

`tritonclient`'s `request_compression_algorithm="gzip"|"deflate"` and any HTTP client may
compress a predict or infer body. The pipeline reads the body as it came (its deadline, its
limit and its digest are those of the bytes received), then `decode` expands it for the parser,
never past the same limit: a small body that would expand beyond `max_body_bytes` is refused
with 413 once `max_body_bytes + 1` bytes are out, whatever it would have grown to, so a
compression bomb costs at most the limit in memory, never its expanded size.

What is accepted, as Triton does: one coding, `gzip` (RFC 1952; several members in a row, as
`gzip` concatenated files are, are one body) or `deflate` (RFC 9110: the zlib format of RFC
1950, which is what `zlib.compress` and `tritonclient` send), matched without regard to case,
`x-gzip` read as `gzip` (RFC 9110 section 8.4.1.3); `identity` and an empty value mean none.
The header is a list (RFC 9110 section 5.6.1): elements are split at commas and trimmed of
spaces and tabs only, and empty ones are ignored, as a recipient must; `PATTERN` states the
same rule for the OpenAPI document (tests hold the two to each other).
Anything else, another coding (`br`, `compress`, `zstd`) or several stacked (`gzip, gzip`), is
refused with 415 and `Accept-Encoding: gzip, deflate`, Triton's answer and RFC 9110's advice,
before the body is read. A body that is not what its coding says (a bad header or checksum,
cut short, bytes after its end) is a 400.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from enum import StrEnum

from secure_maas.serving.errors import ApiError

CONTENT_ENCODING = "Content-Encoding"
#: The codings a refusal names in its `Accept-Encoding` header.
ACCEPTED = "gzip, deflate"


class Coding(StrEnum):
    GZIP = "gzip"
    DEFLATE = "deflate"


#: zlib's `wbits` for each coding: a gzip wrapper (16 + 15), a zlib wrapper (15).
_WBITS = {Coding.GZIP: 16 + zlib.MAX_WBITS, Coding.DEFLATE: zlib.MAX_WBITS}
_ALIASES = {"gzip": Coding.GZIP, "x-gzip": Coding.GZIP, "deflate": Coding.DEFLATE}
_NONE = frozenset({"", "identity"})
#: What the header may say, as a regular expression that Python and JSON Schema (ECMA) read
#: alike: comma-separated elements, each `identity` or empty, at most one of them a coding
#: above, with spaces or tabs around each, ASCII letters in any case.
_EMPTY = r"[ \t]*(?:[Ii][Dd][Ee][Nn][Tt][Ii][Tt][Yy])?[ \t]*"
_ONE = r"[ \t]*(?:[Gg][Zz][Ii][Pp]|[Xx]-[Gg][Zz][Ii][Pp]|[Dd][Ee][Ff][Ll][Aa][Tt][Ee])[ \t]*"
PATTERN = rf"^(?:{_EMPTY},)*(?:{_EMPTY}|{_ONE})(?:,{_EMPTY})*$"


class EncodingRefused(ApiError):
    """A body refused for its coding; `reason` says why, for the audit log."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        *,
        reason_code: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, reason_code=reason_code, headers=headers)
        self.reason = reason


def content_coding(values: Sequence[str]) -> Coding | None:
    """The coding the request's `Content-Encoding` header(s) name: None for no coding, or a 415
    `EncodingRefused` for a coding or a list of codings this server does not decode."""
    named = [
        part.strip(" \t").lower() if part.isascii() else part
        for value in values
        for part in value.split(",")
    ]
    codings = [name for name in named if name not in _NONE]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _ALIASES:
        return _ALIASES[codings[0]]
    shown = ", ".join(codings)
    shown = shown[:64] if shown.isprintable() else "(unprintable)"
    raise EncodingRefused(
        415,
        f"unsupported Content-Encoding {shown!r}: send the body as it is, or compressed once "
        f"with one of {ACCEPTED}",
        f"Content-Encoding {shown!r}",
        reason_code="unsupported_encoding",
        headers={"Accept-Encoding": ACCEPTED},
    )


def decode(body: bytes, coding: Coding | None, limit: int) -> bytes:
    """`body` decoded from `coding` (as it is for None): a 413 `EncodingRefused` once the result
    would pass `limit` bytes (decoding stops at `limit + 1`), a 400 one if `body` is not valid
    data of its coding. Memory used is bounded by `limit`, not by what the body expands to."""
    if coding is None:
        return body
    pieces: list[bytes] = []
    size = 0
    pending = body
    inflater = zlib.decompressobj(_WBITS[coding])
    try:
        while True:
            # Never 0: zlib reads a max_length of 0 as "no limit".
            piece = inflater.decompress(pending, limit + 1 - size)
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                raise _too_large(coding, limit)
            if inflater.eof:
                pending = inflater.unused_data
                if not pending:
                    return b"".join(pieces)
                if coding is not Coding.GZIP:
                    raise _malformed(coding, f"{len(pending)} byte(s) after the end of the stream")
                inflater = zlib.decompressobj(_WBITS[coding])  # the next gzip member
                continue
            pending = inflater.unconsumed_tail
            if not pending and not piece:  # all input taken, nothing more out, no end
                raise _malformed(coding, "the stream ends before its end marker")
    except zlib.error as exc:
        raise _malformed(coding, str(exc)) from None


def _malformed(coding: Coding, detail: str) -> EncodingRefused:
    return EncodingRefused(
        400,
        f"request body is not valid {coding} data (Content-Encoding: {coding})",
        f"body not valid {coding}: {detail}",
        reason_code="bad_encoding",
    )


def _too_large(coding: Coding, limit: int) -> EncodingRefused:
    return EncodingRefused(
        413,
        f"request body too large: the limit is {limit} bytes, decoded (Content-Encoding: {coding})",
        f"{coding} body decodes to over {limit} bytes",
        reason_code="too_large",
    )
