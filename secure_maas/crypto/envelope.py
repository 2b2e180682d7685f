"""Sealed model artifacts: encrypted to the service, signed by a publisher, bound to their name.

An artifact is one file, read and written in a single streaming pass. This is format v2, the
one `seal` writes; v1 (below) is still read.

    offset  size        field
    0       8           MAGIC  b"SMAAS\\x00v2"
    8       4           u32 BE  len(HEADER)
    12      len         HEADER    canonical JSON (below); HEADER_DIGEST = SHA-256(HEADER bytes)
    ..      4           u32 BE  len(KEYBLOCK)
    ..      len         KEYBLOCK  canonical JSON {"kem_suite", "key_id", "wrapped"}
    ..      n*16 + L    CHUNKS    n = max(1, ceil(L / chunk_size)) AES-256-GCM ciphertexts,
                                  each chunk's ciphertext followed by its 16-byte tag
    ..      4           u32 BE  len(TRAILER)
    ..      len         TRAILER   canonical JSON {"publisher_key_id", "signature"}; end of file

Canonical JSON is `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)` in
UTF-8, and a block in any other encoding is refused, so one artifact has exactly one byte form.
Binary values are standard padded base64. HEADER holds `format` (2), `body_suite`
("AES-256-GCM-STREAM"), `chunk_size`, `plaintext_length` (L), `plaintext_sha256` (hex),
`nonce_prefix` (7 random bytes), `key_commitment` (32 bytes, below), `model`, `version` and
the caller's `metadata` object.

Keys: a fresh random 32-byte DATA_KEY per artifact. From it, HKDF-SHA256 (RFC 5869, no salt)
derives BODY_KEY (info b"secure-maas/v2/body-key", 32 bytes), the AES-256-GCM key of the body,
and KEY_COMMITMENT (info b"secure-maas/v2/key-commitment", 32 bytes), stored in the header.

Body: chunk i is sealed with AES-256-GCM under BODY_KEY with
nonce = nonce_prefix(7) || i (u32 BE) || last (1 byte: 1 on the final chunk, else 0) and
AAD = HEADER_DIGEST: the STREAM construction, so chunks cannot be reordered, dropped, moved to
another artifact or cut short, and the header cannot change under them.

KEYBLOCK: DATA_KEY, wrapped by HPKE (RFC 9180, base mode, single shot) to the service key
`key_id` with info = b"secure-maas/v2/key" || HEADER_DIGEST; `kem_suite` names the suite,
"HPKE(DHKEM-X25519,HKDF-SHA256,AES-256-GCM)", or "HPKE(MLKEM768-X25519,HKDF-SHA256,AES-256-GCM)"
for a post-quantum service key. TRAILER: an Ed25519 signature by `publisher_key_id` over
b"secure-maas/v2/signature" || HEADER_DIGEST || CIPHERTEXT_DIGEST || publisher_key_id (UTF-8),
where CIPHERTEXT_DIGEST is BLAKE3-256 over all chunk bytes in order. BLAKE3 rather than
SHA-256 because this hash is on the hot path of every model load: at 5-6 GB/s on one core it
costs a fraction of the decryption, where SHA-256 (about 1.7 GB/s here) halved the throughput.

The keyblock is deliberately outside the signature: `rewrap` replaces it after a service key
rotation without the publisher's key and without touching the body. AES-GCM does not commit to
its key (a body can be crafted that authenticates under two keys, to two plaintexts), so the
signed header commits to the data key instead: every unwrap, before a byte of the body is read,
recomputes KEY_COMMITMENT from the unwrapped key and refuses a mismatch (`key_commitment`). A
foreign keyblock therefore gains nobody anything, not even the publisher who made the body:
HPKE's info binds it to this header, and the header admits exactly one data key.

Format v1 (MAGIC b"SMAAS\\x00v1", header `format` 1 without `key_commitment`, labels with "v1"
instead of "v2", and DATA_KEY itself as the body key) is still opened, for artifacts sealed
before v2. A v1 header does not commit to the key, so every open of a v1 artifact also checks
the plaintext against the header's `plaintext_sha256` before anything is returned (about half
the throughput: the price of the legacy format). `rewrap` keeps an artifact's format (a new
header needs the publisher's signature); `reseal` moves one to v2 with a publisher's key.

Every failure raises `InvalidArtifact`, whose message is fixed; the reason is on `exc.reason`
and `exc.code`, for the log and the audit trail only. The frame itself (lengths, canonical
blocks, size checks) lives in `framing`; this module holds the cryptography and the recipes.
The known-answer vectors in tests/unit/vectors pin every byte of this layout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mmap
import secrets
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secure_maas.crypto import plainmem
from secure_maas.crypto.framing import (
    COPY_BYTES,
    FORMAT_V1,
    FORMAT_VERSION,
    KEM_MLKEM768_X25519,
    KEM_X25519,
    MAGIC,
    MAGICS,
    MAX_BLOCK,
    MAX_CHUNK_SIZE,
    NONCE_PREFIX_BYTES,
    TAG_BYTES,
    U32,
    Header,
    InvalidArtifact,
    Prelude,
    Sink,
    Source,
    b64,
    canonical,
    chunk_size_ok,
    encode_block,
    name_ok,
    read_exact,
    read_prelude,
    version_ok,
    wipe,
    write_all,
)
from secure_maas.crypto.keys import (
    Algorithm,
    InvalidKey,
    MlKemX25519Private,
    MlKemX25519Public,
    PrivateKey,
    PublicKey,
)
from secure_maas.crypto.readahead import read_ahead
from secure_maas.crypto.signing import BadSignature, sign, verify

DEFAULT_CHUNK_SIZE = 1 << 20
DATA_KEY_BYTES = 32
KEY_INFO_LABEL = {FORMAT_V1: b"secure-maas/v1/key", FORMAT_VERSION: b"secure-maas/v2/key"}
SIGNATURE_LABEL = {
    FORMAT_V1: b"secure-maas/v1/signature",
    FORMAT_VERSION: b"secure-maas/v2/signature",
}
BODY_KEY_LABEL = b"secure-maas/v2/body-key"
COMMITMENT_LABEL = b"secure-maas/v2/key-commitment"
_KEMS = {
    Algorithm.X25519: (KEM_X25519, hpke.KEM.X25519),
    Algorithm.MLKEM768_X25519: (KEM_MLKEM768_X25519, hpke.KEM.MLKEM768_X25519),
}

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Header",
    "Inspection",
    "InvalidArtifact",
    "Opened",
    "SealInfo",
    "Sink",
    "Source",
    "Verified",
    "inspect_artifact",
    "open_artifact",
    "reseal",
    "rewrap",
    "seal",
    "verify_artifact",
]


@dataclass(frozen=True)
class SealInfo:
    """What `seal` wrote; the digests are what a registry row records."""

    header: Header
    plaintext_sha256: str
    ciphertext_digest: str
    size: int


@dataclass(frozen=True)
class Inspection:
    """What an artifact says about itself, read without keys and therefore not yet trusted."""

    header: Header
    kem_suite: str
    service_key_id: str
    publisher_key_id: str
    size: int


@dataclass(frozen=True)
class Verified:
    """An artifact whose framing, key, every chunk and the signature checked out."""

    header: Header
    ciphertext_digest: str
    service_key_id: str
    publisher_key_id: str


@dataclass(frozen=True)
class Opened(Verified):
    """A verified artifact and its plaintext, in memory of its own (`plainmem`): `wipe()` it
    once the model is loaded. After that `plaintext` raises ValueError."""

    memory: mmap.mmap = field(repr=False, compare=False)

    @property
    def plaintext(self) -> memoryview:
        """The plaintext, read-only; each access is a new view, to be let go before `wipe()`."""
        return memoryview(self.memory)[: self.header.plaintext_length].toreadonly()

    def wipe(self) -> None:
        plainmem.release(self.memory)


def seal(
    plaintext: bytes | bytearray | memoryview,
    out: Sink,
    *,
    model: str,
    version: int,
    metadata: Mapping[str, Any],
    recipient: PublicKey,
    recipient_key_id: str,
    signer: PrivateKey,
    signer_key_id: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> SealInfo:
    """Encrypt `plaintext` to the service key `recipient`, sign it, and stream it into `out`.

    Memory stays at the caller's plaintext plus one chunk. Bad arguments (metadata that is not
    a JSON object, a name out of range) raise ValueError; keys of the wrong kind, InvalidKey.
    """
    return _seal(
        plaintext,
        out,
        model=model,
        version=version,
        metadata=metadata,
        recipient=recipient,
        recipient_key_id=recipient_key_id,
        signer=signer,
        signer_key_id=signer_key_id,
        chunk_size=chunk_size,
        data_key=secrets.token_bytes(DATA_KEY_BYTES),
        nonce_prefix=secrets.token_bytes(NONCE_PREFIX_BYTES),
    )


def open_artifact(
    src: Source,
    *,
    private_keys: Mapping[str, PrivateKey],
    trusted_publishers: Mapping[str, PublicKey],
    expect_model: str | None,
    expect_version: int | None,
    max_plaintext: int | None = None,
) -> Opened:
    """Check and decrypt an artifact in one pass into one buffer of exactly its plaintext size.

    Before anything is allocated the claimed size is checked against the file (and against
    `max_plaintext`, the caller's memory budget), the name and version against what the caller
    asked for, the publisher against the trusted set, and the unwrapped data key against the
    header's commitment. The signature is checked last, over the ciphertext digest computed on
    the way; on any failure the buffer is unmapped before the exception leaves, because AES-GCM
    writes a chunk's plaintext before it knows the tag is bad. A v1 artifact, whose header
    does not commit to its key, also has its plaintext digest checked before it is returned.
    """
    prelude = read_prelude(src, max_plaintext)
    publisher = check_identity(prelude, trusted_publishers, expect_model, expect_version)
    aead = AESGCM(_body_key(prelude.header, _unwrap(prelude, private_keys)))
    legacy = prelude.header.format == FORMAT_V1
    plaintext_hash = hashlib.sha256() if legacy else None
    memory = plainmem.allocate(prelude.header.plaintext_length)
    done = False
    try:
        with memoryview(memory) as out:
            digest = _decrypt_body(
                src,
                prelude,
                aead,
                out,
                reuse_out=False,
                observe=None if plaintext_hash is None else plaintext_hash.update,
            )
        check_signature(prelude, publisher, digest)
        if plaintext_hash is not None:
            _check_plaintext(prelude, plaintext_hash.hexdigest())
        done = True
    finally:
        if not done:
            plainmem.release(memory)
    return Opened(prelude.header, digest.hex(), prelude.key_id, prelude.publisher_id, memory)


def verify_artifact(
    src: Source,
    *,
    private_keys: Mapping[str, PrivateKey],
    trusted_publishers: Mapping[str, PublicKey],
    expect_model: str | None,
    expect_version: int | None,
) -> Verified:
    """Every check of `open_artifact` plus the header's plaintext digest, in one chunk of memory.

    For publish-time checks, `models verify` and audits: it decrypts into a scratch chunk that
    is wiped afterwards. (`open_artifact` skips the plaintext digest of a v2 artifact: the
    signature binds the header to the ciphertext and the header to the data key, and a second
    hash would halve its throughput.)
    """
    prelude = read_prelude(src, None)
    publisher = check_identity(prelude, trusted_publishers, expect_model, expect_version)
    aead = AESGCM(_body_key(prelude.header, _unwrap(prelude, private_keys)))
    plaintext_hash = hashlib.sha256()
    scratch = bytearray(min(prelude.header.chunk_size, prelude.header.plaintext_length))
    try:
        with memoryview(scratch) as out:
            digest = _decrypt_body(
                src, prelude, aead, out, reuse_out=True, observe=plaintext_hash.update
            )
    finally:
        wipe(scratch)
    check_signature(prelude, publisher, digest)
    _check_plaintext(prelude, plaintext_hash.hexdigest())
    return Verified(prelude.header, digest.hex(), prelude.key_id, prelude.publisher_id)


def inspect_artifact(src: Source) -> Inspection:
    """What an artifact claims (header, service key, publisher) for listings, without keys.

    Only the framing is checked (lengths against the file size, canonical blocks); nothing in
    the answer is authenticated until `verify_artifact` or `open_artifact` has run.
    """
    prelude = read_prelude(src, None)
    return Inspection(
        prelude.header, prelude.kem_suite, prelude.key_id, prelude.publisher_id, prelude.size
    )


def rewrap(
    src: Source,
    out: Sink,
    *,
    old_private_keys: Mapping[str, PrivateKey],
    new_recipient: PublicKey,
    new_key_id: str,
) -> Inspection:
    """Seal an artifact's data key to a new service key, copying all else byte for byte.

    This is a service key rotation: it needs neither the publisher's key nor a re-encryption,
    and the signature stays valid because the keyblock is outside it. The format stays the
    artifact's own (a v1 header cannot gain a key commitment without a new signature: that is
    `reseal`). The data key is checked against a v2 header's commitment, but the body is not
    vouched for here (run `verify_artifact` for that): a tampered artifact stays tampered.
    """
    prelude = read_prelude(src, None)
    header = prelude.header
    keyblock = _keyblock(
        _unwrap(prelude, old_private_keys),
        prelude.header_digest,
        new_recipient,
        new_key_id,
        header.format,
    )
    write_all(out, MAGICS[header.format] + U32.pack(len(prelude.header_bytes)))
    write_all(out, prelude.header_bytes)
    write_all(out, keyblock)
    left = header.body_length + 4 + prelude.trailer_length
    buffer = bytearray(min(left, COPY_BYTES))
    with memoryview(buffer) as view:
        while left:
            piece = view[: min(left, COPY_BYTES)]
            read_exact(src, piece, "body")
            write_all(out, piece)
            left -= len(piece)
    size = prelude.size - len(prelude.keyblock_bytes) - 4 + len(keyblock)
    kem_suite = _KEMS[new_recipient.algorithm][0]
    return Inspection(prelude.header, kem_suite, new_key_id, prelude.publisher_id, size)


def reseal(
    src: Source,
    out: Sink,
    *,
    private_keys: Mapping[str, PrivateKey],
    trusted_publishers: Mapping[str, PublicKey],
    expect_model: str | None,
    expect_version: int | None,
    recipient: PublicKey,
    recipient_key_id: str,
    signer: PrivateKey,
    signer_key_id: str,
) -> SealInfo:
    """Open an artifact (any format) with every check and seal its plaintext anew, in the
    current format, with the same name, version, metadata and chunk size: how a v1 artifact
    gains a key commitment. The header changes, so it takes a publisher's key and gives a new
    signature and ciphertext digest (the registry row must follow). The plaintext is in memory
    for the duration, as for any open, and unmapped before this returns.
    """
    opened = open_artifact(
        src,
        private_keys=private_keys,
        trusted_publishers=trusted_publishers,
        expect_model=expect_model,
        expect_version=expect_version,
    )
    header = opened.header
    try:
        with opened.plaintext as plaintext:
            return seal(
                plaintext,
                out,
                model=header.model,
                version=header.version,
                metadata=header.metadata,
                recipient=recipient,
                recipient_key_id=recipient_key_id,
                signer=signer,
                signer_key_id=signer_key_id,
                chunk_size=header.chunk_size,
            )
    finally:
        opened.wipe()


def _seal(
    plaintext: bytes | bytearray | memoryview,
    out: Sink,
    *,
    model: str,
    version: int,
    metadata: Mapping[str, Any],
    recipient: PublicKey,
    recipient_key_id: str,
    signer: PrivateKey,
    signer_key_id: str,
    chunk_size: int,
    data_key: bytes,
    nonce_prefix: bytes,
    format_version: int = FORMAT_VERSION,
) -> SealInfo:
    """`seal` with its randomness passed in; only known-answer tests call it directly, and
    only they write `format_version` 1 (to pin the legacy layout that is still opened)."""
    if not (name_ok(model) and version_ok(version) and chunk_size_ok(chunk_size)):
        raise ValueError(
            f"need a model name of 1-256 chars, a version >= 0, a chunk size 1..{MAX_CHUNK_SIZE}"
        )
    if not (name_ok(recipient_key_id) and name_ok(signer_key_id)):
        raise ValueError("key ids must be strings of 1-256 characters")
    if signer.algorithm is not Algorithm.ED25519:
        raise InvalidKey(f"artifacts are signed with ed25519 keys, not {signer.algorithm}")
    try:
        plain_metadata = json.loads(canonical(dict(metadata)))
    except (TypeError, ValueError) as exc:
        raise ValueError("metadata must be a JSON object (str keys, finite numbers)") from exc
    if format_version not in MAGICS:
        raise ValueError(f"unknown artifact format {format_version}")
    commitment = None if format_version == FORMAT_V1 else _commitment(data_key)
    with memoryview(plaintext) as raw, raw.cast("B") as flat:
        digest = hashlib.sha256(flat).hexdigest()
        header = Header(
            model,
            version,
            plain_metadata,
            len(flat),
            digest,
            chunk_size,
            nonce_prefix,
            commitment,
        )
        header_block = encode_block(header.as_dict())
        if len(header_block) - 4 > MAX_BLOCK["header"]:
            raise ValueError("metadata too large for an artifact header")
        header_digest = hashlib.sha256(header_block[4:]).digest()
        keyblock = _keyblock(data_key, header_digest, recipient, recipient_key_id, header.format)
        write_all(out, MAGICS[header.format] + header_block)
        write_all(out, keyblock)
        aead = AESGCM(_body_key(header, data_key))
        ciphertext_digest = _encrypt_body(flat, out, header, aead, header_digest)
    message = _signed_message(header.format, header_digest, ciphertext_digest, signer_key_id)
    trailer = encode_block(
        {"publisher_key_id": signer_key_id, "signature": b64(sign(signer, message))}
    )
    write_all(out, trailer)
    size = len(MAGIC) + len(header_block) + len(keyblock) + header.body_length + len(trailer)
    return SealInfo(header, digest, ciphertext_digest.hex(), size)


def _chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """nonce_prefix(7) || index (u32 BE) || last-chunk flag (1 byte): the STREAM nonce."""
    return prefix + struct.pack(">IB", index, last)


def _signed_message(
    format_version: int, header_digest: bytes, ciphertext_digest: bytes, publisher_id: str
) -> bytes:
    label = SIGNATURE_LABEL[format_version]
    return label + header_digest + ciphertext_digest + publisher_id.encode("utf-8")


def _derive(data_key: bytes, label: bytes) -> bytes:
    """HKDF-SHA256 (no salt) of the data key: 32 bytes for the purpose `label` names."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(data_key)


