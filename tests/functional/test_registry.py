"""The sealed registry end to end on both databases: publish, open, verify, refuse, rewrap.

`publish` reads the written file back before it registers a row, and a disk that lied is
refused with nothing registered; on a publishing host without the service's private key (a
separate training team), the read-back checks what the publisher's public key can: the
header, the signature and the body's digest (nothing is decrypted).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.config import Settings
from secure_maas.crypto.envelope import InvalidArtifact
from secure_maas.db.session import session_factory, session_scope
from secure_maas.db.state import current
from secure_maas.keys import KeyKind, Keyring
from secure_maas.keys.records import read_manifest, write_manifest
from secure_maas.registry import artifacts, catalog
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.registry.models import MODELS_SCOPE, ModelVersion, Privacy, VersionStatus
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore, InvalidName, SealedStore, StoreError

SIGNATURE = {"inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}], "outputs": []}
IMPORTED = Provenance(Privacy.IMPORTED)


@pytest.fixture
def keyring(settings: Settings) -> Keyring:
    keyring, _ = Keyring.init(settings.keys_dir)
    return keyring


@pytest.fixture
def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.store_dir)


def put(
    engine: Engine,
    store: SealedStore,
    keyring: Keyring,
    name: str,
    payload: bytes,
    provenance: Provenance = IMPORTED,
) -> ModelVersion:
    return publish(
        engine,
        store,
        keyring,
        name=name,
        payload=payload,
        signature=SIGNATURE,
        provenance=provenance,
        created_by="tester",
    )


class ThroughStore:
    """A `SealedStore` that hands every call to a real one; a fake overrides what it fakes."""

    def __init__(self, real: ArtifactStore) -> None:
        self.real = real

    @property
    def root(self) -> Path:
        return self.real.root

    def relative_path(self, name: str, version: int) -> str:
        return self.real.relative_path(name, version)

    def write(self, name: str, version: int, produce: Callable[[BinaryIO], None]) -> Path:
        return self.real.write(name, version, produce)

    def replace(
        self, relative: str, produce: Callable[[BinaryIO], None], check: Callable[[Path], None]
    ) -> Path:
        return self.real.replace(relative, produce, check)

    def reading(self, relative: str) -> AbstractContextManager[io.BufferedReader]:
        return self.real.reading(relative)

    def open(self, relative: str) -> io.BufferedReader:
        return self.real.open(relative)

    def remove(self, relative: str) -> None:
        self.real.remove(relative)

    def files(self) -> Iterator[str]:
        return self.real.files()


class LyingDisk(ThroughStore):
    """A disk that reads back other bytes than were written: one flipped, `offset` from the end
    (the last one unless told)."""

    def __init__(self, real: ArtifactStore, offset: int = 1) -> None:
        super().__init__(real)
        self.offset = offset

    def open(self, relative: str) -> io.BufferedReader:
        with self.real.open(relative) as handle:
            data = bytearray(handle.read())
        data[len(data) - self.offset] ^= 0x01
        return io.BufferedReader(io.BytesIO(bytes(data)))


class InterruptedAtSecondReplace(ThroughStore):
    """The operator's ^C in the middle of a run: the second file replaced never is."""

    def __init__(self, real: ArtifactStore) -> None:
        super().__init__(real)
        self.replaced = 0

    def replace(
        self, relative: str, produce: Callable[[BinaryIO], None], check: Callable[[Path], None]
    ) -> Path:
        self.replaced += 1
        if self.replaced == 2:
            raise KeyboardInterrupt
        return super().replace(relative, produce, check)


def row_of(engine: Engine, ref: str) -> ModelVersion:
    with session_scope(session_factory(engine)) as session:
        row = catalog.resolve(session, ModelRef.parse(ref), include_disabled=True)
        _ = row.model.name
        return row


def open_ref(engine: Engine, store: ArtifactStore, keyring: Keyring, ref: str) -> bytes:
    opened = artifacts.open_version(store, Keyring.open(keyring.folder), row_of(engine, ref))
    return bytes(opened.plaintext)


def refused(engine: Engine, store: ArtifactStore, keyring: Keyring, ref: str) -> InvalidArtifact:
    with pytest.raises(InvalidArtifact) as caught:
        open_ref(engine, store, keyring, ref)
    assert str(caught.value) == "invalid or tampered artifact"  # nothing for the caller
    return caught.value


