"""Opening an artifact allocates by what the file can hold, not by what its frame claims.

Every length in an artifact's frame is read before anything in it is authenticated, so
`read_ahead` sizes its buffers by the file's size as well as the header's chunk size: a file
of a few hundred bytes whose header claims 64 MiB chunks is opened (or refused) in small
memory, and a header block claiming 1 MiB in a tiny file is refused before 1 MiB is
allocated. The forgeries here are what anyone with write access to the store can make: a
header of their choosing, a fresh keyblock to the service's public key, a body under their own
data key, and a signature that cannot verify.
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from secure_maas.crypto import (
    Algorithm,
    InvalidArtifact,
    PrivateKey,
    generate,
    load_private,
    open_artifact,
    rewrap,
    seal,
    verify_artifact,
)
from secure_maas.crypto.framing import MAX_CHUNK_SIZE

T = TypeVar("T")
SMALL = 256 << 10  # far above what a few hundred bytes need, far below one claimed chunk


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    """The service's key and the one it rotates to, its publisher's, and an impostor's."""
    algorithms = {"svc": Algorithm.X25519, "svc-new": Algorithm.X25519,
                  "pub": Algorithm.ED25519, "impostor": Algorithm.ED25519}  # fmt: skip
    return {name: load_private(a, generate(a).private, name="test")
            for name, a in algorithms.items()}  # fmt: skip


def sealed(keys: dict[str, PrivateKey], data: bytes, signer: str, chunk_size: int) -> bytes:
    out = io.BytesIO()
    seal(
        data, out, model="digits", version=1, metadata={},
        recipient=keys["svc"].public_key(), recipient_key_id="svc",
        signer=keys[signer], signer_key_id="pub", chunk_size=chunk_size,
    )  # fmt: skip
    return out.getvalue()


def peak_of(action: Callable[[], T]) -> tuple[T | BaseException, int]:
    """What `action` returned or raised, and the peak of traced heap memory while it ran
    (on every thread, the read-ahead's included)."""
    tracemalloc.start()
    try:
        try:
            result: T | BaseException = action()
        except InvalidArtifact as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def reader(keys: dict[str, PrivateKey], data: bytes, how: Any) -> Callable[[], Any]:
    return lambda: how(
        io.BytesIO(data), private_keys={"svc": keys["svc"]},
        trusted_publishers={"pub": keys["pub"].public_key()},
        expect_model="digits", expect_version=1,
    )  # fmt: skip


@pytest.mark.parametrize("how", [open_artifact, verify_artifact])
def test_tiny_artifact_claiming_64_mib_chunks_is_refused_without_allocating_them(
    keys: dict[str, PrivateKey], how: Any
) -> None:
    forged = sealed(keys, b"0123456789", "impostor", MAX_CHUNK_SIZE)
    assert MAX_CHUNK_SIZE == 64 << 20 and len(forged) < 1024
    result, peak = peak_of(reader(keys, forged, how))
    assert isinstance(result, InvalidArtifact), result
    assert result.code == "bad_signature" and str(result) == InvalidArtifact.MESSAGE
    assert result.reason == "signature by 'pub' does not verify"
    assert peak < SMALL, f"{peak} bytes allocated to refuse a {len(forged)}-byte file"


def test_a_genuine_small_artifact_with_big_chunks_opens_in_small_memory(
    keys: dict[str, PrivateKey],
) -> None:
    data = os.urandom(1000)
    genuine = sealed(keys, data, "pub", MAX_CHUNK_SIZE)
    opened, peak = peak_of(reader(keys, genuine, open_artifact))
    assert not isinstance(opened, BaseException)
    assert opened.plaintext == data and peak < SMALL
    opened.wipe()


def test_rewrap_of_a_tiny_artifact_copies_through_a_small_buffer(
    keys: dict[str, PrivateKey],
) -> None:
    genuine = sealed(keys, b"0123456789", "pub", MAX_CHUNK_SIZE)

    def move() -> Any:
        return rewrap(
            io.BytesIO(genuine), io.BytesIO(), old_private_keys={"svc": keys["svc"]},
            new_recipient=keys["svc-new"].public_key(), new_key_id="svc-new",
        )  # fmt: skip

    moved, peak = peak_of(move)
    assert not isinstance(moved, BaseException) and peak < SMALL


def test_header_length_the_file_cannot_hold_is_refused_before_allocating(
    keys: dict[str, PrivateKey],
) -> None:
    genuine = sealed(keys, b"0123456789", "pub", 64)
    claims_a_mebibyte = genuine[:8] + struct.pack(">I", 1 << 20) + genuine[12:]
    result, peak = peak_of(reader(keys, claims_a_mebibyte, open_artifact))
    assert isinstance(result, InvalidArtifact) and result.code == "truncated"
    assert result.reason == "header truncated" and peak < SMALL