def _commitment(data_key: bytes) -> bytes:
    """KEY_COMMITMENT: collision resistant in the data key (HMAC-SHA256 is, on keys of one
    length), so no two data keys share one and a header admits a single key."""
    return _derive(data_key, COMMITMENT_LABEL)


def _body_key(header: Header, data_key: bytes) -> bytes:
    """The body's AES-256-GCM key: derived (v2), so that the committed value and the cipher
    key are never the same secret; the data key itself in v1."""
    return data_key if header.format == FORMAT_V1 else _derive(data_key, BODY_KEY_LABEL)


def _encrypt_body(
    flat: memoryview, out: Sink, header: Header, aead: AESGCM, header_digest: bytes
) -> bytes:
    digest = blake3(max_threads=1)
    size, count = header.chunk_size, header.chunk_count
    buffer = bytearray(min(size, header.plaintext_length) + TAG_BYTES)
    with memoryview(buffer) as view:
        for index in range(count):
            chunk = flat[index * size : (index + 1) * size]
            sealed = view[: len(chunk) + TAG_BYTES]
            nonce = _chunk_nonce(header.nonce_prefix, index, index == count - 1)
            aead.encrypt_into(nonce, chunk, header_digest, sealed)
            digest.update(sealed)
            write_all(out, sealed)
    return digest.digest()