def test_publish_and_open_round_trip(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring
) -> None:
    payload = secrets.token_bytes(3 * 1024 * 1024 + 17)
    dp = Provenance(
        Privacy.DP,
        dp={"epsilon": 2.5, "delta": 1e-5, "noise_multiplier": 1.1},
        dataset_name="digits",
        dataset_fingerprint="ab" * 32,
    )
    first = put(migrated_engine, store, keyring, "digits", payload, dp)
    second = put(migrated_engine, store, keyring, "digits", b"v2")
    assert (first.version, second.version) == (1, 2)
    assert first.dp_epsilon == 2.5 and first.privacy == "dp"
    assert (store.root / "digits" / "1.sealed").is_file()
    assert payload not in (store.root / "digits" / "1.sealed").read_bytes()
    assert open_ref(migrated_engine, store, keyring, "digits:1") == payload
    assert open_ref(migrated_engine, store, keyring, "digits") == b"v2"  # newest by default
    with session_scope(session_factory(migrated_engine)) as session:
        assert current(session, MODELS_SCOPE) == 2


def test_labels_and_status(migrated_engine: Engine, store: ArtifactStore, keyring: Keyring) -> None:
    for payload in (b"one", b"two"):
        put(migrated_engine, store, keyring, "churn", payload)
    factory = session_factory(migrated_engine)
    with session_scope(factory) as session:
        catalog.set_label(session, "churn", 1, "stable", actor="admin")
        catalog.set_label(session, "churn", 2, "canary", actor="admin")
    assert open_ref(migrated_engine, store, keyring, "churn@stable") == b"one"
    with session_scope(factory) as session:
        catalog.set_label(session, "churn", 2, "stable", actor="admin")  # a label moves
        catalog.set_status(session, "churn", 2, VersionStatus.DISABLED)
    with session_scope(factory) as session:
        assert catalog.resolve(session, ModelRef("churn")).version == 1
        with pytest.raises(ModelNotFound, match="disabled"):
            catalog.resolve(session, ModelRef.parse("churn@stable"))
        with pytest.raises(ModelNotFound, match="no version 7"):
            catalog.resolve(session, ModelRef("churn", version=7))
        with pytest.raises(ModelNotFound, match="no model named"):
            catalog.resolve(session, ModelRef("absent"))


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "x" * 65, "a..b", "name\n"])
def test_names_that_could_escape_the_store_are_refused(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, name: str
) -> None:
    with pytest.raises(InvalidName):
        put(migrated_engine, store, keyring, name, b"x")
    assert not store.root.exists() or list(store.files()) == []


def test_concurrent_publishes_get_distinct_versions(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring
) -> None:
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for round_ in range(3):
                put(migrated_engine, store, keyring, "race", f"{index}-{round_}".encode())
        except BaseException as exc:  # checked below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_scope(session_factory(migrated_engine)) as session:
        versions = sorted(v.version for v in catalog.get_model(session, "race").versions)
        findings = list(artifacts.verify_all(session, store, keyring))
    assert versions == list(range(1, 13))
    assert all(f.ok for f in findings) and len(findings) == 12


def test_failed_publish_leaves_nothing(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring
) -> None:
    put(migrated_engine, store, keyring, "m", b"kept")
    with pytest.raises(InvalidArtifact):  # the read-back check catches the disk's lie
        put(migrated_engine, LyingDisk(store), keyring, "m", b"lost")
    assert sorted(store.files()) == ["m/1.sealed"]
    with session_scope(session_factory(migrated_engine)) as session:
        assert [v.version for v in catalog.get_model(session, "m").versions] == [1]


def test_unwritable_store_is_a_clean_error(
    migrated_engine: Engine, keyring: Keyring, tmp_path: Path
) -> None:
    blocker = tmp_path / "store-is-a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create store folder"):
        put(migrated_engine, ArtifactStore(blocker), keyring, "m", b"x")
    with migrated_engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM model_versions")).scalar() == 0


# -- tampering: each is refused with a reason for the audit log, and the row stays as it was --


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def body_offset(path: Path) -> int:
    data = path.read_bytes()
    header_len = int.from_bytes(data[8:12], "big")
    keyblock_at = 12 + header_len
    keyblock_len = int.from_bytes(data[keyblock_at : keyblock_at + 4], "big")
    return keyblock_at + 4 + keyblock_len


@pytest.fixture
def sealed(migrated_engine: Engine, store: ArtifactStore, keyring: Keyring) -> Path:
    put(migrated_engine, store, keyring, "a", secrets.token_bytes(2 * 1024 * 1024 + 5))
    put(migrated_engine, store, keyring, "a", secrets.token_bytes(1000))
    put(migrated_engine, store, keyring, "b", secrets.token_bytes(1000))
    return store.root / "a" / "1.sealed"


@pytest.mark.parametrize("where", ["header", "body", "tag", "trailer"])
def test_bit_flips_are_refused(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, sealed: Path, where: str
) -> None:
    size = sealed.stat().st_size
    offsets = {
        "header": 20,
        "body": body_offset(sealed) + 100,
        "tag": body_offset(sealed) + (1 << 20) + 3,
        "trailer": size - 10,
    }
    flip(sealed, offsets[where])
    error = refused(migrated_engine, store, keyring, "a:1")
    assert error.code and error.reason


