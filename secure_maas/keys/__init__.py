"""The keyring in `keys/`: service, publisher, JWT and audit keys, with rotation and retirement."""

from secure_maas.keys.keyring import InitReport, Keyring, KeyringError
from secure_maas.keys.permissions import InsecurePermissions
from secure_maas.keys.records import KeyKind, KeyRecord, KeyStatus

__all__ = [
    "InitReport",
    "InsecurePermissions",
    "KeyKind",
    "KeyRecord",
    "KeyStatus",
    "Keyring",
    "KeyringError",
]
