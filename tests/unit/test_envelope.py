"""Sealed artifacts: round trips, every refusal with its reason, rewrap, and the v1/v2 vectors."""

from __future__ import annotations

import array
import base64
import hashlib
import io
import json
import mmap
import os
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_maas.crypto import (
    Algorithm,
    BadSignature,
    InvalidArtifact,
    InvalidKey,
    Opened,
    PrivateKey,
    PublicKey,
    envelope,
    generate,
    inspect_artifact,
    load_private,
    load_public,
    open_artifact,
    plainmem,
    readahead,
    rewrap,
    seal,
    sign,
    verify,
    verify_artifact,
)
from secure_maas.crypto.framing import MAGIC, canonical

VECTORS = Path(__file__).parent / "vectors"
GENERIC = "invalid or tampered artifact"


def make_key(algorithm: Algorithm) -> PrivateKey:
    return load_private(algorithm, generate(algorithm).private, name="test")


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {
        "svc-a": make_key(Algorithm.X25519),
        "svc-b": make_key(Algorithm.X25519),
        "svc-pq": make_key(Algorithm.MLKEM768_X25519),
        "pub-a": make_key(Algorithm.ED25519),
        "pub-b": make_key(Algorithm.ED25519),
    }


@pytest.fixture(scope="module")
def blob(keys: dict[str, PrivateKey]) -> bytes:
    """Five chunks of 64 bytes, the last one short."""
    return sealed(keys, os.urandom(64 * 4 + 10))


def sealed(
    keys: dict[str, PrivateKey],
    data: bytes,
    *,
    service: str = "svc-a",
    publisher: str = "pub-a",
    chunk_size: int = 64,
    model: str = "digits",
    version: int = 1,
) -> bytes:
    out = io.BytesIO()
    info = seal(
        data, out, model=model, version=version, metadata={"dp": {"epsilon": 1.5}},
        recipient=keys[service].public_key(), recipient_key_id=service,
        signer=keys[publisher], signer_key_id=publisher, chunk_size=chunk_size,
    )  # fmt: skip
    assert info.size == len(out.getvalue())
    return out.getvalue()


def open_blob(keys: dict[str, PrivateKey], data: bytes, **overrides: Any) -> Opened:
    arguments: dict[str, Any] = {
        "private_keys": {name: keys[name] for name in ("svc-a", "svc-pq")},
        "trusted_publishers": {"pub-a": keys["pub-a"].public_key()},
        "expect_model": "digits",
        "expect_version": 1,
    }
    arguments.update(overrides)
    return open_artifact(io.BytesIO(data), **arguments)


def refused(keys: dict[str, PrivateKey], data: bytes, code: str, **overrides: Any) -> str:
    """Assert `data` is refused with `code`; return the reason for further checks."""
    with pytest.raises(InvalidArtifact) as caught:
        open_blob(keys, data, **overrides)
    assert str(caught.value) == GENERIC
    assert caught.value.reason not in str(caught.value)
    assert caught.value.code == code, caught.value.reason
    return caught.value.reason


def layout(data: bytes) -> dict[str, Any]:
    """The documented byte layout, computed independently of the implementation."""
    header_length = struct.unpack_from(">I", data, 8)[0]
    header = json.loads(data[12 : 12 + header_length])
    keyblock_start = 12 + header_length
    keyblock_length = struct.unpack_from(">I", data, keyblock_start)[0]
    position = keyblock_start + 4 + keyblock_length
    chunks = []
    left = header["plaintext_length"]
    while True:
        length = min(left, header["chunk_size"]) + 16
        chunks.append((position, position + length))
        position += length
        left -= length - 16
        if left <= 0:
            break
    return {
        "header": (12, keyblock_start),
        "keyblock": (keyblock_start + 4, keyblock_start + 4 + keyblock_length),
        "chunks": chunks,
        "trailer": (position + 4, len(data)),
        "header_json": header,
    }


