"""Sessions: one factory per engine, and scopes that commit or roll back as a unit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from secure_maas.db.engine import begin_immediate, serialised_writes

SessionFactory = sessionmaker[Session]


def session_factory(engine: Engine) -> SessionFactory:
    """Sessions bound to `engine`; objects stay readable after commit (no lazy reload)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: SessionFactory) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any exception."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def write_scope(engine: Engine) -> Iterator[Session]:
    """Like `session_scope`, but holding SQLite's write lock from the first statement.

    For check-then-write sequences (next version number, budget left, quota): on SQLite the
    transaction starts with BEGIN IMMEDIATE so two writers cannot both read the old state; on
    PostgreSQL the caller locks the rows it reads with `SELECT ... FOR UPDATE`.
    """
    with serialised_writes(engine), engine.connect() as connection:
        begin_immediate(connection)
        with connection.begin(), Session(bind=connection, expire_on_commit=False) as session:
            yield session
            session.flush()
