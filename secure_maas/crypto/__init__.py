"""The one place secure-maas touches `cryptography`: a small recipe API with no knobs.

Callers get opaque key handles and one exception per failed check; algorithms are fixed here.
"""

from secure_maas.crypto.attest import Attested, authenticate_header
from secure_maas.crypto.envelope import (
    Header,
    Inspection,
    InvalidArtifact,
    Opened,
    SealInfo,
    Verified,
    inspect_artifact,
    open_artifact,
    reseal,
    rewrap,
    seal,
    verify_artifact,
)
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
from secure_maas.crypto.signing import BadSignature, sign, verify

__all__ = [
    "Algorithm",
    "Attested",
    "BadSignature",
    "GeneratedKey",
    "Header",
    "Inspection",
    "InvalidArtifact",
    "InvalidKey",
    "Opened",
    "PrivateKey",
    "PublicKey",
    "SealInfo",
    "SecretKey",
    "Verified",
    "authenticate_header",
    "generate",
    "inspect_artifact",
    "load_private",
    "load_public",
    "load_secret",
    "open_artifact",
    "reseal",
    "rewrap",
    "seal",
    "sign",
    "verify",
    "verify_artifact",
]
