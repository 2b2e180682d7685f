"""A sealed artifact opens to one plaintext only, whichever keyblock it carries.

AES-GCM does not commit to its key: knowing two keys, one can solve GHASH's linear equations
for a ciphertext block that makes a single ciphertext and tag authenticate under both, to two
different plaintexts. A publisher who does this, signs the header and body once, and wraps
either data key in the (unsigned) keyblock would have an artifact that opens, with the same
signed header and the same ciphertext digest as the registry row, to whichever plaintext its
keyblock chooses. So the v2 header commits to the data key (checked at unwrap, before the body
is read), and a v1 artifact, which has no commitment, has its plaintext digest checked on
every open.

The forgery here is real: the ciphertext below authenticates under both body keys (asserted
with AES-GCM itself), and the artifacts carry a valid signature by the trusted publisher.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

import pytest
from blake3 import blake3
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_maas.crypto import (
    Algorithm,
    Header,
    InvalidArtifact,
    PrivateKey,
    envelope,
    generate,
    inspect_artifact,
    load_private,
    open_artifact,
    reseal,
    rewrap,
    sign,
    verify_artifact,
)
from secure_maas.crypto.framing import MAGICS, b64, encode_block

BLOCK = 16
_R = 0xE1 << 120  # GCM's reduction polynomial, in its reflected bit order


# --- GF(2^128) as GCM defines it (NIST SP 800-38D, section 6.3) -------------------------------


def gf_mul(x: int, y: int) -> int:
    z, v = 0, y
    for bit in range(127, -1, -1):
        if (x >> bit) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def gf_pow(x: int, exponent: int) -> int:
    result = 1 << 127  # the field's one: the polynomial 1 is the leftmost bit
    while exponent:
        if exponent & 1:
            result = gf_mul(result, x)
        x = gf_mul(x, x)
        exponent >>= 1
    return result


def gf_inverse(x: int) -> int:
    return gf_pow(x, (1 << 128) - 2)


def aes_block(key: bytes, block: bytes) -> int:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return int.from_bytes(encryptor.update(block) + encryptor.finalize(), "big")


def ghash(h: int, aad: bytes, ciphertext: bytes) -> int:
    """GHASH over AAD and ciphertext (both whole blocks here) and the length block."""
    lengths = (len(aad) * 8).to_bytes(8, "big") + (len(ciphertext) * 8).to_bytes(8, "big")
    data = aad + ciphertext + lengths
    y = 0
    for start in range(0, len(data), BLOCK):
        y = gf_mul(y ^ int.from_bytes(data[start : start + BLOCK], "big"), h)
    return y


def two_key_body(key1: bytes, key2: bytes, nonce: bytes, aad: bytes, blocks: int) -> bytes:
    """Ciphertext || tag that AES-GCM authenticates under both keys (Grubbs, Lu, Ristenpart:
    "message franking via committing authenticated encryption"; the "invisible salamanders").

    With every block but the first fixed, each key's tag is linear in that block C:
    T_k = R_k + C * H_k^e + E_k(J0), e its power of H. Equal tags need
    C = (R_1 + R_2 + E_1(J0) + E_2(J0)) / (H_1^e + H_2^e).
    """
    if len(aad) % BLOCK or len(nonce) != 12:
        raise ValueError("whole-block AAD and a 96-bit nonce only")
    rest = os.urandom((blocks - 1) * BLOCK)
    free = bytes(BLOCK)
    hs = [aes_block(key, bytes(BLOCK)) for key in (key1, key2)]
    masks = [aes_block(key, nonce + b"\x00\x00\x00\x01") for key in (key1, key2)]
    partial = [ghash(h, aad, free + rest) for h in hs]
    power = blocks + 1  # the first ciphertext block's power of H: the blocks after it, lengths
    difference = gf_pow(hs[0], power) ^ gf_pow(hs[1], power)
    value = gf_mul(partial[0] ^ partial[1] ^ masks[0] ^ masks[1], gf_inverse(difference))
    ciphertext = value.to_bytes(BLOCK, "big") + rest
    tag = ghash(hs[0], aad, ciphertext) ^ masks[0]
    if tag != ghash(hs[1], aad, ciphertext) ^ masks[1]:
        raise AssertionError("the two tags differ: the algebra above is wrong")
    return ciphertext + tag.to_bytes(BLOCK, "big")


# --- the publisher's forgery ------------------------------------------------------------------


def make_key(algorithm: Algorithm) -> PrivateKey:
    return load_private(algorithm, generate(algorithm).private, name="test")


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {
        "svc": make_key(Algorithm.X25519),
        "svc-new": make_key(Algorithm.X25519),
        "pub": make_key(Algorithm.ED25519),
    }


@dataclass(frozen=True)
class Forgery:
    header_bytes: bytes
    body: bytes
    artifacts: tuple[bytes, bytes]  # the same artifact with the keyblock of key 1, of key 2
    plaintexts: tuple[bytes, bytes]  # what AES-GCM returns for the body under each key


def forge(keys: dict[str, PrivateKey], format_version: int) -> Forgery:
    """One signed header and body, two keyblocks: what a malicious publisher can make."""
    data_keys = (os.urandom(32), os.urandom(32))
    blocks = 4
    commitment = None if format_version == 1 else envelope._commitment(data_keys[0])
    header = Header(
        model="digits", version=1, metadata={}, plaintext_length=blocks * BLOCK,
        plaintext_sha256=hashlib.sha256(b"the plaintext the publisher shows").hexdigest(),
        chunk_size=64, nonce_prefix=os.urandom(7), key_commitment=commitment,
    )  # fmt: skip
    header_block = encode_block(header.as_dict())
    header_digest = hashlib.sha256(header_block[4:]).digest()
    body_keys = [envelope._body_key(header, key) for key in data_keys]
    nonce = envelope._chunk_nonce(header.nonce_prefix, 0, True)
    body = two_key_body(body_keys[0], body_keys[1], nonce, header_digest, blocks)
    plaintexts = tuple(AESGCM(key).decrypt(nonce, body, header_digest) for key in body_keys)
    message = envelope._signed_message(format_version, header_digest, blake3(body).digest(), "pub")
    signature = b64(sign(keys["pub"], message))
    trailer = encode_block({"publisher_key_id": "pub", "signature": signature})
    artifacts = tuple(
        MAGICS[format_version]
        + header_block
        + envelope._keyblock(key, header_digest, keys["svc"].public_key(), "svc", format_version)
        + body
        + trailer
        for key in data_keys
    )
    return Forgery(header_block[4:], body, (artifacts[0], artifacts[1]),
                   (plaintexts[0], plaintexts[1]))  # fmt: skip


class Recording(io.BytesIO):
    """A source that remembers which byte ranges were read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def readinto(self, buffer: memoryview, /) -> int:  # type: ignore[override]
        start = self.tell()
        count = super().readinto(buffer)
        self.reads.append((start, start + count))
        return count