def _decrypt_body(
    src: Source,
    prelude: Prelude,
    aead: AESGCM,
    out: memoryview,
    *,
    reuse_out: bool,
    observe: Callable[[memoryview], None] | None,
) -> bytes:
    """Decrypt every chunk into its place in `out` (or, with `reuse_out`, into its start each
    time) and return CIPHERTEXT_DIGEST. The hot loop of `open_artifact`: the chunks are read
    and hashed on a second thread (`readahead`) while this one decrypts, and nothing is
    allocated per chunk but the 12-byte nonce."""
    header, header_digest = prelude.header, prelude.header_digest
    digest = blake3(max_threads=1)
    size, count, total = header.chunk_size, header.chunk_count, header.plaintext_length
    last = total - (count - 1) * size
    # Sized by the plaintext as well as the chunk size (and, in `read_ahead`, by the file):
    # a header claiming 64 MiB chunks over 10 bytes costs a 26-byte buffer, not 64 MiB.
    length = min(size, total) + TAG_BYTES
    with read_ahead(src, count, length, last + TAG_BYTES, digest.update) as chunks:
        for index, sealed in enumerate(chunks):
            start = index * size
            length = len(sealed) - TAG_BYTES
            nonce = _chunk_nonce(header.nonce_prefix, index, index == count - 1)
            # Released on the way out even when the tag fails, so that the traceback does not
            # pin the plaintext buffer and `open_artifact` can unmap it.
            with out[:length] if reuse_out else out[start : start + length] as target:
                try:
                    aead.decrypt_into(nonce, sealed, header_digest, target)
                except InvalidTag as exc:
                    reason = f"chunk {index} of {count} failed authentication"
                    raise InvalidArtifact("chunk_auth", reason) from exc
                if observe is not None:
                    observe(target)
    return digest.digest()


