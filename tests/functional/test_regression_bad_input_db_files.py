"""Regression (issue 14, point 8): the SQLite database and its `-wal` and `-shm` files were
created 0644 (SQLite's default, less a umask of 022), so every local user could read the audit
log, the principals and the token ids. Now `create_engine` creates the database file 0600 before
SQLite first opens it, and SQLite gives its `-wal` and `-shm` files the main file's permissions.

Checked under umask 022 (the usual one, and the one that showed the problem), with a real
gunicorn server (2 workers x 4 threads) writing to the database over HTTP while the files are
looked at.
"""

from __future__ import annotations

import os
import stat
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.functional.serving_support import prepare, server
from tests.system.support import GUNICORN


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_its_wal_and_shm_files_are_private(tmp_path: Path) -> None:
    database = tmp_path / "var" / "secure_maas.db"
    with umask(0o022):
        instance = prepare(tmp_path, f"sqlite:///{database}")
        try:
            with server(instance, *GUNICORN) as served:
                for who in ("alice", "bob", "eve"):
                    request = urllib.request.Request(
                        served.url + "/v1/models", headers=instance.headers(who)
                    )
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        assert answer.status == 200
                files = [database, *(Path(f"{database}{end}") for end in ("-wal", "-shm"))]
                found = {path.name: mode(path) for path in files}
                assert found == {path.name: 0o600 for path in files}
                assert mode(Path(f"{database}-writer.lock")) == 0o600
                assert mode(database.parent) == 0o700
        finally:
            instance.engine.dispose()
