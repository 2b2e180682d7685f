"""Database access: the engine, sessions, shared column conventions and Alembic migrations.

Domain packages define their own tables on `Base` (warehouse-style: a package holds its models);
`secure_maas.db.schema` imports them all so that Alembic sees the whole schema.
"""

from secure_maas.db.engine import DatabaseUnavailable, connect_check, create_engine
from secure_maas.db.session import SessionFactory, session_scope

__all__ = [
    "DatabaseUnavailable",
    "SessionFactory",
    "connect_check",
    "create_engine",
    "session_scope",
]
