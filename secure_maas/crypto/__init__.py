"""The one place secure-maas touches `cryptography`: a small recipe API with no knobs.

Callers get opaque key handles and one exception per failed check; algorithms are fixed here.
"""

from secure_maas.crypto.keys import (
    Algorithm,
    GeneratedKey,
    InvalidKey,
    PrivateKey,
    PublicKey,
    SecretKey,
    generate,
    load_private,
    load_public,
    load_secret,
)

__all__ = [
    "Algorithm",
    "GeneratedKey",
    "InvalidKey",
    "PrivateKey",
    "PublicKey",
    "SecretKey",
    "generate",
    "load_private",
    "load_public",
    "load_secret",
]
