"""Conventions every table follows, chosen once.

- Keys: integer surrogate keys (`BIGINT` on PostgreSQL, SQLite's rowid `INTEGER`), because the
  audit log is ordered by sequence and integer keys keep indexes small; public identifiers
  (token ids, key ids) are separate unique text columns.
- Time: `UTCDateTime` stores UTC and always returns aware datetimes, on SQLite too.
- Constraint names follow one convention so migrations can alter and drop them by name.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The one primary-key type: BIGINT where it matters, INTEGER on SQLite so it aliases the rowid.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is UTC in the database and aware in Python.

    Naive datetimes are refused on the way in: a naive value is a bug about which zone was meant.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use timeutil.utcnow()")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every secure-maas table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
