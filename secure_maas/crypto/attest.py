"""The signed header of an artifact, authenticated with the publisher's public key alone.

`verify_artifact` and `open_artifact` need a service private key because they decrypt. The
facts a registry, a rule or a caller relies on (privacy, guarantee, dataset, serving signature,
name, version) live in the header, and the header is authenticated by the publisher's
signature over HEADER_DIGEST || CIPHERTEXT_DIGEST || publisher_key_id: no service key and no
decryption are needed to trust it. Two ways to get CIPHERTEXT_DIGEST:

- hash the body (BLAKE3, the chunks' bytes as stored, one megabyte at a time): this also
  proves the body is the one the publisher signed (but not that it decrypts);
- take the digest the registry recorded at publish time: the body is not read at all, and a
  signature that verifies proves the header is one the publisher signed together with that
  digest; a forged digest makes the signature fail. This is what lets every worker check every
  version's header whenever its registry copy is refreshed.

Failures raise `InvalidArtifact` as elsewhere (opaque message; `code`/`reason` for the log).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from blake3 import blake3

from secure_maas.crypto.envelope import check_identity, check_signature
from secure_maas.crypto.framing import (
    COPY_BYTES,
    Header,
    InvalidArtifact,
    Source,
    read_exact,
    read_prelude,
)
from secure_maas.crypto.keys import PublicKey

__all__ = ["Attested", "authenticate_header"]


@dataclass(frozen=True)
class Attested:
    """A header whose publisher signature verified; `body_hashed` says whether the ciphertext
    digest was computed from the file (True) or taken from the caller's record (False)."""

    header: Header
    ciphertext_digest: str
    service_key_id: str
    publisher_key_id: str
    body_hashed: bool


def authenticate_header(
    src: Source,
    *,
    trusted_publishers: Mapping[str, PublicKey],
    expect_model: str | None,
    expect_version: int | None,
    ciphertext_digest: str | None = None,
) -> Attested:
    """Check the framing, identity and publisher signature of an artifact without decrypting.

    With `ciphertext_digest` (hex, as a registry row records it) the body is not read; without
    it the body is hashed. Either way nothing is decrypted and no service key is used.
    """
    prelude = read_prelude(src, None)
    publisher = check_identity(prelude, trusted_publishers, expect_model, expect_version)
    if ciphertext_digest is None:
        digest = _hash_body(src, prelude.header.body_length)
    else:
        try:
            digest = bytes.fromhex(ciphertext_digest)
        except ValueError as exc:
            raise InvalidArtifact("digest_mismatch", "recorded digest is not hex") from exc
    check_signature(prelude, publisher, digest)
    return Attested(
        prelude.header,
        digest.hex(),
        prelude.key_id,
        prelude.publisher_id,
        ciphertext_digest is None,
    )


def _hash_body(src: Source, length: int) -> bytes:
    digest = blake3(max_threads=1)
    buffer = bytearray(min(COPY_BYTES, max(length, 1)))
    with memoryview(buffer) as view:
        left = length
        while left:
            piece = view[: min(left, len(buffer))]
            read_exact(src, piece, "body")
            digest.update(piece)
            left -= len(piece)
    return digest.digest()