def _keyblock(
    data_key: bytes, header_digest: bytes, recipient: PublicKey, key_id: str, format_version: int
) -> bytes:
    """The length-prefixed keyblock: `data_key` wrapped by HPKE to `recipient`."""
    if not name_ok(key_id):
        raise ValueError("key ids must be strings of 1-256 characters")
    raw = recipient._key
    target: x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
    if recipient.algorithm is Algorithm.X25519 and isinstance(raw, x25519.X25519PublicKey):
        target = raw
    elif isinstance(raw, MlKemX25519Public):
        target = raw.hpke_key()
    else:
        raise InvalidKey(
            f"artifacts are sealed to x25519 or mlkem768-x25519, not {recipient.algorithm}"
        )
    name, suite = _suite(recipient.algorithm)
    info = KEY_INFO_LABEL[format_version] + header_digest
    wrapped = suite.encrypt(data_key, target, info=info)
    return encode_block({"kem_suite": name, "key_id": key_id, "wrapped": b64(wrapped)})


def _unwrap(prelude: Prelude, private_keys: Mapping[str, PrivateKey]) -> bytes:
    """The data key, unwrapped and (v2) checked against the header's commitment: the one
    place every reader gets a key from, so none can skip the check."""
    key = private_keys.get(prelude.key_id)
    if key is None:
        reason = f"sealed to unknown service key {prelude.key_id!r}"
        raise InvalidArtifact("unknown_service_key", reason)
    raw = key._key
    source: x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey | None = None
    if key.algorithm is Algorithm.X25519 and isinstance(raw, x25519.X25519PrivateKey):
        source = raw
    elif isinstance(raw, MlKemX25519Private):
        source = raw.hpke_key()
    if source is None or _KEMS[key.algorithm][0] != prelude.kem_suite:
        reason = f"keyblock suite {prelude.kem_suite} does not fit {key.algorithm} key"
        reason += f" {prelude.key_id!r}"
        raise InvalidArtifact("wrong_key_algorithm", reason)
    _, suite = _suite(key.algorithm)
    header = prelude.header
    try:
        data_key = suite.decrypt(
            prelude.wrapped, source, info=KEY_INFO_LABEL[header.format] + prelude.header_digest
        )
    except (InvalidTag, ValueError) as exc:
        reason = f"data key did not unwrap with {prelude.key_id!r} (header or keyblock altered)"
        raise InvalidArtifact("key_unwrap", reason) from exc
    if len(data_key) != DATA_KEY_BYTES:
        raise InvalidArtifact("key_unwrap", f"unwrapped data key has {len(data_key)} bytes")
    if header.key_commitment is not None and not hmac.compare_digest(
        _commitment(data_key), header.key_commitment
    ):
        reason = f"keyblock for {prelude.key_id!r} holds a data key the signed header does not"
        reason += " commit to (keyblock replaced)"
        raise InvalidArtifact("key_commitment", reason)
    return data_key


