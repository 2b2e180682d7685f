"""Where the audit MAC keys come from: the keyring in production, a mapping in tests and benches.

The audit package needs only audit keys. `KeyringAuditKeys` reads nothing else from the
keyring, so an auditor's copy of `keys/` may hold the manifest and the audit key files alone.
It imports the keyring when first used, which keeps `secure_maas.db.schema` (and so Alembic)
free of the crypto stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from secure_maas.errors import SecureMaasError

if TYPE_CHECKING:
    from secure_maas.keys import Keyring


class MissingAuditKey(SecureMaasError):
    """No audit key to write with, or an event names a key this keyring does not hold."""


class AuditKeys(Protocol):
    """The audit keys a writer MACs with and a verifier checks against."""

    def active(self) -> tuple[str, bytes]:
        """The (key id, key) new events are MAC'd with."""
        ...

    def get(self, key_id: str) -> bytes | None:
        """The key with `key_id`, or None when it is unknown or no longer usable."""
        ...


class StaticAuditKeys:
    """Audit keys held in memory: `keys` by id, `active_id` among them."""

    def __init__(self, keys: Mapping[str, bytes], active_id: str) -> None:
        if active_id not in keys:
            raise MissingAuditKey(f"active audit key {active_id!r} is not among the keys given")
        self._keys = dict(keys)
        self._active_id = active_id

    def active(self) -> tuple[str, bytes]:
        return self._active_id, self._keys[self._active_id]

    def get(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)


class KeyringAuditKeys:
    """The audit keys of a `Keyring`, loaded on first use and cached by id.

    The active key is looked up on every call, so a rotation through the same `Keyring` object
    takes effect at once; a process that must see rotations made elsewhere reopens the keyring.
    """

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._cache: dict[str, bytes] = {}

    def active(self) -> tuple[str, bytes]:
        from secure_maas.keys import KeyKind, KeyringError

        try:
            key_id = self._keyring.active(KeyKind.AUDIT).id
        except KeyringError as exc:
            raise MissingAuditKey(str(exc)) from exc
        key = self.get(key_id)
        if key is None:
            raise MissingAuditKey(f"active audit key {key_id} cannot be loaded")
        return key_id, key

    def get(self, key_id: str) -> bytes | None:
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        from secure_maas.keys import KeyKind

        usable = {record.id for record in self._keyring.usable(KeyKind.AUDIT)}
        if key_id not in usable:
            return None
        key = self._keyring.secret_key(key_id).material
        self._cache[key_id] = key
        return key
