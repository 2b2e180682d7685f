"""Engine settings, change counters and failure modes on both databases.

The SQLite database file is created 0600 before SQLite first opens it, and SQLite gives its
`-wal` and `-shm` files the main file's permissions, so no other local user reads the audit log,
the principals or the token ids: checked under umask 022 (the usual one), with a real gunicorn
server (2 workers x 4 threads) writing to the database over HTTP while the files are looked at.
"""

import os
import stat
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.db import DatabaseUnavailable, connect_check, create_engine, session_scope
from secure_maas.db.session import session_factory
from secure_maas.db.state import StateVersion, bump, current
from tests.functional.serving_support import prepare, server
from tests.system.support import GUNICORN


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'nested' / 'db.sqlite'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert (tmp_path / "nested").stat().st_mode & 0o777 == 0o700
    engine.dispose()


def test_change_counters_count(migrated_engine: Engine) -> None:
    factory = session_factory(migrated_engine)
    with session_scope(factory) as session:
        assert current(session, "rules") == 0
        assert bump(session, "rules") == 1
        assert bump(session, "rules") == 2
        assert bump(session, "models") == 1
    with session_scope(factory) as session:
        assert current(session, "rules") == 2
        row = session.get(StateVersion, "rules")
        assert row is not None
        assert row.updated_at.tzinfo is not None
        assert abs((datetime.now(UTC) - row.updated_at).total_seconds()) < 60


def test_rolled_back_bump_leaves_no_trace(migrated_engine: Engine) -> None:
    factory = session_factory(migrated_engine)
    with pytest.raises(RuntimeError), session_scope(factory) as session:
        bump(session, "rules")
        raise RuntimeError("change failed after the bump")
    with session_scope(factory) as session:
        assert current(session, "rules") == 0


def test_concurrent_bumps_get_distinct_numbers(migrated_engine: Engine) -> None:
    factory = session_factory(migrated_engine)
    seen: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(15):
                with session_scope(factory) as session:
                    value = bump(session, "rules")
                with lock:
                    seen.append(value)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(seen) == list(range(1, 91))


def test_naive_datetimes_are_refused(migrated_engine: Engine) -> None:
    factory = session_factory(migrated_engine)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), session_scope(factory) as s:
        s.add(StateVersion(scope="x", version=1, updated_at=datetime(2026, 1, 1)))
        s.flush()


def test_unreachable_postgres_is_a_clear_error() -> None:
    engine = create_engine("postgresql+psycopg://maas:secret@127.0.0.1:1/maas")
    with pytest.raises(DatabaseUnavailable) as caught:
        connect_check(engine)
    message = str(caught.value)
    assert message.startswith("cannot reach database postgresql+psycopg://maas:***@127.0.0.1:1/")
    assert "secret" not in message
    assert "\n" not in message


def test_unopenable_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    engine = create_engine(f"sqlite:///{tmp_path / 'file'}/db.sqlite")
    with pytest.raises(DatabaseUnavailable, match="unable to open database file"):
        connect_check(engine)


def test_sqlite_writers_take_turns_on_a_file_lock(tmp_path: Path) -> None:
    """Writers queue on `<db>-writer.lock` (any thread or process), so SQLite's own sleeping
    busy handler is never what they wait on; the lock is re-entrant within a thread."""
    from secure_maas.db.engine import serialised_writes
    from secure_maas.db.session import write_scope

    database = tmp_path / "db.sqlite"
    engine = create_engine(f"sqlite:///{database}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (n INTEGER)")
    order: list[str] = []
    entered = threading.Event()

    def other_writer() -> None:
        entered.set()
        with write_scope(engine) as session:
            order.append("other")
            session.execute(sa.text("INSERT INTO t VALUES (2)"))

    with serialised_writes(engine):
        assert (tmp_path / "db.sqlite-writer.lock").exists()
        thread = threading.Thread(target=other_writer)
        thread.start()
        entered.wait(5)
        with write_scope(engine) as session:  # re-entrant: no self-deadlock
            session.execute(sa.text("INSERT INTO t VALUES (1)"))
        thread.join(0.3)
        assert thread.is_alive(), "the other writer did not wait for its turn"
        order.append("holder")
    thread.join(10)
    assert order == ["holder", "other"]
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT n FROM t ORDER BY rowid").scalars().all() == [
            1,
            2,
        ]
    engine.dispose()


def test_writer_lock_nests_and_postgres_takes_none(migrated_engine: Engine, tmp_path: Path) -> None:
    from secure_maas.db.engine import serialised_writes

    with serialised_writes(migrated_engine), serialised_writes(migrated_engine):
        pass  # a no-op on PostgreSQL; re-entrant on SQLite
    if migrated_engine.dialect.name == "postgresql":
        assert not list(tmp_path.glob("*-writer.lock"))


def test_an_unopenable_writer_lock_is_database_unavailable(tmp_path: Path) -> None:
    from secure_maas.db.session import write_scope

    folder = tmp_path / "gone"
    engine = create_engine(f"sqlite:///{folder / 'db.sqlite'}")
    folder.rmdir()  # the folder create_engine made: no lock and no database can be opened
    with pytest.raises(DatabaseUnavailable, match="writer.lock"), write_scope(engine):
        pass
    engine.dispose()


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
