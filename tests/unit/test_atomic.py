import stat
from pathlib import Path

import pytest

from secure_maas.atomic import TargetExists, atomic_write


def test_writes_with_the_requested_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret.key"
    atomic_write(target, b"material", mode=0o600)
    assert target.read_bytes() == b"material"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_replaces_by_default(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"


def test_refuses_to_overwrite_when_asked_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    atomic_write(target, b"first", overwrite=False)
    with pytest.raises(TargetExists):
        atomic_write(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    missing_folder = tmp_path / "absent" / "file"
    with pytest.raises(FileNotFoundError):
        atomic_write(missing_folder, b"x")
    assert not (tmp_path / "absent").exists()