def open_with(keys: dict[str, PrivateKey], source: io.BytesIO) -> envelope.Opened:
    return open_artifact(
        source, private_keys={"svc": keys["svc"]},
        trusted_publishers={"pub": keys["pub"].public_key()},
        expect_model="digits", expect_version=1,
    )  # fmt: skip


def refusal(keys: dict[str, PrivateKey], data: bytes, how: str = "open") -> InvalidArtifact:
    arguments = {
        "private_keys": {"svc": keys["svc"]},
        "trusted_publishers": {"pub": keys["pub"].public_key()},
        "expect_model": "digits", "expect_version": 1,
    }  # fmt: skip
    with pytest.raises(InvalidArtifact) as caught:
        if how == "open":
            open_artifact(io.BytesIO(data), **arguments)  # type: ignore[arg-type]
        else:
            verify_artifact(io.BytesIO(data), **arguments)  # type: ignore[arg-type]
    assert str(caught.value) == InvalidArtifact.MESSAGE
    return caught.value


@pytest.mark.parametrize("format_version", [1, 2])
def test_the_forgery_is_real(keys: dict[str, PrivateKey], format_version: int) -> None:
    """The control: one body, one signed header, two plaintexts under AES-GCM."""
    forgery = forge(keys, format_version)
    assert forgery.plaintexts[0] != forgery.plaintexts[1]
    first, second = (inspect_artifact(io.BytesIO(a)) for a in forgery.artifacts)
    assert first.header == second.header and first.publisher_key_id == "pub"
    assert forgery.artifacts[0] != forgery.artifacts[1]  # only the keyblocks differ


def test_v2_commits_to_one_data_key_and_refuses_the_other_before_reading_the_body(
    keys: dict[str, PrivateKey],
) -> None:
    forgery = forge(keys, 2)
    opened = open_with(keys, io.BytesIO(forgery.artifacts[0]))
    assert opened.plaintext == forgery.plaintexts[0]  # the key the header commits to
    opened.wipe()
    source = Recording(forgery.artifacts[1])
    with pytest.raises(InvalidArtifact) as caught:
        open_with(keys, source)
    assert caught.value.code == "key_commitment" and str(caught.value) == InvalidArtifact.MESSAGE
    assert "does not commit to" in caught.value.reason and "'svc'" in caught.value.reason
    body_start = forgery.artifacts[1].index(forgery.body)
    body_end = body_start + len(forgery.body)
    assert not [(a, b) for a, b in source.reads if a < body_end and b > body_start]
    assert refusal(keys, forgery.artifacts[1], "verify").code == "key_commitment"
    with pytest.raises(InvalidArtifact) as moved:  # nor can it be rewrapped to a new key
        rewrap(
            io.BytesIO(forgery.artifacts[1]), io.BytesIO(), old_private_keys={"svc": keys["svc"]},
            new_recipient=keys["svc-new"].public_key(), new_key_id="svc-new",
        )  # fmt: skip
    assert moved.value.code == "key_commitment"


