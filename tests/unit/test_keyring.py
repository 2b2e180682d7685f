import json
import os
import stat
import threading
from pathlib import Path

import pytest

from secure_maas.crypto import InvalidKey
from secure_maas.keys import InsecurePermissions, KeyKind, Keyring, KeyringError, KeyStatus
from secure_maas.keys.records import ManifestError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def keyring(folder: Path) -> Keyring:
    keyring, _report = Keyring.init(folder)
    return keyring


def test_init_creates_one_active_key_of_each_kind(folder: Path) -> None:
    keyring, report = Keyring.init(folder)
    assert {r.kind for r in report.created} == set(KeyKind)
    assert mode(folder) == 0o700
    for record in keyring.records:
        assert record.status is KeyStatus.ACTIVE
        assert record.id.startswith(record.kind.id_prefix + "-")
        assert record.private_file is not None
        assert mode(folder / record.private_file) == 0o600
    keyring.check()
    jwks = json.loads((folder / "jwks.json").read_text())
    assert [k["kid"] for k in jwks["keys"]] == [keyring.active(KeyKind.JWT).id]


def test_second_init_changes_nothing(folder: Path) -> None:
    Keyring.init(folder)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    _keyring, report = Keyring.init(folder)
    assert not report.changed
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert after == before


def test_init_tightens_a_loose_existing_folder(folder: Path) -> None:
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    (folder / "README.md").write_text("kept")
    _keyring, report = Keyring.init(folder)
    assert report.tightened
    assert mode(folder) == 0o700
    assert (folder / "README.md").read_text() == "kept"


def test_keys_folder_that_is_a_file_is_refused(folder: Path) -> None:
    folder.write_text("oops")
    with pytest.raises(KeyringError, match="is a file, not a folder"):
        Keyring.init(folder)
    with pytest.raises(KeyringError, match="is not a folder"):
        Keyring.open(folder)


def test_missing_folder_says_how_to_create_it(folder: Path) -> None:
    with pytest.raises(KeyringError, match="keys init"):
        Keyring.open(folder)


def test_private_key_readable_by_others_is_refused_with_the_fix(keyring: Keyring) -> None:
    record = keyring.active(KeyKind.JWT)
    assert record.private_file is not None
    path = keyring.folder / record.private_file
    os.chmod(path, 0o644)
    with pytest.raises(InsecurePermissions, match=rf"fix with: chmod 600 {path}"):
        keyring.private_key(record.id)
    with pytest.raises(InsecurePermissions):
        Keyring.init(keyring.folder)  # init checks existing keys and never papers over this


def test_loose_audit_key_is_refused(keyring: Keyring) -> None:
    record = keyring.active(KeyKind.AUDIT)
    assert record.private_file is not None
    os.chmod(keyring.folder / record.private_file, 0o640)
    with pytest.raises(InsecurePermissions, match="chmod 600"):
        keyring.secret_key(record.id)


def test_loose_folder_is_refused_on_open(keyring: Keyring) -> None:
    os.chmod(keyring.folder, 0o755)
    with pytest.raises(InsecurePermissions, match=rf"fix with: chmod 700 {keyring.folder}"):
        Keyring.open(keyring.folder)


@pytest.mark.parametrize("kind", list(KeyKind))
def test_corrupted_key_file_is_named(keyring: Keyring, kind: KeyKind) -> None:
    record = keyring.active(kind)
    assert record.private_file is not None
    path = keyring.folder / record.private_file
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(InvalidKey, match=str(path)):
        keyring.check()


def test_swapped_key_files_are_detected(keyring: Keyring) -> None:
    jwt, publisher = keyring.active(KeyKind.JWT), keyring.active(KeyKind.PUBLISHER)
    assert jwt.private_file is not None and publisher.private_file is not None
    jwt_path, pub_path = keyring.folder / jwt.private_file, keyring.folder / publisher.private_file
    jwt_bytes, pub_bytes = jwt_path.read_bytes(), pub_path.read_bytes()
    jwt_path.write_bytes(pub_bytes)
    pub_path.write_bytes(jwt_bytes)
    with pytest.raises(InvalidKey, match="does not match the fingerprint"):
        keyring.private_key(jwt.id)


def test_missing_key_file_is_named(keyring: Keyring) -> None:
    record = keyring.active(KeyKind.SERVICE)
    assert record.private_file is not None
    (keyring.folder / record.private_file).unlink()
    with pytest.raises(KeyringError, match=rf"{record.private_file} is missing"):
        keyring.private_key(record.id)


def test_corrupted_manifest_is_refused(keyring: Keyring) -> None:
    (keyring.folder / "keyring.json").write_text("{not json")
    with pytest.raises(ManifestError, match="keyring.json is corrupted"):
        Keyring.open(keyring.folder)


def test_rotate_keeps_the_old_key_for_verification(keyring: Keyring) -> None:
    old = keyring.active(KeyKind.JWT)
    new = keyring.rotate(KeyKind.JWT)
    reopened = Keyring.open(keyring.folder)
    assert reopened.active(KeyKind.JWT).id == new.id
    assert reopened.get(old.id).status is KeyStatus.PREVIOUS
    assert [r.id for r in reopened.usable(KeyKind.JWT)] == [new.id, old.id]
    assert {k["kid"] for k in reopened.jwks()["keys"]} == {new.id, old.id}
    reopened.private_key(old.id)  # still loadable


