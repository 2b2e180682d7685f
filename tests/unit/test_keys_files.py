"""Key files are opened once, without following links, and checked on the descriptor they are
read from: mode, owner (the service's effective user), regular file; the keys folder likewise.

So a symlink to a 0600 file outside the folder is refused, a key owned by another user is
refused, and no file can be swapped between the check and the read (one open, not two).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from secure_maas.keys import InsecurePermissions, KeyKind, Keyring, KeyringError
from secure_maas.keys.records import MANIFEST_NAME, ManifestError

OTHER_UID = 65534  # nobody


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    keyring, _report = Keyring.init(tmp_path / "keys")
    return keyring


def private_path(keyring: Keyring, kind: KeyKind) -> Path:
    name = keyring.active(kind).private_file
    assert name is not None
    return keyring.folder / name


def chown_or_skip(path: Path, uid: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, uid, -1, follow_symlinks=False)


def link_outside(keyring: Keyring, path: Path, tmp_path: Path) -> Path:
    """Replace `path` by a symlink to an identical 0600 copy outside the keys folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    outside = elsewhere / path.name
    shutil.copy2(path, outside)
    os.chmod(outside, 0o600)
    path.unlink()
    path.symlink_to(outside)
    return outside


@pytest.mark.parametrize("kind", [KeyKind.SERVICE, KeyKind.AUDIT])
def test_symlink_to_a_0600_key_outside_the_folder_is_refused(
    keyring: Keyring, kind: KeyKind, tmp_path: Path
) -> None:
    path = private_path(keyring, kind)
    outside = link_outside(keyring, path, tmp_path)
    record = keyring.active(kind)
    load = keyring.secret_key if kind is KeyKind.AUDIT else keyring.private_key
    with pytest.raises(InsecurePermissions, match="is a symbolic link") as refused:
        load(record.id)
    message = str(refused.value)
    assert str(outside) in message and f"cp --remove-destination {outside} {path}" in message
    with pytest.raises(InsecurePermissions, match="symbolic link"):
        keyring.check()
    # The fix it names works.
    path.unlink()
    shutil.copy2(outside, path)
    os.chmod(path, 0o600)
    keyring.check()


def test_symlinked_public_key_and_manifest_are_refused(keyring: Keyring, tmp_path: Path) -> None:
    name = keyring.active(KeyKind.PUBLISHER).public_file
    assert name is not None
    link_outside(keyring, keyring.folder / name, tmp_path)
    with pytest.raises(InsecurePermissions, match="symbolic link"):
        keyring.trusted_publishers()

    manifest = keyring.folder / MANIFEST_NAME
    (tmp_path / "m").mkdir()
    shutil.copy2(manifest, tmp_path / "m" / MANIFEST_NAME)
    manifest.unlink()
    manifest.symlink_to(tmp_path / "m" / MANIFEST_NAME)
    with pytest.raises(InsecurePermissions, match="symbolic link"):
        Keyring.open(keyring.folder)


def test_key_owned_by_another_user_is_refused_naming_chown(keyring: Keyring) -> None:
    path = private_path(keyring, KeyKind.JWT)
    chown_or_skip(path, OTHER_UID)
    with pytest.raises(InsecurePermissions, match=rf"uid {OTHER_UID}") as refused:
        keyring.private_key(keyring.active(KeyKind.JWT).id)
    assert f"chown {path}" not in str(refused.value)  # names the user to give it to
    assert "fix with: chown " in str(refused.value) and str(path) in str(refused.value)
    os.chown(path, os.geteuid(), -1)
    keyring.check()


def test_manifest_owned_by_another_user_is_refused(keyring: Keyring) -> None:
    chown_or_skip(keyring.folder / MANIFEST_NAME, OTHER_UID)
    with pytest.raises(InsecurePermissions, match="fix with: chown"):
        Keyring.open(keyring.folder)


def test_keys_folder_owned_by_another_user_is_refused(keyring: Keyring) -> None:
    chown_or_skip(keyring.folder, OTHER_UID)
    with pytest.raises(InsecurePermissions, match=rf"keys folder .*uid {OTHER_UID}.*chown"):
        Keyring.open(keyring.folder)
    with pytest.raises(InsecurePermissions, match="chown"):
        Keyring.init(keyring.folder)  # init neither adopts nor chmods another user's folder


def test_keys_folder_that_is_a_symlink_is_refused(keyring: Keyring, tmp_path: Path) -> None:
    link = tmp_path / "keys-link"
    link.symlink_to(keyring.folder)
    with pytest.raises(InsecurePermissions, match="SECURE_MAAS_KEYS_DIR at the real folder"):
        Keyring.open(link)
    with pytest.raises(InsecurePermissions, match="symbolic link"):
        Keyring.init(link)


def test_key_that_is_not_a_regular_file_is_refused(keyring: Keyring) -> None:
    path = private_path(keyring, KeyKind.SERVICE)
    path.unlink()
    os.mkfifo(path, 0o600)  # opening a FIFO for reading would block without O_NONBLOCK
    with pytest.raises(InsecurePermissions, match="not a regular file"):
        keyring.private_key(keyring.active(KeyKind.SERVICE).id)


def test_public_files_writable_by_others_are_refused(keyring: Keyring) -> None:
    name = keyring.active(KeyKind.PUBLISHER).public_file
    assert name is not None
    os.chmod(keyring.folder / name, 0o666)
    with pytest.raises(InsecurePermissions, match="chmod go-w"):
        keyring.trusted_publishers()
    os.chmod(keyring.folder / MANIFEST_NAME, 0o622)
    with pytest.raises(InsecurePermissions, match="chmod go-w"):
        Keyring.open(keyring.folder)


def test_manifest_cannot_name_a_file_outside_the_folder(keyring: Keyring, tmp_path: Path) -> None:
    path = private_path(keyring, KeyKind.SERVICE)
    shutil.copy2(path, tmp_path / "stolen.key")
    manifest = keyring.folder / MANIFEST_NAME
    document = json.loads(manifest.read_text())
    for key in document["keys"]:
        if key["private_file"] == path.name:
            key["private_file"] = "../stolen.key"
    manifest.write_text(json.dumps(document))
    reopened = Keyring.open(keyring.folder)
    with pytest.raises(InsecurePermissions, match="not a plain file name"):
        reopened.private_key(keyring.active(KeyKind.SERVICE).id)


def test_missing_key_file_is_still_named(keyring: Keyring) -> None:
    path = private_path(keyring, KeyKind.SERVICE)
    path.unlink()
    with pytest.raises(KeyringError, match=f"{path} is missing"):
        keyring.check()


def test_unreadable_manifest_is_a_manifest_error(keyring: Keyring) -> None:
    (keyring.folder / MANIFEST_NAME).write_bytes(b"\xff\xfe not json")
    with pytest.raises(ManifestError, match="corrupted"):
        Keyring.open(keyring.folder)