def test_v1_checks_the_plaintext_digest_on_every_open(keys: dict[str, PrivateKey]) -> None:
    """Both keyblocks unwrap and decrypt, to two plaintexts; the digest matches neither. The
    code says the signature, the unwrap and every chunk passed: only the digest refuses."""
    forgery = forge(keys, 1)
    for artifact in forgery.artifacts:
        assert refusal(keys, artifact).code == "plaintext_digest"
        assert refusal(keys, artifact, "verify").code == "plaintext_digest"


def test_a_store_writer_replacing_the_keyblock_is_refused_at_unwrap(
    keys: dict[str, PrivateKey],
) -> None:
    """Anyone can wrap a key of their own to the service for this header (HPKE needs only the
    public key); the commitment refuses it at unwrap, before any chunk is decrypted."""
    out = io.BytesIO()
    envelope.seal(
        os.urandom(200), out, model="digits", version=1, metadata={},
        recipient=keys["svc"].public_key(), recipient_key_id="svc",
        signer=keys["pub"], signer_key_id="pub", chunk_size=64,
    )  # fmt: skip
    genuine = out.getvalue()
    header_end = 12 + int.from_bytes(genuine[8:12], "big")
    keyblock_end = header_end + 4 + int.from_bytes(genuine[header_end : header_end + 4], "big")
    header_digest = hashlib.sha256(genuine[12:header_end]).digest()
    foreign = envelope._keyblock(os.urandom(32), header_digest, keys["svc"].public_key(), "svc", 2)
    assert refusal(keys, genuine[:header_end] + foreign + genuine[keyblock_end:]).code == (
        "key_commitment"
    )


# --- legacy v1 artifacts: still opened, rewrapped in v1, resealed into v2 ---------------------


def legacy(keys: dict[str, PrivateKey], data: bytes) -> bytes:
    out = io.BytesIO()
    envelope._seal(
        data, out, model="digits", version=1, metadata={"dp": {"epsilon": 1.0}},
        recipient=keys["svc"].public_key(), recipient_key_id="svc", signer=keys["pub"],
        signer_key_id="pub", chunk_size=64, data_key=os.urandom(32),
        nonce_prefix=os.urandom(7), format_version=1,
    )  # fmt: skip
    return out.getvalue()


def test_a_genuine_v1_artifact_opens_and_rewrap_keeps_it_v1(keys: dict[str, PrivateKey]) -> None:
    data = os.urandom(300)
    old = legacy(keys, data)
    opened = open_with(keys, io.BytesIO(old))
    assert opened.plaintext == data and opened.header.format == 1
    opened.wipe()
    out = io.BytesIO()
    rewrap(
        io.BytesIO(old), out, old_private_keys={"svc": keys["svc"]},
        new_recipient=keys["svc-new"].public_key(), new_key_id="svc-new",
    )  # fmt: skip
    moved = out.getvalue()
    assert moved[:8] == MAGICS[1]
    again = open_artifact(
        io.BytesIO(moved), private_keys={"svc-new": keys["svc-new"]},
        trusted_publishers={"pub": keys["pub"].public_key()},
        expect_model="digits", expect_version=1,
    )  # fmt: skip
    assert again.plaintext == data and again.header.format == 1
    again.wipe()


def test_reseal_moves_a_v1_artifact_to_v2(keys: dict[str, PrivateKey]) -> None:
    data = os.urandom(300)
    out = io.BytesIO()
    info = reseal(
        io.BytesIO(legacy(keys, data)), out, private_keys={"svc": keys["svc"]},
        trusted_publishers={"pub": keys["pub"].public_key()}, expect_model="digits",
        expect_version=1, recipient=keys["svc-new"].public_key(), recipient_key_id="svc-new",
        signer=keys["pub"], signer_key_id="pub",
    )  # fmt: skip
    assert info.header.format == 2 and info.header.metadata == {"dp": {"epsilon": 1.0}}
    assert info.header.chunk_size == 64 and out.getvalue()[:8] == MAGICS[2]
    opened = open_artifact(
        io.BytesIO(out.getvalue()), private_keys={"svc-new": keys["svc-new"]},
        trusted_publishers={"pub": keys["pub"].public_key()},
        expect_model="digits", expect_version=1,
    )  # fmt: skip
    assert opened.plaintext == data and opened.header.key_commitment is not None
    opened.wipe()
    forgery = forge(keys, 1)  # reseal opens with every check first: a forgery stays refused
    with pytest.raises(InvalidArtifact) as caught:
        reseal(
            io.BytesIO(forgery.artifacts[1]), io.BytesIO(), private_keys={"svc": keys["svc"]},
            trusted_publishers={"pub": keys["pub"].public_key()}, expect_model="digits",
            expect_version=1, recipient=keys["svc"].public_key(), recipient_key_id="svc",
            signer=keys["pub"], signer_key_id="pub",
        )  # fmt: skip
    assert caught.value.code == "plaintext_digest"