def test_truncated_last_chunk(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, sealed: Path
) -> None:
    data = sealed.read_bytes()
    cut = data.rfind(b'{"publisher_key_id"') - 4  # the trailer's length field
    sealed.write_bytes(data[: cut - 3] + data[cut:])
    refused(migrated_engine, store, keyring, "a:1")


def test_swapped_chunks(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, sealed: Path
) -> None:
    data = sealed.read_bytes()
    start, chunk = body_offset(sealed), (1 << 20) + 16
    first, second = data[start : start + chunk], data[start + chunk : start + 2 * chunk]
    sealed.write_bytes(data[:start] + second + first + data[start + 2 * chunk :])
    refused(migrated_engine, store, keyring, "a:1")


@pytest.mark.parametrize(("source", "target"), [("b/1", "a/2"), ("a/1", "a/2")])
def test_artifact_copied_over_another(
    migrated_engine: Engine,
    store: ArtifactStore,
    keyring: Keyring,
    sealed: Path,
    source: str,
    target: str,
) -> None:
    (store.root / f"{target}.sealed").write_bytes((store.root / f"{source}.sealed").read_bytes())
    error = refused(migrated_engine, store, keyring, target.replace("/", ":"))
    assert error.code and error.reason  # identity, size or digest: refused either way


def test_sealed_to_another_service_key(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, tmp_path: Path
) -> None:
    put(migrated_engine, store, keyring, "m", b"payload")
    other, _ = Keyring.init(tmp_path / "other-keys")
    with pytest.raises(InvalidArtifact) as caught:
        artifacts.open_version(store, other, row_of(migrated_engine, "m:1"))
    assert caught.value.code


def test_retired_and_trusted_publishers(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, tmp_path: Path
) -> None:
    put(migrated_engine, store, keyring, "m", b"by the first publisher")
    old = keyring.active(KeyKind.PUBLISHER)
    keyring.rotate(KeyKind.PUBLISHER)
    assert open_ref(migrated_engine, store, keyring, "m:1") == b"by the first publisher"
    keyring.retire(old.id)
    assert "publisher" in refused(migrated_engine, store, keyring, "m:1").reason
    # A publisher from another team is accepted once trusted.
    team, _ = Keyring.init(tmp_path / "team-keys")
    service = keyring.active(KeyKind.SERVICE)
    assert service.public_file is not None
    (team.folder / service.public_file).write_bytes(
        (keyring.folder / service.public_file).read_bytes()
    )
    team_manifest = json.loads((team.folder / "keyring.json").read_text())
    for key in team_manifest["keys"]:
        if key["kind"] == "service":
            key.update(
                id=service.id,
                fingerprint=service.fingerprint,
                public_file=service.public_file,
                private_file=None,  # a training team holds only the service's public key
            )
    (team.folder / "keyring.json").write_text(json.dumps(team_manifest))
    put(migrated_engine, store, Keyring.open(team.folder), "m", b"from radiology")
    assert "publisher" in refused(migrated_engine, store, keyring, "m:2").reason
    publisher = team.active(KeyKind.PUBLISHER)
    assert publisher.public_file is not None
    keyring.trust_publisher((team.folder / publisher.public_file).read_bytes(), label="radiology")
    assert open_ref(migrated_engine, store, keyring, "m:2") == b"from radiology"


@pytest.mark.parametrize(
    "content", [b"", b"random" + secrets.token_bytes(5000)], ids=["empty", "random"]
)
def test_zero_length_and_random_files(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, sealed: Path, content: bytes
) -> None:
    sealed.write_bytes(content)
    refused(migrated_engine, store, keyring, "a:1")


def test_header_claiming_100_gb(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, sealed: Path
) -> None:
    data = sealed.read_bytes()
    header_len = int.from_bytes(data[8:12], "big")
    header = json.loads(data[12 : 12 + header_len])
    header["plaintext_length"] = 100 * 10**9
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    sealed.write_bytes(
        data[:8] + len(encoded).to_bytes(4, "big") + encoded + data[12 + header_len :]
    )
    error = refused(migrated_engine, store, keyring, "a:1")
    assert error.code


def test_missing_file_and_file_without_row(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, sealed: Path
) -> None:
    sealed.unlink()
    assert refused(migrated_engine, store, keyring, "a:1").code == "missing_file"
    (store.root / "ghost").mkdir()
    (store.root / "ghost" / "9.sealed").write_bytes(b"left over")
    with session_scope(session_factory(migrated_engine)) as session:
        findings = {(f.model, f.version): f for f in artifacts.verify_all(session, store, keyring)}
    assert findings[("a", 1)].code == "missing_file"
    assert findings[("ghost", None)].code == "orphan_file"
    assert findings[("a", 2)].ok and findings[("b", 1)].ok


