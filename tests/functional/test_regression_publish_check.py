"""Regression (issue 15.7d): on a publishing host without the service private key, the written
artifact's signature was not checked, although `publish` says it reads the file back.

`_check_written` only parsed the framing and compared the name and version, so a disk (or a
store) that changed a byte of the body or of the header's metadata between the write and the
read-back went unnoticed, and the row recorded the digests of what was meant to be written. Now
the header, the signature and the body's digest are checked with the publisher's public key
(nothing is decrypted: there is no key to do it), and a bad write is refused with nothing
registered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.config import Settings
from secure_maas.crypto.envelope import InvalidArtifact
from secure_maas.keys import KeyKind, Keyring
from secure_maas.keys.records import read_manifest, write_manifest
from secure_maas.registry.models import Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore

SIGNATURE = {"inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}], "outputs": []}
PAYLOAD = bytes(range(256)) * 64


class LyingStore(ArtifactStore):
    """A store whose disk changes one byte of what was written, at `offset` from the end."""

    def __init__(self, root: Path, offset: int) -> None:
        super().__init__(root)
        self.offset = offset

    def write(self, name: str, version: int, produce: Callable[[BinaryIO], None]) -> Path:
        path = super().write(name, version, produce)
        data = bytearray(path.read_bytes())
        data[len(data) - self.offset] ^= 0x01
        path.write_bytes(bytes(data))
        return path


def publishing_host(settings: Settings) -> Keyring:
    """A keys folder as a separate training team holds it: the service's public key only."""
    keyring, _ = Keyring.init(settings.keys_dir)
    service = keyring.active(KeyKind.SERVICE)
    assert service.private_file is not None
    (settings.keys_dir / service.private_file).unlink()
    records = [
        dataclasses.replace(r, private_file=None) if r.id == service.id else r
        for r in read_manifest(settings.keys_dir)
    ]
    write_manifest(settings.keys_dir, records)
    reopened = Keyring.open(settings.keys_dir)
    assert reopened.get(service.id).private_file is None
    return reopened


def put(engine: Engine, store: ArtifactStore, keyring: Keyring) -> int:
    return publish(
        engine, store, keyring, name="m", payload=PAYLOAD, signature=SIGNATURE,
        provenance=Provenance(Privacy.IMPORTED), created_by="tests",
    ).version  # fmt: skip


def versions(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM model_versions")).scalar_one())


def test_a_host_without_the_service_key_publishes_and_checks_the_signature(
    settings: Settings, migrated_engine: Engine
) -> None:
    keyring = publishing_host(settings)
    store = ArtifactStore(settings.store_dir)
    assert put(migrated_engine, store, keyring) == 1


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (200, "bad_signature"),  # a byte of the body: the digest the signature covers changes
        (len(PAYLOAD), "bad_signature"),  # a byte deep inside the body
    ],
)
def test_a_write_the_disk_changed_is_refused_without_the_service_key(
    settings: Settings, migrated_engine: Engine, offset: int, code: str
) -> None:
    keyring = publishing_host(settings)
    store = LyingStore(settings.store_dir, offset)
    with pytest.raises(InvalidArtifact) as caught:
        put(migrated_engine, store, keyring)
    assert caught.value.code == code
    assert versions(migrated_engine) == 0
    assert list(store.files()) == []


def test_a_header_changed_on_disk_is_refused_without_the_service_key(
    settings: Settings, migrated_engine: Engine
) -> None:
    """A bit of the signed metadata flipped (`"x"` becomes `"y"`): still canonical JSON, the
    same name and version, so the old check passed it."""
    keyring = publishing_host(settings)

    class HeaderLie(ArtifactStore):
        def write(self, name: str, version: int, produce: Callable[[BinaryIO], None]) -> Path:
            path = super().write(name, version, produce)
            data = path.read_bytes()
            assert data.count(b'"name":"x"') == 1
            path.write_bytes(data.replace(b'"name":"x"', b'"name":"y"'))
            return path

    store = HeaderLie(settings.store_dir)
    with pytest.raises(InvalidArtifact) as caught:
        put(migrated_engine, store, keyring)
    assert caught.value.code == "bad_signature"
    assert versions(migrated_engine) == 0
