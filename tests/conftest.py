"""Fixtures shared by every test: a private settings object per test, on each database backend.

Every test that takes `database_url` runs twice: on a fresh SQLite file and on a fresh
PostgreSQL schema (in database `test` at 127.0.0.1:5432, `SMAAS_TEST_PG_URL` to change it).
Schemas are named after this run and dropped afterwards, so runs never collide. When
PostgreSQL does not answer, those runs are skipped with the reason, unless
`SMAAS_TEST_REQUIRE_POSTGRES=1` (set by `.ci/run`), which turns that into a failure.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import Engine, make_url

from secure_maas.config import Settings
from secure_maas.db import create_engine, migrate

PG_URL = os.environ.get("SMAAS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("SMAAS_TEST_REQUIRE_POSTGRES") == "1"
#: `sqlite` (what `make check` sets) leaves the PostgreSQL runs out of the edit loop.
DATABASES = os.environ.get("SMAAS_TEST_DATABASES", "sqlite,postgresql").split(",")
RUN_ID = secrets.token_hex(4)
_schema_numbers = itertools.count()

# One Hypothesis profile for every property test: CI runs on a busy 2-core machine, so no test
# may fail because an example ran slowly (no deadline, no too-slow health check). A test that
# sets its own `suppress_health_check` replaces this list: it must name `too_slow` too.
hypothesis_settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
hypothesis_settings.load_profile(os.environ.get("SMAAS_HYPOTHESIS_PROFILE", "ci"))


def _pg_answers() -> bool:
    url = make_url(PG_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1):
            return True
    except OSError:
        return False


PG_AVAILABLE = _pg_answers()


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    if not PG_AVAILABLE:
        message = f"PostgreSQL not reachable at {make_url(PG_URL).host}:{make_url(PG_URL).port}"
        if REQUIRE_PG:
            pytest.fail(message + " (SMAAS_TEST_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    yield engine
    with engine.connect() as connection:
        leftovers = connection.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :pattern"),
            {"pattern": f"smaas_{RUN_ID}_%"},
        ).scalars()
        for schema in list(leftovers):
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def _pg_schema_url(admin: Engine) -> tuple[str, str]:
    schema = f"smaas_{RUN_ID}_{next(_schema_numbers)}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database, on SQLite and then on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'secure_maas.db'}"
        return
    admin: Engine = request.getfixturevalue("pg_admin")
    url, schema = _pg_schema_url(admin)
    yield url
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings whose every writable path lies under this test's tmp_path."""
    return Settings(
        database_url=database_url,
        keys_dir=tmp_path / "keys",
        store_dir=tmp_path / "var" / "store",
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on an empty database (no schema)."""
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrated_engine(engine: Engine) -> Engine:
    """An engine on a database built the only supported way: `alembic upgrade head`."""
    migrate.upgrade(engine)
    return engine


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for running the CLI against this test's settings (in or out of process)."""
    for name in list(os.environ):
        if name.startswith("SECURE_MAAS_"):
            monkeypatch.delenv(name)
    env = {
        "SECURE_MAAS_DATABASE_URL": settings.database_url,
        "SECURE_MAAS_KEYS_DIR": str(settings.keys_dir),
        "SECURE_MAAS_STORE_DIR": str(settings.store_dir),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **env}


#: The kind of each test, from its folder: `-m unit`, `-m "not system"` and so on select by it.
KINDS = ("unit", "functional", "system")
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its kind (its folder) and, on PostgreSQL, `postgres`; deselect the
    runs on a database `SMAAS_TEST_DATABASES` leaves out (every fixture whose parameter is a
    database name: `database_url` and the serving tests' instances)."""
    if REQUIRE_PG and "postgresql" not in DATABASES:
        raise pytest.UsageError("SMAAS_TEST_REQUIRE_POSTGRES=1 with PostgreSQL left out")
    kept, dropped = [], []
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(_TESTS).parts[0]
        if folder in KINDS:
            item.add_marker(folder)
        params = getattr(getattr(item, "callspec", None), "params", {})
        databases = {v for v in params.values() if isinstance(v, str) and v in _DATABASE_NAMES}
        if "postgresql" in databases:
            item.add_marker("postgres")
        (dropped if databases - set(DATABASES) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


_DATABASE_NAMES = ("sqlite", "postgresql")

# -- tests/unit stays pure ------------------------------------------------------------------
# A unit test starts none of our programs (Python, `secure-maas`, gunicorn), forks no process
# and binds no network socket: those belong in tests/functional. An audit hook (hooks cannot be
# removed, so it is added once and switched per test) refuses them. Libraries' own helpers
# (numpy runs `lscpu` on first import of numpy.testing) are not our code and stay allowed.
_OURS = ("python", "secure-maas", "gunicorn")
_pure = False


def _ours(program: object) -> bool:
    name = os.path.basename(os.fsdecode(program)) if isinstance(program, (str, bytes)) else ""
    return name.startswith(_OURS) or os.path.realpath(name or ".") == os.path.realpath(
        sys.executable
    )


def _refuse_impure(event: str, args: tuple[object, ...]) -> None:
    if not _pure:
        return
    if event in ("subprocess.Popen", "os.posix_spawn", "os.exec"):
        program = args[0]
        if program is None and isinstance(args[1], (list, tuple)) and args[1]:
            program = args[1][0]
        if _ours(program):
            raise RuntimeError(f"a unit test started {program}: it belongs in tests/functional")
    if event in ("os.fork", "os.forkpty"):
        raise RuntimeError(f"tests/unit forks no process ({event}): move the test to functional")
    if event == "socket.bind" and isinstance(args[1], tuple):
        raise RuntimeError("tests/unit opens no network socket: move the test to functional")


sys.addaudithook(_refuse_impure)


@pytest.fixture(autouse=True)
def _unit_purity(request: pytest.FixtureRequest) -> Iterator[None]:
    global _pure
    _pure = request.node.get_closest_marker("unit") is not None
    try:
        yield
    finally:
        _pure = False