def test_rewrap_moves_every_artifact_to_the_new_key_and_resumes(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring
) -> None:
    payloads = {f"m:{i}": secrets.token_bytes(300 + i) for i in range(1, 4)}
    for payload in payloads.values():
        put(migrated_engine, store, keyring, "m", payload)
    bodies = {ref: (store.root / f"m/{ref[-1]}.sealed").read_bytes()[-400:] for ref in payloads}
    old = keyring.active(KeyKind.SERVICE)
    keyring.rotate(KeyKind.SERVICE)

    interrupted = InterruptedAtSecondReplace(store)
    with pytest.raises(KeyboardInterrupt):
        artifacts.rewrap_all(migrated_engine, interrupted, Keyring.open(keyring.folder))
    for ref, payload in payloads.items():  # nothing undecryptable in between
        assert open_ref(migrated_engine, store, keyring, ref) == payload

    report = artifacts.rewrap_all(migrated_engine, store, Keyring.open(keyring.folder))
    assert len(report.rewrapped) == 2 and len(report.already) == 1
    keyring = Keyring.open(keyring.folder)
    keyring.retire(old.id)
    for ref, payload in payloads.items():
        assert open_ref(migrated_engine, store, keyring, ref) == payload
        assert row_of(migrated_engine, ref).service_key_id == keyring.active(KeyKind.SERVICE).id
        assert (store.root / f"m/{ref[-1]}.sealed").read_bytes()[-400:] == bodies[ref]
    again = artifacts.rewrap_all(migrated_engine, store, keyring)
    assert report.rewrapped and not again.rewrapped and len(again.already) == 3
    assert not any(name.endswith(".tmp") for name in os.listdir(store.root / "m"))


def test_post_quantum_service_key_seals_opens_and_rewraps(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring
) -> None:
    put(migrated_engine, store, keyring, "m", b"classic")
    keyring.rotate(KeyKind.SERVICE, pq=True)
    pq_keyring = Keyring.open(keyring.folder)
    put(migrated_engine, store, pq_keyring, "m", b"post-quantum")
    assert row_of(migrated_engine, "m:2").service_key_id == pq_keyring.active(KeyKind.SERVICE).id
    report = artifacts.rewrap_all(migrated_engine, store, pq_keyring)
    assert report.rewrapped == ["m/1.sealed"]
    assert open_ref(migrated_engine, store, pq_keyring, "m:1") == b"classic"
    assert open_ref(migrated_engine, store, pq_keyring, "m:2") == b"post-quantum"


# -- the read-back on a host without the service's private key ------------------------------

PAYLOAD = bytes(range(256)) * 64


def publishing_host(keyring: Keyring) -> Keyring:
    """The keys folder as a separate training team holds it: the service's public key only."""
    folder = keyring.folder
    service = keyring.active(KeyKind.SERVICE)
    assert service.private_file is not None
    (folder / service.private_file).unlink()
    records = [
        dataclasses.replace(r, private_file=None) if r.id == service.id else r
        for r in read_manifest(folder)
    ]
    write_manifest(folder, records)
    reopened = Keyring.open(folder)
    assert reopened.get(service.id).private_file is None
    return reopened


def versions(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM model_versions")).scalar_one())


def test_a_host_without_the_service_key_publishes_and_checks_the_signature(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring
) -> None:
    host = publishing_host(keyring)
    assert put(migrated_engine, store, host, "m", PAYLOAD).version == 1


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (200, "bad_signature"),  # a byte of the body: the digest the signature covers changes
        (len(PAYLOAD), "bad_signature"),  # a byte deep inside the body
    ],
)
def test_a_write_the_disk_changed_is_refused_without_the_service_key(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, offset: int, code: str
) -> None:
    host = publishing_host(keyring)
    with pytest.raises(InvalidArtifact) as caught:
        put(migrated_engine, LyingDisk(store, offset), host, "m", PAYLOAD)
    assert caught.value.code == code
    assert versions(migrated_engine) == 0
    assert list(store.files()) == []


class HeaderLie(ThroughStore):
    """A disk that reads back a bit of the signed metadata flipped (`"x"` becomes `"y"`):
    still canonical JSON, with the same name and version."""

    def open(self, relative: str) -> io.BufferedReader:
        with self.real.open(relative) as handle:
            data = handle.read()
        assert data.count(b'"name":"x"') == 1
        return io.BufferedReader(io.BytesIO(data.replace(b'"name":"x"', b'"name":"y"')))


def test_a_header_changed_on_disk_is_refused_without_the_service_key(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring
) -> None:
    """Framing, name and version alone would pass this header: the signature refuses it."""
    host = publishing_host(keyring)
    with pytest.raises(InvalidArtifact) as caught:
        put(migrated_engine, HeaderLie(store), host, "m", PAYLOAD)
    assert caught.value.code == "bad_signature"
    assert versions(migrated_engine) == 0
