"""Engine creation with the settings each backend needs to be safe under concurrency.

SQLite (the embedded default): WAL so readers never block the writer, foreign keys on, a busy
timeout instead of immediate `database is locked` errors, `synchronous=FULL` so a committed audit
event survives power loss, and explicit `BEGIN` so SQLAlchemy's transactions are real ones
(the stdlib driver otherwise defers them; `begin_immediate` relies on this).
PostgreSQL: psycopg 3, a connect timeout so an unreachable server fails fast, TCP keepalives and
a TCP user timeout so a connection whose server vanished mid-query (a cut cable, a failed-over
host: no reset ever arrives) errors within seconds instead of the kernel's minutes, and pre-ping
so a pool recovers by itself after the database returns.
"""

from __future__ import annotations

import os
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
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        **PG_LIVENESS,
        **kwargs.pop("connect_args", {}),
    }
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **kwargs)


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
