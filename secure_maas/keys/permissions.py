"""Open key material safely: one open, no symlinks, checked on the descriptor, as ssh does.

Checking a path and then reading it again leaves two gaps: the path can be a symbolic link to a
file anywhere (a 0600 key outside the folder passes a mode check), and the file can be swapped
between the check and the read. So the folder is opened once (`O_DIRECTORY|O_NOFOLLOW`) and
checked with `fstat` on that descriptor, each file is opened once relative to it
(`openat`, `O_NOFOLLOW`, a plain name only) and checked with `fstat`, and the bytes read are
those of the descriptor checked. What is checked: the folder is a directory owned by the
user the service runs as (its effective uid) that only that user can enter (0700); a file is a
regular file owned by that user; a private file is 0600 or stricter, any other file (public
keys, the manifest) writable by its owner only. Every refusal names the fix.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from secure_maas.errors import SecureMaasError

FOLDER_MODE = 0o700
PRIVATE_MODE = 0o600

#: The most a key file or manifest may hold. A PEM key is a few kilobytes, a hybrid one under
#: ten, the manifest grows by a few hundred bytes a key: a larger file is not key material.
MAX_KEY_FILE_BYTES = 1 << 20

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a key's name must not hang the service.
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW


class InsecurePermissions(SecureMaasError):
    """A key file or the keys folder is open to others, not the service's own, or a link."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _check_owner(info: os.stat_result, path: Path, what: str) -> None:
    service = os.geteuid()
    if info.st_uid != service:
        raise InsecurePermissions(
            f"{what} {path} belongs to {_user(info.st_uid)} (uid {info.st_uid}), not to "
            f"{_user(service)} (uid {service}) that runs the service; if it is the right one, "
            f"fix with: chown {_user(service)} {path}"
        )


def _symlink_refusal(
    path: Path, what: str, *, folder: bool = False, private: bool = False
) -> InsecurePermissions:
    try:
        target = os.readlink(path)
    except OSError:
        target = "the real file"
    if folder:
        fix = f"point SECURE_MAAS_KEYS_DIR at the real folder ({path.resolve()}) instead"
    else:
        fix = (
            f"replace the link with the file itself, if it is the right one: "
            f"cp --remove-destination {target} {path} && chmod {'600' if private else 'go-w'} "
            f"{path}"
        )
    return InsecurePermissions(
        f"{what} {path} is a symbolic link (to {target}); key material is read only from "
        f"real files in the keys folder; fix: {fix}"
    )


@contextmanager
def open_folder(folder: Path) -> Iterator[int]:
    """A descriptor of `folder`, checked: a real directory of the service's user, mode 0700.

    Raises `FileNotFoundError` when it does not exist, `InsecurePermissions` for anything
    unsafe. Files are then opened relative to the descriptor (`read_file`), so the folder
    checked is the folder read, whatever happens to its path meanwhile.
    """
    try:
        fd = os.open(folder, _FOLDER_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise _symlink_refusal(folder, "keys folder", folder=True) from None
        if exc.errno == errno.ENOTDIR:
            if folder.is_symlink():
                raise _symlink_refusal(folder, "keys folder", folder=True) from None
            raise InsecurePermissions(f"keys folder {folder} is not a folder") from None
        raise
    try:
        info = os.fstat(fd)
        _check_owner(info, folder, "keys folder")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise InsecurePermissions(
                f"keys folder {folder} is accessible by group or others (mode {mode:04o}); "
                f"fix with: chmod 700 {folder}"
            )
        yield fd
    finally:
        os.close(fd)


def check_folder(folder: Path) -> None:
    """Raise unless `folder` is a real directory of the service's user that only it can enter."""
    with open_folder(folder):
        pass


def _check_name(name: str, folder: Path) -> None:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise InsecurePermissions(
            f"{folder}: key file name {name!r} is not a plain file name in the keys folder; "
            "the manifest names files inside the folder only"
        )


def read_file(folder_fd: int, name: str, *, folder: Path, private: bool) -> bytes:
    """The bytes of `name` in the open folder, read from the one descriptor that was checked.

    `private` files (private keys, the audit key) must be 0600 or stricter; others must not be
    writable by group or others. Raises `FileNotFoundError` when absent, `InsecurePermissions`
    for a link, a foreign owner, a non-regular file or a loose mode.
    """
    _check_name(name, folder)
    path = folder / name
    what = "private key" if private else "key file"
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=folder_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise _symlink_refusal(path, what, private=private) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InsecurePermissions(
                f"{what} {path} is not a regular file; replace it with the key file itself"
            )
        _check_owner(info, path, what)
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            raise InsecurePermissions(
                f"private key {path} is readable by group or others (mode {mode:04o}); "
                f"fix with: chmod 600 {path}"
            )
        if not private and mode & 0o022:
            raise InsecurePermissions(
                f"{what} {path} is writable by group or others (mode {mode:04o}); "
                f"fix with: chmod go-w {path}"
            )
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise InsecurePermissions(
                f"{what} {path} holds {info.st_size} bytes, more than any key file "
                f"({MAX_KEY_FILE_BYTES}); it is not key material"
            )
        return _read_all(fd, path)
    finally:
        os.close(fd)


def _read_all(fd: int, path: Path) -> bytes:
    chunks = []
    total = 0
    while chunk := os.read(fd, 65536):
        total += len(chunk)
        if total > MAX_KEY_FILE_BYTES:
            raise InsecurePermissions(f"{path} grew past {MAX_KEY_FILE_BYTES} bytes while read")
        chunks.append(chunk)
    return b"".join(chunks)


def read_key_file(folder: Path, name: str, *, private: bool) -> bytes:
    """Open `folder` and read `name` in it, with every check of `open_folder` and `read_file`."""
    with open_folder(folder) as folder_fd:
        return read_file(folder_fd, name, folder=folder, private=private)
