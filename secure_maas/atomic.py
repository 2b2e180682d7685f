"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one.

Keys, sealed artifacts and manifests are all written this way: a temporary file in the same
folder (so the rename stays on one filesystem), fsync of the data, rename (or hard link when the
target must not be replaced), then fsync of the folder so the new name itself is durable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


class TargetExists(FileExistsError):
    """`atomic_write(..., overwrite=False)` found the target already there."""


def fsync_dir(folder: Path) -> None:
    """Make a rename or link inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, overwrite: bool = True) -> None:
    """Write `data` to `path` atomically with permission bits `mode` from the first byte.

    With `overwrite=False` an existing target is left untouched and `TargetExists` is raised;
    the check and the publish are one atomic `link`, so two writers cannot both win.
    """
    folder = path.parent
    tmp = folder / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed or widened what O_CREAT set
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise TargetExists(str(path)) from exc
            os.unlink(tmp)
        fsync_dir(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
