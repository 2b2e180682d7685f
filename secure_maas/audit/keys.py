"""Where the audit MAC keys come from: the keyring in production, a mapping in tests and benches.

The audit package needs only audit keys. `KeyringAuditKeys` reads nothing else from the
keyring, so an auditor's copy of `keys/` may hold the manifest and the audit key files alone.
It imports the keyring when first used, which keeps `secure_maas.db.schema` (and so Alembic)
free of the crypto stack.

Audit keys come in generations: each rotation makes a key of the next generation active, and
records in the keyring manifest (on the key host, out of reach of whoever can write the
database) the last chain position the old key may MAC, its rotation point. Along the chain the
generation never goes back, and a key never verifies an event past its rotation point, so a
copy of an old key cannot rewrite anything written after the rotation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from secure_maas.errors import SecureMaasError

if TYPE_CHECKING:
    from secure_maas.keys import Keyring


class MissingAuditKey(SecureMaasError):
    """No audit key to write with, or an event names a key this keyring does not hold."""


@dataclass(frozen=True)
class KeyGeneration:
    """Where a key stands among the audit keys: `generation` counts rotations (1 for the first
    key); `last_seq`, once the key was rotated out, is the last chain position it may MAC
    (None while it is active, or for a key rotated before rotation points were recorded)."""

    generation: int
    last_seq: int | None = None

    def covers(self, seq: int) -> bool:
        """Whether this key may MAC the event at chain position `seq`."""
        return self.last_seq is None or seq <= self.last_seq


class AuditKeys(Protocol):
    """The audit keys a writer MACs with and a verifier checks against."""

    def active(self) -> tuple[str, bytes]:
        """The (key id, key) new events are MAC'd with."""
        ...

    def get(self, key_id: str) -> bytes | None:
        """The key with `key_id`, or None when it is unknown or no longer usable."""
        ...

    def generation(self, key_id: str) -> KeyGeneration | None:
        """The generation and rotation point of `key_id`, None when it is unknown."""
        ...

    def reload(self) -> None:
        """Read the keys again from where they are kept (another process rotated them)."""
        ...


class StaticAuditKeys:
    """Audit keys held in memory: `keys` by id, oldest generation first, `active_id` among
    them; `last_seq` gives rotation points (key id to the last seq it may MAC)."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        active_id: str,
        *,
        last_seq: Mapping[str, int] | None = None,
    ) -> None:
        if active_id not in keys:
            raise MissingAuditKey(f"active audit key {active_id!r} is not among the keys given")
        self._keys = dict(keys)
        self._active_id = active_id
        limits = dict(last_seq or {})
        self._generations = {
            key_id: KeyGeneration(number, limits.get(key_id))
            for number, key_id in enumerate(self._keys, start=1)
        }

    def active(self) -> tuple[str, bytes]:
        return self._active_id, self._keys[self._active_id]

    def get(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def generation(self, key_id: str) -> KeyGeneration | None:
        return self._generations.get(key_id)

    def reload(self) -> None:
        """Nothing to read again: the keys live in memory."""


class KeyringAuditKeys:
    """The audit keys of a `Keyring`, loaded on first use and cached by id.

    The active key is looked up on every call, so a rotation through the same `Keyring` object
    takes effect at once. A rotation made by another process is seen too: `active` reopens the
    keyring when its manifest file changed, and a writer that meets a head written with a newer
    key calls `reload` (see `chain.writing_key`). A generation is the key's place among the
    audit keys in manifest order (a rotation appends the new key).
    """

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._cache: dict[str, bytes] = {}
        self._stamp = self._manifest_stamp()

    def _manifest_stamp(self) -> tuple[int, int, int] | None:
        from secure_maas.keys.records import MANIFEST_NAME

        try:
            info = os.stat(self._keyring.folder / MANIFEST_NAME)
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def reload(self) -> None:
        from secure_maas.keys import Keyring, KeyringError

        stamp = self._manifest_stamp()
        try:
            self._keyring = Keyring.open(self._keyring.folder)
        except KeyringError as exc:
            raise MissingAuditKey(str(exc)) from exc
        self._stamp = stamp

    def active(self) -> tuple[str, bytes]:
        from secure_maas.keys import KeyKind, KeyringError

        if self._stamp is not None and self._manifest_stamp() != self._stamp:
            self.reload()
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

    def generation(self, key_id: str) -> KeyGeneration | None:
        from secure_maas.keys import KeyKind

        audit = [record for record in self._keyring.records if record.kind is KeyKind.AUDIT]
        for number, record in enumerate(audit, start=1):
            if record.id == key_id:
                return KeyGeneration(number, record.last_seq)
        return None