def replace_block(data: bytes, which: str, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """Re-encode one JSON block (canonically, with its length prefix) after `edit`."""
    start, end = layout(data)[which]
    value = json.loads(data[start:end])
    edit(value)
    new = canonical(value)
    return data[: start - 4] + struct.pack(">I", len(new)) + new + data[end:]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 64, 65, 64 * 5 + 3])
@pytest.mark.parametrize("service", ["svc-a", "svc-pq"])
def test_round_trip(keys: dict[str, PrivateKey], length: int, service: str) -> None:
    data = os.urandom(length)
    artifact = sealed(keys, data, service=service)
    opened = open_blob(keys, artifact)
    assert opened.plaintext == data and opened.plaintext.readonly
    assert opened.header.model == "digits" and opened.header.version == 1
    assert opened.header.metadata == {"dp": {"epsilon": 1.5}}
    assert opened.header.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert (opened.service_key_id, opened.publisher_key_id) == (service, "pub-a")
    chunks = layout(artifact)["chunks"]
    assert len(chunks) == max(1, -(-length // 64))
    body = b"".join(artifact[start:end] for start, end in chunks)
    assert opened.ciphertext_digest == blake3(body).hexdigest()
    verified = verify_artifact(
        io.BytesIO(artifact), private_keys={service: keys[service]},
        trusted_publishers={"pub-a": keys["pub-a"].public_key()},
        expect_model="digits", expect_version=1,
    )  # fmt: skip
    assert verified.ciphertext_digest == opened.ciphertext_digest
    opened.wipe()
    with pytest.raises(ValueError):  # unmapped: the plaintext is gone, not merely hidden
        opened.plaintext.tobytes()


def test_default_chunk_size_and_layout(keys: dict[str, PrivateKey]) -> None:
    data = os.urandom((1 << 20) + 5)
    artifact = sealed(keys, data, chunk_size=envelope.DEFAULT_CHUNK_SIZE)
    assert artifact.startswith(MAGIC) and len(MAGIC) == 8
    parts = layout(artifact)
    assert [end - start for start, end in parts["chunks"]] == [(1 << 20) + 16, 5 + 16]
    header_start, header_end = parts["header"]
    assert artifact[header_start:header_end] == canonical(parts["header_json"])
    assert parts["header_json"]["body_suite"] == "AES-256-GCM-STREAM"
    assert parts["header_json"]["format"] == 2 and artifact[:8] == b"SMAAS\x00v2"
    assert len(base64.b64decode(parts["header_json"]["key_commitment"])) == 32
    assert open_blob(keys, artifact).plaintext == data


def test_seal_takes_any_contiguous_buffer(keys: dict[str, PrivateKey]) -> None:
    floats = array.array("f", [0.5, -1.25, 3.0] * 50)
    artifact = sealed(keys, memoryview(floats))
    assert open_blob(keys, artifact).plaintext == floats.tobytes()


def test_inspect_needs_no_keys(keys: dict[str, PrivateKey], blob: bytes) -> None:
    seen = inspect_artifact(io.BytesIO(blob))
    assert (seen.header.model, seen.service_key_id, seen.publisher_key_id) == (
        "digits", "svc-a", "pub-a",
    )  # fmt: skip
    assert seen.kem_suite.startswith("HPKE(DHKEM-X25519") and seen.size == len(blob)


def test_reads_from_a_real_file_at_an_offset(
    keys: dict[str, PrivateKey], blob: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "a.sealed"
    path.write_bytes(b"junk" + blob)
    with path.open("rb") as handle:
        handle.seek(4)
        opened = open_artifact(
            handle, private_keys={"svc-a": keys["svc-a"]},
            trusted_publishers={"pub-a": keys["pub-a"].public_key()},
            expect_model="digits", expect_version=1,
        )  # fmt: skip
    assert len(opened.plaintext) == 64 * 4 + 10


# --- refusals ----------------------------------------------------------------------------------


def test_header_bit_flip_is_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    start, _ = layout(blob)["header"]
    position = blob.index(b'"digits"', start) + 2  # "digits" -> "dhgits": still canonical
    reason = refused(keys, flip(blob, position), "key_unwrap", expect_model=None)
    assert "svc-a" in reason
    refused(keys, flip(blob, start), "malformed_header")  # the opening brace


def test_renamed_artifact_is_refused_even_without_expectations(
    keys: dict[str, PrivateKey], blob: bytes
) -> None:
    renamed = replace_block(blob, "header", lambda h: h.update(model="other", version=2))
    refused(keys, renamed, "key_unwrap", expect_model=None, expect_version=None)


def test_keyblock_bit_flip_is_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    def corrupt(block: dict[str, Any]) -> None:
        wrapped = bytearray(base64.b64decode(block["wrapped"]))
        wrapped[-1] ^= 1
        block["wrapped"] = b64(bytes(wrapped))

    refused(keys, replace_block(blob, "keyblock", corrupt), "key_unwrap")
    start, _ = layout(blob)["keyblock"]
    refused(keys, flip(blob, start), "malformed_keyblock")


@pytest.mark.parametrize("index", range(5))
def test_chunk_bit_flip_is_refused(keys: dict[str, PrivateKey], blob: bytes, index: int) -> None:
    start, end = layout(blob)["chunks"][index]
    assert (
        refused(keys, flip(blob, start), "chunk_auth")
        == f"chunk {index} of 5 failed authentication"
    )
    refused(keys, flip(blob, end - 1), "chunk_auth")  # the tag


def test_signature_bit_flip_is_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    def corrupt(trailer: dict[str, Any]) -> None:
        signature = bytearray(base64.b64decode(trailer["signature"]))
        signature[10] ^= 1
        trailer["signature"] = b64(bytes(signature))

    assert "pub-a" in refused(keys, replace_block(blob, "trailer", corrupt), "bad_signature")
    start, _ = layout(blob)["trailer"]
    refused(keys, flip(blob, start), "malformed_trailer")


def test_truncated_last_chunk_is_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    _, end = layout(blob)["chunks"][-1]
    shortened = blob[: end - 3] + blob[end:]
    assert "truncated" in refused(keys, shortened, "truncated")


@pytest.mark.parametrize(
    ("cut", "code"),
    [
        (0, "bad_magic"),
        (5, "bad_magic"),
        (10, "truncated"),
        (40, "truncated"),
        ("keyblock", "truncated"),
        ("body", "size_mismatch"),
        ("trailer length", "size_mismatch"),
        ("trailer", "truncated"),
        (-1, "truncated"),
    ],
)
def test_truncated_file_is_refused(
    keys: dict[str, PrivateKey], blob: bytes, cut: int | str, code: str
) -> None:
    parts = layout(blob)
    points = {
        "keyblock": parts["keyblock"][0] + 5,
        "body": parts["chunks"][2][0] + 7,
        "trailer length": parts["trailer"][0] - 2,
        "trailer": parts["trailer"][0] + 5,
    }
    end = points[cut] if isinstance(cut, str) else cut
    refused(keys, blob[:end], code)


def test_swapped_chunks_are_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    (a0, a1), (b0, b1) = layout(blob)["chunks"][1:3]
    swapped = blob[:a0] + blob[b0:b1] + blob[a0:a1] + blob[b1:]
    assert refused(keys, swapped, "chunk_auth") == "chunk 1 of 5 failed authentication"


def test_chunk_from_another_artifact_is_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    other = sealed(keys, os.urandom(64 * 4 + 10))
    start, end = layout(blob)["chunks"][0]
    refused(keys, blob[:start] + other[start:end] + blob[end:], "chunk_auth")


def test_foreign_keyblock_is_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    """The keyblock is unsigned, but HPKE's info binds it to this header."""
    other = sealed(keys, os.urandom(64 * 4 + 10))
    start, end = layout(blob)["keyblock"]
    other_start, other_end = layout(other)["keyblock"]
    assert end - start == other_end - other_start
    refused(keys, blob[:start] + other[other_start:other_end] + blob[end:], "key_unwrap")


def test_extra_trailing_bytes_are_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    assert refused(keys, blob + b"\x00", "trailing_bytes") == "1 extra bytes after the trailer"


def test_wrong_model_or_version_is_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    reason = refused(keys, blob, "model_mismatch", expect_model="wine")
    assert reason == "model name mismatch: header says 'digits', expected 'wine'"
    refused(keys, blob, "version_mismatch", expect_version=2)


def test_sealed_to_another_service_key_is_refused(keys: dict[str, PrivateKey]) -> None:
    artifact = sealed(keys, b"weights", service="svc-b")
    assert "'svc-b'" in refused(keys, artifact, "unknown_service_key")
    # The right id with the wrong key (a confused keyring) fails the unwrap.
    refused(keys, artifact, "key_unwrap", private_keys={"svc-b": keys["svc-a"]})
    refused(keys, artifact, "wrong_key_algorithm", private_keys={"svc-b": keys["svc-pq"]})


def test_untrusted_publisher_is_refused(keys: dict[str, PrivateKey]) -> None:
    artifact = sealed(keys, b"weights", publisher="pub-b")
    assert "'pub-b'" in refused(keys, artifact, "untrusted_publisher")
    impostor = {"pub-b": keys["pub-a"].public_key()}
    refused(keys, artifact, "bad_signature", trusted_publishers=impostor)


def test_zero_length_file_is_refused(keys: dict[str, PrivateKey]) -> None:
    refused(keys, b"", "bad_magic")


def test_hundred_gigabyte_claim_is_refused_without_allocating(
    keys: dict[str, PrivateKey], blob: bytes
) -> None:
    huge = replace_block(blob, "header", lambda h: h.update(plaintext_length=100 << 30))
    tracemalloc.start()
    try:
        reason = refused(keys, huge, "size_mismatch")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason.startswith("plaintext length claim exceeds file size")
    assert peak < 1 << 20


def test_memory_budget_is_enforced_before_allocating(
    keys: dict[str, PrivateKey], blob: bytes
) -> None:
    refused(keys, blob, "too_large", max_plaintext=100)


def test_non_canonical_blocks_are_refused(keys: dict[str, PrivateKey], blob: bytes) -> None:
    start, end = layout(blob)["header"]
    spaced = json.dumps(json.loads(blob[start:end]), sort_keys=True).encode()
    respaced = blob[: start - 4] + struct.pack(">I", len(spaced)) + spaced + blob[end:]
    refused(keys, respaced, "malformed_header")
    extra = replace_block(blob, "trailer", lambda t: t.update(extra=1))
    refused(keys, extra, "malformed_trailer")
    refused(keys, replace_block(blob, "header", lambda h: h.update(format=3)), "unsupported_format")
    # A v1 header behind the v2 magic (or the reverse) is neither format.
    refused(keys, replace_block(blob, "header", lambda h: h.update(format=1)), "unsupported_format")
    refused(keys, b"SMAAS\x00v1" + blob[8:], "unsupported_format")


def test_buffer_is_unmapped_when_a_late_chunk_fails(
    keys: dict[str, PrivateKey], blob: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[mmap.mmap] = []
    real_release = plainmem.release

    def spy(memory: mmap.mmap) -> None:
        real_release(memory)
        released.append(memory)

    monkeypatch.setattr(plainmem, "release", spy)
    start, _ = layout(blob)["chunks"][-1]
    refused(keys, flip(blob, start), "chunk_auth")
    assert len(released) == 1 and released[0].closed  # unmapped, not merely dropped
    released.clear()
    refused(keys, replace_block(blob, "trailer", _zero_signature), "bad_signature")
    assert len(released) == 1 and released[0].closed


def _zero_signature(trailer: dict[str, Any]) -> None:
    trailer["signature"] = b64(bytes(64))


@settings(
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(max_size=2048))
def test_random_bytes_only_raise_invalid_artifact(keys: dict[str, PrivateKey], data: bytes) -> None:
    with pytest.raises(InvalidArtifact):
        open_blob(keys, data)
    with pytest.raises(InvalidArtifact):
        open_blob(keys, MAGIC + data)


@settings(
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(position=st.integers(min_value=0), value=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_is_refused(
    keys: dict[str, PrivateKey], blob: bytes, position: int, value: int
) -> None:
    position %= len(blob)
    changed = blob[:position] + bytes([blob[position] ^ value]) + blob[position + 1 :]
    with pytest.raises(InvalidArtifact):
        open_blob(keys, changed)


# --- rewrap ------------------------------------------------------------------------------------


@pytest.mark.parametrize("new_service", ["svc-b", "svc-pq"])
def test_rewrap_moves_the_key_and_keeps_the_body(
    keys: dict[str, PrivateKey], new_service: str
) -> None:
    data = os.urandom(300)
    artifact = sealed(keys, data)
    out = io.BytesIO()
    seen = rewrap(
        io.BytesIO(artifact), out, old_private_keys={"svc-a": keys["svc-a"]},
        new_recipient=keys[new_service].public_key(), new_key_id=new_service,
    )  # fmt: skip
    moved = out.getvalue()
    assert seen.size == len(moved) and seen.service_key_id == new_service
    old, new = layout(artifact), layout(moved)
    assert artifact[: old["header"][1]] == moved[: new["header"][1]]
    assert artifact[old["chunks"][0][0] :] == moved[new["chunks"][0][0] :]
    opened = open_blob(keys, moved, private_keys={new_service: keys[new_service]})
    assert opened.plaintext == data and opened.service_key_id == new_service
    refused(keys, moved, "unknown_service_key", private_keys={"svc-a": keys["svc-a"]})


def test_rewrap_needs_the_old_key(keys: dict[str, PrivateKey], blob: bytes) -> None:
    with pytest.raises(InvalidArtifact) as caught:
        rewrap(
            io.BytesIO(blob), io.BytesIO(), old_private_keys={"svc-b": keys["svc-b"]},
            new_recipient=keys["svc-b"].public_key(), new_key_id="svc-b",
        )  # fmt: skip
    assert caught.value.code == "unknown_service_key"


# --- sealing arguments, memory -----------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata", [{"bad": {1, 2}}, {"nan": float("nan")}, {1: "int key", "a": 2}]
)
def test_seal_refuses_metadata_that_is_not_json(
    keys: dict[str, PrivateKey], metadata: dict[Any, Any]
) -> None:
    out = io.BytesIO()
    with pytest.raises(ValueError, match="metadata"):
        seal(
            b"x", out, model="m", version=1, metadata=metadata,
            recipient=keys["svc-a"].public_key(), recipient_key_id="svc-a",
            signer=keys["pub-a"], signer_key_id="pub-a",
        )  # fmt: skip
    assert out.getvalue() == b""


def test_seal_refuses_keys_of_the_wrong_kind(keys: dict[str, PrivateKey]) -> None:
    base: dict[str, Any] = {
        "model": "m", "version": 1, "metadata": {}, "recipient_key_id": "s", "signer_key_id": "p",
    }  # fmt: skip
    out = io.BytesIO()
    with pytest.raises(InvalidKey):
        seal(b"x", out, recipient=keys["pub-a"].public_key(), signer=keys["pub-a"], **base)
    with pytest.raises(InvalidKey):
        seal(b"x", out, recipient=keys["svc-a"].public_key(), signer=keys["svc-a"], **base)
    with pytest.raises(ValueError, match="version"):
        seal(b"x", out, recipient=keys["svc-a"].public_key(), signer=keys["pub-a"],
             **{**base, "version": -1})  # fmt: skip
    assert out.getvalue() == b""


def test_seal_and_open_hold_one_copy_plus_a_chunk(keys: dict[str, PrivateKey]) -> None:
    data = os.urandom(8 << 20)
    sink = _CountingSink()
    tracemalloc.start()
    try:
        seal(
            data, sink, model="digits", version=1, metadata={},
            recipient=keys["svc-a"].public_key(), recipient_key_id="svc-a",
            signer=keys["pub-a"], signer_key_id="pub-a",
        )  # fmt: skip
        _, seal_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seal_peak < 3 << 20  # one chunk buffer, never the ciphertext
    artifact = sealed(keys, data, chunk_size=envelope.DEFAULT_CHUNK_SIZE)
    tracemalloc.start()
    try:
        opened = open_blob(keys, artifact)
        _, heap_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The plaintext is a mapping of its exact size (tracemalloc does not see it); the heap
    # holds only the read-ahead's chunk buffers.
    assert len(opened.memory) == len(data) and opened.plaintext == data
    assert heap_peak < readahead.DEPTH * envelope.DEFAULT_CHUNK_SIZE + (1 << 20)
    opened.wipe()


class _CountingSink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.size += len(data)
        return len(data)


def test_unseekable_source_is_a_programming_error(blob: bytes) -> None:
    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    with pytest.raises(ValueError, match="seekable"):
        inspect_artifact(Pipe(blob))


# --- signing, post-quantum keys ----------------------------------------------------------------


def test_sign_and_verify(keys: dict[str, PrivateKey]) -> None:
    signature = sign(keys["pub-a"], b"message")
    assert len(signature) == 64 and signature == sign(keys["pub-a"], b"message")
    verify(keys["pub-a"].public_key(), signature, b"message")
    for public, message, sig in [
        (keys["pub-a"].public_key(), b"messagE", signature),
        (keys["pub-b"].public_key(), b"message", signature),
        (keys["pub-a"].public_key(), b"message", signature[:-1]),
    ]:
        with pytest.raises(BadSignature):
            verify(public, sig, message)
    with pytest.raises(InvalidKey):
        sign(keys["svc-a"], b"message")
    with pytest.raises(InvalidKey):
        verify(keys["svc-a"].public_key(), signature, b"message")


def test_post_quantum_service_key_round_trips_through_pem() -> None:
    generated = generate(Algorithm.MLKEM768_X25519)
    assert generated.public is not None
    assert generated.private.count(b"-----BEGIN PRIVATE KEY-----") == 2
    private = load_private(Algorithm.MLKEM768_X25519, generated.private, name="k")
    public = load_public(Algorithm.MLKEM768_X25519, generated.public, name="k.pub")
    assert private.public_key() == public
    assert public.fingerprint == generated.fingerprint and len(public.raw) == 1184 + 32
    assert private.pem() == generated.private and public.pem() == generated.public
    assert "PRIVATE" not in repr(private) and "PRIVATE" not in repr(generated)
    with pytest.raises(InvalidKey, match="not a readable mlkem768-x25519 private key"):
        load_private(Algorithm.MLKEM768_X25519, generate(Algorithm.X25519).private, name="k")
    with pytest.raises(InvalidKey, match="expected x25519"):
        load_private(Algorithm.X25519, generated.private, name="k")
    swapped = generated.public.split(b"-----END PUBLIC KEY-----\n")
    with pytest.raises(InvalidKey, match="ML-KEM-768 then X25519"):
        load_public(Algorithm.MLKEM768_X25519, swapped[1] + b"-----END PUBLIC KEY-----\n"
                    + swapped[0] + b"-----END PUBLIC KEY-----\n", name="k.pub")  # fmt: skip


# --- known-answer vectors (tests/unit/vectors; see make_vectors.py) ---------------------------
# v2 is what `seal` writes; v1 is the legacy format, still opened (with its plaintext digest).


def _vectors(format_version: int = 2) -> dict[str, Any]:
    return dict(json.loads((VECTORS / f"envelope-v{format_version}.json").read_text()))


_CASES = [(number, case) for number in (1, 2) for case in _vectors(number)["artifacts"]]


def _vector_keys() -> dict[str, PrivateKey]:
    return {
        key_id: load_private(
            Algorithm(entry["algorithm"]), (VECTORS / entry["file"]).read_bytes(), name=key_id
        )
        for key_id, entry in _vectors()["keys"].items()
    }


@pytest.mark.parametrize(("format_version", "case"), _CASES, ids=[c["name"] for _, c in _CASES])
def test_vector_opens_to_the_known_plaintext(format_version: int, case: dict[str, Any]) -> None:
    keys = _vector_keys()
    data = (VECTORS / case["file"]).read_bytes()
    opened = open_artifact(
        io.BytesIO(data), private_keys={case["service_key_id"]: keys[case["service_key_id"]]},
        trusted_publishers={"pub-vector": keys["pub-vector"].public_key()},
        expect_model=case["model"], expect_version=case["version"],
    )  # fmt: skip
    assert opened.plaintext.hex() == case["plaintext_hex"]
    assert opened.ciphertext_digest == case["ciphertext_digest"]
    assert opened.header.metadata == case["metadata"]
    assert opened.header.format == format_version and data[:8] == b"SMAAS\x00v%d" % format_version
    start, end = layout(data)["header"]
    assert data[start:end].hex() == case["header_hex"]
    assert hashlib.sha256(data[start:end]).hexdigest() == case["header_sha256"]


@pytest.mark.parametrize(("format_version", "case"), _CASES, ids=[c["name"] for _, c in _CASES])
def test_vector_reseals_to_the_same_bytes(format_version: int, case: dict[str, Any]) -> None:
    """With the data key and nonce prefix fixed, everything but the HPKE keyblock is fixed:
    header encoding, nonce derivation, chunk encryption, digests and the Ed25519 signature."""
    keys = _vector_keys()
    out = io.BytesIO()
    envelope._seal(
        bytes.fromhex(case["plaintext_hex"]), out, model=case["model"],
        version=case["version"], metadata=case["metadata"],
        recipient=keys[case["service_key_id"]].public_key(),
        recipient_key_id=case["service_key_id"], signer=keys["pub-vector"],
        signer_key_id="pub-vector", chunk_size=case["chunk_size"],
        data_key=bytes.fromhex(case["data_key_hex"]),
        nonce_prefix=bytes.fromhex(case["nonce_prefix_hex"]), format_version=format_version,
    )  # fmt: skip
    fresh, known = out.getvalue(), (VECTORS / case["file"]).read_bytes()
    fresh_parts, known_parts = layout(fresh), layout(known)
    assert fresh[: fresh_parts["header"][1]] == known[: known_parts["header"][1]]
    assert fresh[fresh_parts["chunks"][0][0] :] == known[known_parts["chunks"][0][0] :]


@pytest.mark.parametrize("case", _vectors()["nonces"], ids=lambda case: case["nonce_hex"])
def test_vector_chunk_nonce(case: dict[str, Any]) -> None:
    nonce = envelope._chunk_nonce(bytes.fromhex(case["prefix_hex"]), case["index"], case["last"])
    assert nonce.hex() == case["nonce_hex"] and len(nonce) == 12


@pytest.mark.parametrize("case", _vectors(2)["artifacts"], ids=lambda case: case["name"])
def test_vector_key_derivations(case: dict[str, Any]) -> None:
    """v2's HKDF-SHA256 derivations of the body key and the key commitment, pinned."""
    data_key = bytes.fromhex(case["data_key_hex"])
    header = inspect_artifact(io.BytesIO((VECTORS / case["file"]).read_bytes())).header
    assert header.key_commitment is not None
    assert header.key_commitment.hex() == case["key_commitment_hex"]
    assert envelope._commitment(data_key).hex() == case["key_commitment_hex"]
    assert envelope._body_key(header, data_key).hex() == case["body_key_hex"]


def test_vector_key_fingerprints_are_stable() -> None:
    """The checked-in keys still parse to the same keys: key encodings are format too."""
    keys = _vector_keys()
    for key_id, entry in _vectors()["keys"].items():
        public: PublicKey = keys[key_id].public_key()
        assert public.fingerprint == entry["fingerprint"]
