import base64

import pytest

from secure_maas.crypto import (
    Algorithm,
    InvalidKey,
    generate,
    load_private,
    load_public,
    load_secret,
)


@pytest.mark.parametrize("algorithm", [Algorithm.X25519, Algorithm.ED25519])
def test_asymmetric_round_trip(algorithm: Algorithm) -> None:
    key = generate(algorithm)
    assert key.public is not None
    private = load_private(algorithm, key.private, name="k")
    public = load_public(algorithm, key.public, name="k.pub")
    assert private.public_key().fingerprint == public.fingerprint == key.fingerprint
    assert key.fingerprint.startswith("SHA256:")
    assert b"PRIVATE KEY" not in repr(private).encode()
    assert b"PRIVATE KEY" not in repr(key).encode()


def test_secret_round_trip_and_fingerprint_hides_the_key() -> None:
    key = generate(Algorithm.HMAC_SHA256)
    assert key.public is None
    secret = load_secret(key.private, name="audit.key")
    assert secret.fingerprint == key.fingerprint
    assert len(secret.material) == 32
    assert base64.b64encode(secret.material).decode() not in repr(secret)
    raw = base64.b64encode(secret.material).decode().rstrip("=")
    assert raw not in key.fingerprint


def test_ed25519_jwk_is_rfc8037() -> None:
    key = generate(Algorithm.ED25519)
    assert key.public is not None
    jwk = load_public(Algorithm.ED25519, key.public, name="p").jwk()
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519"
    assert len(base64.urlsafe_b64decode(jwk["x"] + "==")) == 32
    x_key = generate(Algorithm.X25519)
    assert x_key.public is not None
    with pytest.raises(InvalidKey):
        load_public(Algorithm.X25519, x_key.public, name="p").jwk()


def test_corrupted_private_key_names_the_file() -> None:
    key = generate(Algorithm.ED25519)
    corrupted = key.private.replace(b"M", b"A", 3)[:-20] + b"\n"
    with pytest.raises(InvalidKey, match="keys/jwt.key is not a readable ed25519 private key"):
        load_private(Algorithm.ED25519, corrupted, name="keys/jwt.key")


def test_key_of_the_wrong_algorithm_is_refused() -> None:
    x_key = generate(Algorithm.X25519)
    with pytest.raises(InvalidKey, match="expected ed25519"):
        load_private(Algorithm.ED25519, x_key.private, name="k")
    assert x_key.public is not None
    with pytest.raises(InvalidKey, match="expected ed25519"):
        load_public(Algorithm.ED25519, x_key.public, name="k")


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"not base64!!", "not a readable secret key"), (base64.b64encode(b"x" * 31), "31 bytes")],
)
def test_bad_secret_is_refused(data: bytes, expected: str) -> None:
    with pytest.raises(InvalidKey, match=expected):
        load_secret(data, name="audit.key")