def _suite(algorithm: Algorithm) -> tuple[str, hpke.Suite]:
    name, kem = _KEMS[algorithm]
    return name, hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def check_identity(
    prelude: Prelude,
    trusted_publishers: Mapping[str, PublicKey],
    expect_model: str | None,
    expect_version: int | None,
) -> PublicKey:
    """The trusted publisher of `prelude`, once its header names the model and version the
    caller expects (shared with `attest`, which checks a header without opening the body)."""
    header = prelude.header
    if expect_model is not None and header.model != expect_model:
        reason = f"model name mismatch: header says {header.model!r}, expected {expect_model!r}"
        raise InvalidArtifact("model_mismatch", reason)
    if expect_version is not None and header.version != expect_version:
        reason = f"version mismatch: header says {header.version}, expected {expect_version}"
        raise InvalidArtifact("version_mismatch", reason)
    publisher = trusted_publishers.get(prelude.publisher_id)
    if publisher is None:
        reason = f"signed by untrusted publisher {prelude.publisher_id!r}"
        raise InvalidArtifact("untrusted_publisher", reason)
    return publisher


def check_signature(prelude: Prelude, publisher: PublicKey, ciphertext_digest: bytes) -> None:
    """`InvalidArtifact` unless `publisher` signed this header over `ciphertext_digest`."""
    message = _signed_message(
        prelude.header.format, prelude.header_digest, ciphertext_digest, prelude.publisher_id
    )
    try:
        verify(publisher, prelude.signature, message)
    except BadSignature as exc:
        reason = f"signature by {prelude.publisher_id!r} does not verify"
        raise InvalidArtifact("bad_signature", reason) from exc


def _check_plaintext(prelude: Prelude, plaintext_sha256: str) -> None:
    if plaintext_sha256 != prelude.header.plaintext_sha256:
        raise InvalidArtifact("plaintext_digest", "plaintext digest differs from the header's")
