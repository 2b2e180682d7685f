"""Refuse key material that others can read, as ssh does, naming the `chmod` that fixes it."""

from __future__ import annotations

import stat
from pathlib import Path

from secure_maas.errors import SecureMaasError

FOLDER_MODE = 0o700
PRIVATE_MODE = 0o600


class InsecurePermissions(SecureMaasError):
    """A private key file or the keys folder is open to group or others."""


def check_folder(folder: Path) -> None:
    """Raise unless `folder` is a directory that only its owner can enter."""
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o077:
        raise InsecurePermissions(
            f"keys folder {folder} is accessible by group or others (mode {mode:04o}); "
            f"fix with: chmod 700 {folder}"
        )


def check_private_file(path: Path) -> None:
    """Raise unless `path` is readable and writable by its owner only."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InsecurePermissions(
            f"private key {path} is readable by group or others (mode {mode:04o}); "
            f"fix with: chmod 600 {path}"
        )
