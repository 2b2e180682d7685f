"""The schema is made by Alembic only, and migrations go both ways on both databases."""

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.db import migrate
from secure_maas.db.migrate import SchemaDrift


def tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_downgrade_upgrade(engine: Engine) -> None:
    assert migrate.current(engine) is None
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()
    assert "state_versions" in tables(engine)
    migrate.check(engine)

    migrate.downgrade(engine, "base")
    assert migrate.current(engine) is None
    assert tables(engine) <= {"alembic_version"}

    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()
    migrate.check(engine)


def test_upgrade_twice_is_a_no_op(migrated_engine: Engine) -> None:
    migrate.upgrade(migrated_engine)
    assert migrate.current(migrated_engine) == migrate.head()


def test_check_refuses_a_database_behind_head(engine: Engine) -> None:
    with pytest.raises(SchemaDrift, match="run `secure-maas db upgrade`"):
        migrate.check(engine)


def test_check_detects_drift_between_models_and_database(migrated_engine: Engine) -> None:
    with migrated_engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE state_versions ADD COLUMN stray INTEGER"))
    with pytest.raises(SchemaDrift, match="models differ from migrations"):
        migrate.check(migrated_engine)