def test_retire_removes_trust(keyring: Keyring) -> None:
    old = keyring.active(KeyKind.JWT)
    with pytest.raises(KeyringError, match="rotate --kind jwt"):
        keyring.retire(old.id)
    keyring.rotate(KeyKind.JWT)
    retired = keyring.retire(old.id)
    assert retired.status is KeyStatus.RETIRED and retired.retired_at is not None
    reopened = Keyring.open(keyring.folder)
    assert old.id not in {k["kid"] for k in reopened.jwks()["keys"]}
    on_disk = json.loads((keyring.folder / "jwks.json").read_text())
    assert old.id not in {k["kid"] for k in on_disk["keys"]}
    with pytest.raises(KeyringError, match="already retired"):
        reopened.retire(old.id)
    with pytest.raises(KeyringError, match="no key with id"):
        reopened.retire("jwt-000000000000")


def test_audit_keys_are_never_retired(keyring: Keyring) -> None:
    old = keyring.active(KeyKind.AUDIT)
    keyring.rotate(KeyKind.AUDIT)
    with pytest.raises(KeyringError, match="need it to verify"):
        keyring.retire(old.id)


def test_trust_another_publisher(keyring: Keyring, tmp_path: Path) -> None:
    other, _ = Keyring.init(tmp_path / "other")
    record = other.active(KeyKind.PUBLISHER)
    assert record.public_file is not None
    pem = (other.folder / record.public_file).read_bytes()
    trusted = keyring.trust_publisher(pem, label="radiology")
    assert trusted.status is KeyStatus.TRUSTED and trusted.private_file is None
    assert trusted.id == record.id
    assert keyring.public_key(trusted.id).fingerprint == record.fingerprint
    assert {r.id for r in Keyring.open(keyring.folder).usable(KeyKind.PUBLISHER)} == {
        keyring.active(KeyKind.PUBLISHER).id,
        trusted.id,
    }
    with pytest.raises(KeyringError, match="already in the keyring"):
        keyring.trust_publisher(pem)
    with pytest.raises(InvalidKey):
        keyring.trust_publisher(b"-----BEGIN PUBLIC KEY-----\ngarbage\n")


def test_concurrent_rotations_leave_one_active_key(keyring: Keyring) -> None:
    errors: list[BaseException] = []

    def rotate() -> None:
        try:
            Keyring.open(keyring.folder).rotate(KeyKind.SERVICE)
        except BaseException as exc:  # collected and re-checked below
            errors.append(exc)

    threads = [threading.Thread(target=rotate) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    records = Keyring.open(keyring.folder).records
    service = [r for r in records if r.kind is KeyKind.SERVICE]
    assert len(service) == 7
    assert [r.status for r in service].count(KeyStatus.ACTIVE) == 1


def test_post_quantum_service_key(folder: Path) -> None:
    keyring, _ = Keyring.init(folder, pq=True)
    service = keyring.active(KeyKind.SERVICE)
    assert service.algorithm == "mlkem768-x25519"
    assert keyring.active(KeyKind.JWT).algorithm == "ed25519"  # --pq touches the service key only
    keyring.check()
    assert keyring.private_key(service.id).public_key().fingerprint == service.fingerprint
    with pytest.raises(KeyringError, match="service keys only"):
        keyring.rotate(KeyKind.JWT, pq=True)
    with pytest.raises(KeyringError, match="service keys only"):
        keyring.rotate(KeyKind.JWT, classical=True)
    with pytest.raises(KeyringError, match="contradict"):
        keyring.rotate(KeyKind.SERVICE, pq=True, classical=True)
    # A rotation keeps the family: only an explicit flag leaves the hybrid.
    assert keyring.rotate(KeyKind.SERVICE).algorithm == "mlkem768-x25519"
    classic = keyring.rotate(KeyKind.SERVICE, classical=True)
    assert classic.algorithm == "x25519"
    assert keyring.rotate(KeyKind.SERVICE).algorithm == "x25519"
    assert keyring.rotate(KeyKind.SERVICE, pq=True).algorithm == "mlkem768-x25519"


# -- the published key set covers every JWT key the manifest trusts, whatever stops a change --
# `jwks.json` is written before the manifest, so a rotation stopped between the two writes has
# not taken effect. The interruption is real, without a mock: `jwks.json` is replaced by a
# folder, so writing it fails.


def published_kids(folder: Path) -> set[str]:
    return {key["kid"] for key in json.loads((folder / "jwks.json").read_text())["keys"]}


def test_a_rotation_whose_key_set_cannot_be_written_does_not_take_effect(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keyring, _ = Keyring.init(folder)
    before = keyring.active(KeyKind.JWT).id
    (folder / "jwks.json").unlink()
    (folder / "jwks.json").mkdir()
    (folder / "jwks.json" / "blocker").write_text("x")

    with pytest.raises(OSError):
        keyring.rotate(KeyKind.JWT)

    assert Keyring.open(folder).active(KeyKind.JWT).id == before
    (folder / "jwks.json" / "blocker").unlink()
    (folder / "jwks.json").rmdir()


def test_after_every_change_the_key_set_covers_the_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keyring, _ = Keyring.init(folder)
    old = keyring.active(KeyKind.JWT).id
    new = keyring.rotate(KeyKind.JWT).id
    assert published_kids(folder) == {old, new}
    Keyring.open(folder).retire(old)
    assert published_kids(folder) == {new}
