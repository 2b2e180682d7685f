"""Regression (issue 8, storage faults): a model's first publish that failed (a full disk, a
crash inside the seal) left the model's empty folder in the store for ever, although no row and
no artifact were ever made. Now a write that fails removes the folder it created, and only that:
a folder that held other versions, or something else by now, stays.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import BinaryIO

import pytest

from secure_maas.registry.store import ArtifactStore, StoreError


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
