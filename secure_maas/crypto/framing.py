"""The byte layout of a sealed artifact, without any cryptography (see `envelope` for both).

This module reads and writes the frame around the ciphertext: magic, length-prefixed canonical
JSON blocks, and the arithmetic that says how long the body must be. Reading checks every length
the file claims against the file's real size before anything is allocated or decrypted, and
accepts each block only in its one canonical encoding.

Two formats are read: v2 (`MAGIC`, what `seal` writes), whose header also holds the data key's
commitment, and v1 (`MAGIC_V1`), whose header does not; `Header.format` says which a file is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mmap
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from secure_maas.errors import SecureMaasError

MAGIC_V1 = b"SMAAS\x00v1"
MAGIC = b"SMAAS\x00v2"
FORMAT_V1 = 1
FORMAT_VERSION = 2
MAGICS = {FORMAT_V1: MAGIC_V1, FORMAT_VERSION: MAGIC}
COMMITMENT_BYTES = 32
BODY_SUITE = "AES-256-GCM-STREAM"
KEM_X25519 = "HPKE(DHKEM-X25519,HKDF-SHA256,AES-256-GCM)"
KEM_MLKEM768_X25519 = "HPKE(MLKEM768-X25519,HKDF-SHA256,AES-256-GCM)"
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
MAX_CHUNK_SIZE = 64 << 20
COPY_BYTES = 1 << 20
MAX_BLOCK = {"header": 1 << 20, "keyblock": 64 << 10, "trailer": 4 << 10}
_MAX_NAME = 256
_MAX_CHUNKS = 1 << 32
_HEADER_FIELDS_V1 = frozenset(
    {"body_suite", "chunk_size", "format", "metadata", "model", "nonce_prefix"}
    | {"plaintext_length", "plaintext_sha256", "version"}
)
_HEADER_FIELDS = {
    FORMAT_V1: _HEADER_FIELDS_V1,
    FORMAT_VERSION: _HEADER_FIELDS_V1 | {"key_commitment"},
}
U32 = struct.Struct(">I")
T = TypeVar("T")


class InvalidArtifact(SecureMaasError):
    """An artifact was refused. str() is deliberately generic: the specific `reason` (and a
    short machine `code`) are for the log and the audit trail, never for the caller."""

    MESSAGE = "invalid or tampered artifact"

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(self.MESSAGE)
        self.code = code
        self.reason = reason


class Source(Protocol):
    """A seekable binary reader: an open file or a BytesIO."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...
    def seekable(self) -> bool: ...


class Sink(Protocol):
    """A blocking binary writer; it need not be seekable."""

    def write(self, data: bytes | memoryview, /) -> int | None: ...


@dataclass(frozen=True)
class Header:
    """The identity of an artifact; authenticated by the chunk AAD and the signature.

    `key_commitment` (v2) binds the header, and so the signature, to one data key: AES-GCM
    alone does not, and the keyblock that carries the key is outside the signature. A v1
    header has none (None), and its plaintext digest stands in for it on every open.
    """

    model: str
    version: int
    metadata: dict[str, Any]
    plaintext_length: int
    plaintext_sha256: str
    chunk_size: int
    nonce_prefix: bytes = field(repr=False)
    key_commitment: bytes | None = field(default=None, repr=False)

    @property
    def format(self) -> int:
        """2 for a header that commits to its data key, 1 for a legacy one."""
        return FORMAT_V1 if self.key_commitment is None else FORMAT_VERSION

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.plaintext_length // self.chunk_size))

    @property
    def body_length(self) -> int:
        return self.plaintext_length + TAG_BYTES * self.chunk_count

    def as_dict(self) -> dict[str, Any]:
        fields = {
            "body_suite": BODY_SUITE,
            "chunk_size": self.chunk_size,
            "format": self.format,
            "metadata": self.metadata,
            "model": self.model,
            "nonce_prefix": b64(self.nonce_prefix),
            "plaintext_length": self.plaintext_length,
            "plaintext_sha256": self.plaintext_sha256,
            "version": self.version,
        }
        if self.key_commitment is not None:
            fields["key_commitment"] = b64(self.key_commitment)
        return fields


@dataclass(frozen=True)
class Prelude:
    """Everything around the body, read and checked before any key is used. After
    `read_prelude` the source is positioned at the first chunk."""

    header: Header
    header_bytes: bytes = field(repr=False)
    keyblock_bytes: bytes = field(repr=False)
    kem_suite: str
    key_id: str
    wrapped: bytes = field(repr=False)
    publisher_id: str
    signature: bytes
    trailer_length: int
    size: int

    @property
    def header_digest(self) -> bytes:
        return hashlib.sha256(self.header_bytes).digest()


