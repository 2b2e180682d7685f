"""The sealed artifact store: one file per model version under the store path.

Layout: `STORE/<model name>/<version>.sealed`. Names are validated before they become paths
(no separators, no dot-files, bounded length), so a model name can never escape the store.
Files are only ever created with `atomic_write` and never rewritten in place; `rewrap` writes a
complete new file and renames it over the old one. A write killed outright (SIGKILL, power loss:
no `finally` runs) leaves its hidden temp file `.<version>.sealed.<random>.tmp` behind; the next
write of the same artifact removes it (the next publish of that version, the next `rewrap` of
that file), so an interrupted write is cleaned up by simply running the command again.

`SealedStore` is what publishing, loading, verifying and rewrapping need of a store; the one
implementation is `ArtifactStore`, and tests hand in fakes (a disk that lies on read, a rewrap
interrupted halfway) through it rather than patching the class.
"""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from secure_maas.atomic import fsync_dir
from secure_maas.crypto import InvalidArtifact
from secure_maas.errors import SecureMaasError

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SUFFIX = ".sealed"


class InvalidName(SecureMaasError):
    """A model name or version that cannot be used (it could escape the store or is malformed)."""


class StoreError(SecureMaasError):
    """The store folder cannot be written (full, read-only, missing)."""


def check_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise `InvalidName`."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_version(version: int) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**31:
        raise InvalidName(f"invalid model version {version!r}: a positive integer")
    return version


class SealedStore(Protocol):
    """The sealed artifact files, addressed by paths relative to the store (see `ArtifactStore`
    for each method's contract: atomic writes, reads refused as `InvalidArtifact`)."""

    @property
    def root(self) -> Path: ...

    def relative_path(self, name: str, version: int) -> str: ...

    def write(self, name: str, version: int, produce: Callable[[BinaryIO], None]) -> Path: ...

    def replace(
        self,
        relative: str,
        produce: Callable[[BinaryIO], None],
        check: Callable[[Path], None],
    ) -> Path: ...

    def reading(self, relative: str) -> AbstractContextManager[io.BufferedReader]: ...

    def open(self, relative: str) -> io.BufferedReader: ...

    def remove(self, relative: str) -> None: ...

    def files(self) -> Iterator[str]: ...


@dataclass(frozen=True)
class ArtifactStore:
    """The store on a filesystem path: the `SealedStore` the service and the CLI use."""

    root: Path

    def relative_path(self, name: str, version: int) -> str:
        return f"{check_name(name)}/{check_version(version)}{SUFFIX}"

    def path(self, name: str, version: int) -> Path:
        return self.root / self.relative_path(name, version)

    def write(self, name: str, version: int, produce: Callable[[BinaryIO], None]) -> Path:
        """Create the artifact file by streaming `produce(file)` into a temp file, then publish.

        The temp file lives in the model's folder (same filesystem), is fsynced, then linked to
        its final name, which must not exist yet; on any error nothing is left behind.
        """
        final = self.path(name, version)
        return self._publish(final, produce, replace=False)

    def replace(
        self,
        relative: str,
        produce: Callable[[BinaryIO], None],
        check: Callable[[Path], None],
    ) -> Path:
        """Atomically replace an existing artifact (used by rewrap) with a complete new file.

        `check(temp_path)` runs on the finished temp file before it replaces the old one, so a
        file that does not verify is never installed.
        """
        final = self.root / relative
        return self._publish(final, produce, replace=True, check=check)

    def _publish(
        self,
        final: Path,
        produce: Callable[[BinaryIO], None],
        *,
        replace: bool,
        check: Callable[[Path], None] | None = None,
    ) -> Path:
        folder = final.parent
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            new_folder = not folder.is_dir()
            folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store folder {folder}: {exc.strerror}") from exc
        _remove_leftovers(final)
        tmp = folder / f".{final.name}.{secrets.token_hex(8)}.tmp"
        published = False
        try:
            with open(tmp, "xb") as handle:
                os.fchmod(handle.fileno(), 0o600)
                produce(handle)
                handle.flush()
                os.fsync(handle.fileno())
            if check is not None:
                check(tmp)
            if replace:
                os.replace(tmp, final)
            else:
                os.link(tmp, final)
                os.unlink(tmp)
            fsync_dir(folder)
            published = True
        except FileExistsError as exc:
            raise StoreError(f"artifact {final} already exists") from exc
        except OSError as exc:
            raise StoreError(f"cannot write artifact {final}: {exc.strerror or exc}") from exc
        finally:
            if tmp.exists():
                tmp.unlink()
            if new_folder and not published:
                _remove_if_empty(folder)
        return final

    @contextmanager
    def reading(self, relative: str) -> Iterator[io.BufferedReader]:
        """The artifact file at `relative`, open for the body of the `with`.

        A file that cannot be opened or read (gone, a folder, EACCES, EIO) is refused as a
        tampered one is, with `InvalidArtifact` (`missing_file`, `unreadable`): to serving, a
        storage fault at load is then a refusal like any other, audited, and a label keeps its
        loaded version.
        """
        try:
            with self.open(relative) as handle:
                yield handle
        except FileNotFoundError as exc:
            raise InvalidArtifact("missing_file", f"{relative} is missing") from exc
        except OSError as exc:
            reason = f"{relative} cannot be read: {exc.strerror or exc}"
            raise InvalidArtifact("unreadable", reason) from exc

    def open(self, relative: str) -> io.BufferedReader:
        """Open an artifact for reading by its path relative to the store root."""
        path = self.root / relative
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidName(f"artifact path {relative!r} escapes the store")
        return open(path, "rb")

    def remove(self, relative: str) -> None:
        path = self.root / relative
        path.unlink(missing_ok=True)
        if path.parent.exists():
            fsync_dir(path.parent)

    def files(self) -> Iterator[str]:
        """Every artifact file in the store, as paths relative to the root."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob(f"*/*{SUFFIX}")):
            yield path.relative_to(self.root).as_posix()


def _remove_leftovers(final: Path) -> None:
    """Remove the temp files that killed writes of `final` left (best effort).

    Writers of one artifact are serialised (publish holds the model's lock for a version no row
    names yet; rewrap replaces an existing version): a temp file of `final` found here belongs
    to a writer that died. Should two rewraps race on one file anyway, the one whose temp file
    vanished fails cleanly at its rename and the artifact stays intact.
    """
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        try:
            stale.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove %s left by an interrupted write: %s", stale, exc.strerror)
            continue
        log.warning("removed %s left by an interrupted write", stale)


def _remove_if_empty(folder: Path) -> None:
    """Remove the model folder a failed first write created, so that a model that never got
    a version leaves nothing in the store. Only an empty folder goes (rmdir refuses others)."""
    try:
        folder.rmdir()
    except OSError:
        return
