"""The artifact store's files on both databases: a failed or killed write leaves nothing.

- A write that fails (a full disk, a crash inside the seal) removes the model folder it
  created, and only that: a folder that held other versions, or something else by now, stays.
- No `finally` runs under SIGKILL, so a killed write leaves its hidden temp file
  `.<version>.sealed.<random>.tmp` (which `models verify` does not list); the next write of
  the same artifact (`models rewrap`, or the publish of that version) removes it, and nothing
  else. The kill is real: a child process starts the write, says so from inside `produce`,
  and is SIGKILLed there, so the state under test is exactly what a killed `rewrap` or
  `train` leaves.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import pytest
from sqlalchemy.engine import Engine

from secure_maas.config import Settings
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import KeyKind, Keyring
from secure_maas.registry import artifacts, catalog
from secure_maas.registry.catalog import ModelRef
from secure_maas.registry.models import Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore, StoreError

SIGNATURE = {"inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32"}], "outputs": []}

# Starts `store.write` (a publish) or `store.replace` (a rewrap) of one artifact, writes part of
# it, says "writing" and waits to be killed.
CHILD = """
import sys, time
from pathlib import Path
from secure_maas.registry.store import ArtifactStore, StoreError

root, how, name, version = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def produce(out):
    out.write(b"partial sealed bytes")
    out.flush()
    print("writing", flush=True)
    time.sleep(120)

store = ArtifactStore(Path(root))
if how == "write":
    store.write(name, version, produce)
else:
    store.replace(store.relative_path(name, version), produce, lambda path: None)
"""


def killed_write(store: ArtifactStore, how: str, name: str, version: int) -> list[str]:
    """SIGKILL a child in the middle of writing NAME:VERSION; the temp files it left."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store.root), how, name, str(version)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "writing"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return leftovers(store, name)


def leftovers(store: ArtifactStore, name: str) -> list[str]:
    return sorted(p.name for p in (store.root / name).glob(".*.tmp"))


def put(engine: Engine, store: ArtifactStore, keyring: Keyring, payload: bytes) -> int:
    row = publish(
        engine, store, keyring, name="m", payload=payload, signature=SIGNATURE,
        provenance=Provenance(Privacy.IMPORTED), created_by="tester",
    )  # fmt: skip
    return row.version


def opens(engine: Engine, store: ArtifactStore, keyring: Keyring, ref: str) -> bytes:
    with session_scope(session_factory(engine)) as session:
        row = catalog.resolve(session, ModelRef.parse(ref), include_disabled=True)
        _ = row.model.name
    opened = artifacts.open_version(store, Keyring.open(keyring.folder), row)
    return bytes(opened.plaintext)


@pytest.fixture
def keyring(settings: Settings) -> Keyring:
    keyring, _ = Keyring.init(settings.keys_dir)
    return keyring


def test_rerunning_a_killed_rewrap_removes_its_temp_file(
    migrated_engine: Engine, settings: Settings, keyring: Keyring
) -> None:
    store = ArtifactStore(settings.store_dir)
    payloads = {f"m:{put(migrated_engine, store, keyring, p)}": p
                for p in (secrets.token_bytes(500), secrets.token_bytes(700))}  # fmt: skip
    keyring.rotate(KeyKind.SERVICE)
    left = killed_write(store, "replace", "m", 1)
    assert len(left) == 1 and left[0].startswith(".1.sealed.")  # the fault is real
    assert opens(migrated_engine, store, keyring, "m:1") == payloads["m:1"]

    report = artifacts.rewrap_all(migrated_engine, store, Keyring.open(keyring.folder))
    assert sorted(report.rewrapped) == ["m/1.sealed", "m/2.sealed"]
    assert leftovers(store, "m") == []
    assert sorted(os.listdir(store.root / "m")) == ["1.sealed", "2.sealed"]
    for ref, payload in payloads.items():
        assert opens(migrated_engine, store, keyring, ref) == payload


def test_the_next_publish_of_a_killed_version_removes_its_temp_file_and_no_other(
    migrated_engine: Engine, settings: Settings, keyring: Keyring
) -> None:
    store = ArtifactStore(settings.store_dir)
    assert put(migrated_engine, store, keyring, b"one") == 1
    left = killed_write(store, "write", "m", 2)
    assert len(left) == 1 and left[0].startswith(".2.sealed.")
    other = store.root / "m" / ".3.sealed.0123456789abcdef.tmp"  # not version 2's: kept
    other.write_bytes(b"someone else's")

    assert put(migrated_engine, store, keyring, b"two") == 2
    assert leftovers(store, "m") == [other.name]
    assert opens(migrated_engine, store, keyring, "m:2") == b"two"
    assert Path(store.path("m", 2)).is_file()


def _disk_full(out: BinaryIO) -> None:
    out.write(b"the first bytes of a sealed artifact")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_first_write_leaves_no_folder(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(StoreError, match="No space left"):
        store.write("digits", 1, _disk_full)
    assert list((tmp_path / "store").iterdir()) == []
    store.write("digits", 1, lambda out: out.write(b"sealed"))  # and the retry works
    assert list(store.files()) == ["digits/1.sealed"]


def test_a_failed_later_write_keeps_the_models_folder(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    store.write("digits", 1, lambda out: out.write(b"sealed"))
    with pytest.raises(StoreError):
        store.write("digits", 2, _disk_full)
    assert list(store.files()) == ["digits/1.sealed"]
    assert sorted(p.name for p in (tmp_path / "store" / "digits").iterdir()) == ["1.sealed"]


def test_a_failed_first_write_keeps_a_folder_someone_else_filled(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")

    def crowded(out: BinaryIO) -> None:
        (tmp_path / "store" / "digits" / "notes.txt").write_text("not ours")
        _disk_full(out)

    with pytest.raises(StoreError):
        store.write("digits", 1, crowded)
    assert [p.name for p in (tmp_path / "store" / "digits").iterdir()] == ["notes.txt"]