def read_prelude(src: Source, max_plaintext: int | None) -> Prelude:
    """Read magic, header and keyblock, then seek to the trailer and back, so that a length
    claim the file cannot back (a truncated file, a header claiming 100 GB, a block longer
    than the file) fails here, before anything of that length is allocated."""
    if not src.seekable():
        raise ValueError("artifacts are read from seekable sources (files, BytesIO)")
    start = src.tell()
    size = src.seek(0, 2) - start
    src.seek(start)
    magic = read_bytes(src, len(MAGIC), "magic") if size >= len(MAGIC) else b""
    formats = [number for number, known in MAGICS.items() if known == magic]
    if not formats:
        raise InvalidArtifact("bad_magic", "bad magic: not a secure-maas v1 or v2 artifact")
    end = start + size
    header_bytes = _read_block(src, "header", end)
    header = _parse_header(header_bytes, formats[0])
    keyblock_bytes = _read_block(src, "keyblock", end)
    kem_suite, key_id, wrapped = _parse_keyblock(keyblock_bytes)
    length, body = header.plaintext_length, header.body_length
    if max_plaintext is not None and length > max_plaintext:
        reason = f"plaintext of {length} bytes over the {max_plaintext} byte limit"
        raise InvalidArtifact("too_large", reason)
    body_start = src.tell()
    remaining = size - (body_start - start)
    if body + 4 > remaining:
        reason = f"plaintext length claim exceeds file size ({body} + 4 bytes, {remaining} left)"
        raise InvalidArtifact("size_mismatch", reason)
    src.seek(body_start + body)
    trailer_length = U32.unpack(read_bytes(src, 4, "trailer length"))[0]
    extra = remaining - body - 4 - trailer_length
    if extra < 0:
        left = remaining - body - 4
        reason = f"trailer claims {trailer_length} bytes, {left} left: truncated chunk or trailer"
        raise InvalidArtifact("truncated", reason)
    if extra > 0:
        raise InvalidArtifact("trailing_bytes", f"{extra} extra bytes after the trailer")
    if trailer_length > MAX_BLOCK["trailer"]:
        raise InvalidArtifact("malformed_trailer", f"trailer of {trailer_length} bytes")
    publisher_id, signature = _parse_trailer(read_bytes(src, trailer_length, "trailer"))
    src.seek(body_start)
    return Prelude(
        header,
        header_bytes,
        keyblock_bytes,
        kem_suite,
        key_id,
        wrapped,
        publisher_id,
        signature,
        trailer_length,
        size,
    )


def encode_block(value: dict[str, Any]) -> bytes:
    """A block with its u32 length prefix."""
    data = canonical(value)
    return U32.pack(len(data)) + data


