"""Engine creation with the settings each backend needs to be safe under concurrency.

SQLite (the embedded default): the database file created 0600 (its `-wal` and `-shm` files
follow it), WAL so readers never block the writer, foreign keys on, a busy timeout instead of
immediate `database is locked` errors, `synchronous=FULL` so a committed audit event survives
power loss, and explicit `BEGIN` so SQLAlchemy's transactions are real ones (the stdlib driver
otherwise defers them; `begin_immediate` relies on this).
PostgreSQL: psycopg 3, a connect timeout so an unreachable server fails fast, TCP keepalives and
a TCP user timeout so a connection whose server vanished mid-query (a cut cable, a failed-over
host: no reset ever arrives) errors within seconds instead of the kernel's minutes, and pre-ping
so a pool recovers by itself after the database returns.
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError

from secure_maas.config import mask_url
from secure_maas.errors import SecureMaasError

SQLITE_BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 5
#: libpq options for a server that stops answering without closing the connection.
PG_LIVENESS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms of unacknowledged data before the connection is dropped
}


class DatabaseUnavailable(SecureMaasError):
    """The database cannot be reached or opened; requests must fail closed (503)."""


def _sqlite_path(url: sa.URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url` with the backend settings described in this module."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_path(parsed)
        if path is not None and not path.parent.exists():
            # var/ holds the database and the store: private to the service's user.
            os.makedirs(path.parent, mode=0o700, exist_ok=True)
        engine = sa.create_engine(parsed, **kwargs)
        if path is not None:
            event.listen(engine, "do_connect", functools.partial(_create_private, path))
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        **PG_LIVENESS,
        **kwargs.pop("connect_args", {}),
    }
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **kwargs)


def _create_private(path: Path, *_connect: Any) -> None:
    """Before each SQLite connection: create the database file `path` private to the service's
    user unless it exists (it holds the audit log, the principals and the token ids).

    SQLite would create it 0644 less the umask (readable by every local user under the usual
    022), and it gives the `-wal` and `-shm` files it makes later the main file's permissions,
    so a main file created 0600 here, before SQLite first opens it, makes all three private.
    An empty file is a valid empty database. An existing file is left as its owner made it.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # the usual case, or another process made it first (0600 as well)
    except OSError:
        return  # a missing or read-only folder: SQLite's own open reports it, as it always did
    os.close(fd)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, see _sqlite_on_begin
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    mode = connection.info.pop("sqlite_begin", "BEGIN")
    connection.exec_driver_sql(mode)


def begin_immediate(connection: Connection) -> None:
    """Ask for SQLite's write lock at the start of the next transaction on `connection`.

    Call it before the first statement so that check-then-write sequences (budgets, quotas)
    serialise on SQLite as `SELECT ... FOR UPDATE` does on PostgreSQL. A no-op elsewhere.
    """
    if connection.dialect.name == "sqlite":
        connection.info["sqlite_begin"] = "BEGIN IMMEDIATE"


_held = threading.local()


@contextmanager
def serialised_writes(engine: Engine) -> Iterator[None]:
    """Hold the write lock of `engine`'s SQLite file for the block (a no-op elsewhere).

    SQLite admits one writer at a time and makes the others poll with sleeps of up to 100 ms
    (its busy handler): with two gunicorn workers each committing audit groups, those sleeps
    were the serving p99 (0.35 s at 16 connections, against 0.03 s for one worker). Writers
    that queue here first, on a file lock beside the database (`<db>-writer.lock`, any thread
    or process), wait at most a millisecond past its release and then meet no SQLite lock.
    PostgreSQL queues writers on its own row locks. Re-entrant within a thread; after the busy
    timeout the caller gets `DatabaseUnavailable` (fail closed), as SQLite's own wait would.
    """
    path = _sqlite_path(engine.url) if engine.dialect.name == "sqlite" else None
    depth: dict[Path, int] = _held.__dict__.setdefault("depth", {})
    if path is None or depth.get(path):
        yield
        return
    try:
        fd = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # a read-only or vanished folder: no write can happen either
        raise DatabaseUnavailable(f"cannot open {path}-writer.lock: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        pause = 0.0001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DatabaseUnavailable(
                        f"database is locked: no write turn in {SQLITE_BUSY_TIMEOUT_MS} ms"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.001)
        depth[path] = 1
        try:
            yield
        finally:
            depth[path] = 0
    finally:
        os.close(fd)  # releases the lock


def describe_error(exc: BaseException) -> str:
    """The first line of a driver error, without SQL or parameters (they may hold data)."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return text[0] if text else type(original).__name__


def connect_check(engine: Engine) -> None:
    """Open one connection and run `SELECT 1`, or raise `DatabaseUnavailable`."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except DBAPIError as exc:
        raise DatabaseUnavailable(
            f"cannot reach database {mask_url(engine.url.render_as_string(hide_password=False))}: "
            f"{describe_error(exc)}"
        ) from exc