def canonical(value: object) -> bytes:
    """The one encoding of a JSON value this format accepts (raises ValueError/TypeError)."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def name_ok(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= _MAX_NAME


def version_ok(version: object) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and 0 <= version < 1 << 63


def chunk_size_ok(size: object) -> bool:
    return isinstance(size, int) and not isinstance(size, bool) and 0 < size <= MAX_CHUNK_SIZE


def read_bytes(src: Source, length: int, what: str) -> bytes:
    buffer = bytearray(length)
    with memoryview(buffer) as view:
        read_exact(src, view, what)
    return bytes(buffer)


def read_exact(src: Source, view: memoryview, what: str) -> None:
    filled = 0
    while filled < len(view):
        got = src.readinto(view[filled:])
        if not got:
            raise InvalidArtifact("truncated", f"{what} truncated")
        filled += got


def write_all(out: Sink, data: bytes | memoryview) -> None:
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            count = out.write(view[written:])
            if count is None:
                raise BlockingIOError("artifact sinks must be blocking")
            written += count


def wipe(buffer: bytearray | mmap.mmap) -> None:
    """Zero `buffer` in place, a megabyte at a time (no second full-size allocation)."""
    zeros = bytes(min(len(buffer), COPY_BYTES))
    with memoryview(buffer) as view:
        for start in range(0, len(buffer), COPY_BYTES):
            piece = view[start : start + COPY_BYTES]
            piece[:] = zeros[: len(piece)]


def _parse_header(data: bytes, format_version: int) -> Header:
    """The header of a `format_version` artifact (the magic's): the header must say the same."""
    fields = _parse_block(data, "header")
    code = "malformed_header"
    if (
        _get(fields, "format", int, code) != format_version
        or fields.get("body_suite") != BODY_SUITE
    ):
        reason = f"unsupported format or body suite (the magic says v{format_version})"
        raise InvalidArtifact("unsupported_format", reason)
    if set(fields) != _HEADER_FIELDS[format_version]:
        reason = f"header fields {sorted(fields)[:20]} are not the v{format_version} set"
        raise InvalidArtifact(code, reason)
    commitment = None
    if format_version != FORMAT_V1:
        commitment = _unb64(fields["key_commitment"], code, "key_commitment")
        if len(commitment) != COMMITMENT_BYTES:
            raise InvalidArtifact(code, "key_commitment is not 32 bytes")
    digest = _get(fields, "plaintext_sha256", str, code)
    if len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise InvalidArtifact(code, "plaintext_sha256 is not 64 lowercase hex digits")
    header = Header(
        model=_get(fields, "model", str, code),
        version=_get(fields, "version", int, code),
        metadata=_get(fields, "metadata", dict, code),
        plaintext_length=_get(fields, "plaintext_length", int, code),
        plaintext_sha256=digest,
        chunk_size=_get(fields, "chunk_size", int, code),
        nonce_prefix=_unb64(fields["nonce_prefix"], code, "nonce_prefix"),
        key_commitment=commitment,
    )
    if not (name_ok(header.model) and version_ok(header.version)):
        raise InvalidArtifact(code, "model name or version out of range")
    if not chunk_size_ok(header.chunk_size) or len(header.nonce_prefix) != NONCE_PREFIX_BYTES:
        raise InvalidArtifact(code, "chunk size or nonce prefix out of range")
    if header.plaintext_length < 0 or header.chunk_count > _MAX_CHUNKS:
        raise InvalidArtifact(code, "plaintext length out of range")
    return header


def _parse_keyblock(data: bytes) -> tuple[str, str, bytes]:
    fields = _parse_block(data, "keyblock")
    code = "malformed_keyblock"
    if set(fields) != {"kem_suite", "key_id", "wrapped"}:
        raise InvalidArtifact(code, f"keyblock fields {sorted(fields)[:20]} are not the v1 set")
    suite = _get(fields, "kem_suite", str, code)
    if suite not in (KEM_X25519, KEM_MLKEM768_X25519):
        raise InvalidArtifact("unsupported_format", f"unknown KEM suite {suite[:80]!r}")
    key_id = _get(fields, "key_id", str, code)
    if not name_ok(key_id):
        raise InvalidArtifact(code, "key id out of range")
    return suite, key_id, _unb64(fields["wrapped"], code, "wrapped key")


def _parse_trailer(data: bytes) -> tuple[str, bytes]:
    fields = _parse_block(data, "trailer")
    code = "malformed_trailer"
    if set(fields) != {"publisher_key_id", "signature"}:
        raise InvalidArtifact(code, f"trailer fields {sorted(fields)[:20]} are not the v1 set")
    publisher_id = _get(fields, "publisher_key_id", str, code)
    if not name_ok(publisher_id):
        raise InvalidArtifact(code, "publisher key id out of range")
    return publisher_id, _unb64(fields["signature"], code, "signature")


def _parse_block(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object in exactly its canonical encoding (so no duplicate keys, no NaN)."""
    try:
        value = json.loads(data.decode("utf-8"))
        encoded = canonical(value)
    except (ValueError, RecursionError) as exc:
        raise InvalidArtifact(f"malformed_{what}", f"{what} is not UTF-8 JSON") from exc
    if not isinstance(value, dict) or encoded != data:
        raise InvalidArtifact(f"malformed_{what}", f"{what} is not a canonical JSON object")
    return value


def _read_block(src: Source, what: str, end: int) -> bytes:
    """A length-prefixed block that ends before `end` (the source's end): a length the file
    cannot hold is refused as truncated before a buffer of that length is allocated."""
    length = U32.unpack(read_bytes(src, 4, f"{what} length"))[0]
    if length > MAX_BLOCK[what]:
        raise InvalidArtifact(f"malformed_{what}", f"{what} of {length} bytes over the limit")
    if length > end - src.tell():
        raise InvalidArtifact("truncated", f"{what} truncated")
    return read_bytes(src, length, what)


def _get(fields: dict[str, Any], name: str, kind: type[T], code: str) -> T:
    value = fields.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArtifact(code, f"{name} is missing or not {kind.__name__}")
    return value


def _unb64(value: object, code: str, what: str) -> bytes:
    if isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
        else:
            if b64(data) == value:
                return data
    raise InvalidArtifact(code, f"{what} is not canonical base64")
