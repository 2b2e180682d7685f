"""Whether this process can serve: the database answers, the keys load, the audit log takes writes.

Under gunicorn the instance's model process must answer too (it runs the models and writes
the audit events): until it does, and while it restarts, the instance is not ready.

A request that cannot be audited or authorised fails closed anyway; readiness tells a load
balancer so before it sends one. The audit check takes the chain's write lock in a transaction
that writes nothing (BEGIN IMMEDIATE on SQLite, the head row's lock on PostgreSQL), so a
read-only database or a missing head row is found without adding probe events to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from secure_maas.audit.chain import AuditUnavailable, read_head
from secure_maas.audit.keys import AuditKeys
from secure_maas.db import DatabaseUnavailable, connect_check
from secure_maas.db.engine import begin_immediate, describe_error
from secure_maas.errors import SecureMaasError
from secure_maas.keys import KeyKind, Keyring
from secure_maas.serving.services import Services

log = logging.getLogger(__name__)

CHECKS = ("database", "keys", "audit", "models")


def check_database(engine: Engine) -> None:
    connect_check(engine)


def check_keys(services: Services) -> None:
    """The service's private keys decrypt, a JWT key verifies, the audit key MACs."""
    keyring = Keyring.open(services.settings.keys_dir)
    if not keyring.service_private_keys():
        raise SecureMaasError("no usable service key")
    keyring.active(KeyKind.JWT)
    services.audit_keys.active()


def check_audit(engine: Engine, keys: AuditKeys) -> None:
    keys.active()
    try:
        with engine.connect() as connection:
            begin_immediate(connection)
            with connection.begin() as transaction:
                read_head(connection, lock=True)
                transaction.rollback()
    except SQLAlchemyError as exc:
        raise AuditUnavailable(f"audit log not writable: {describe_error(exc)}") from exc


def check_models(services: Services) -> None:
    """Every model process answers (under gunicorn; in-process models always do)."""
    ping = getattr(services.models, "ping", None)
    if ping is not None:
        ping()


def failed_checks(services: Services) -> list[str]:
    """The names of the checks that fail (empty: ready); the reasons go to the log only."""
    failed: list[str] = []
    try:
        check_database(services.engine)
    except DatabaseUnavailable as exc:
        log.warning("not ready: %s", exc)
        failed = ["database", "keys", "audit"]  # without the database neither can hold
        checks: tuple[tuple[str, Callable[[], None]], ...] = (
            ("models", lambda: check_models(services)),
        )
    else:
        checks = (
            ("keys", lambda: check_keys(services)),
            ("audit", lambda: check_audit(services.engine, services.audit_keys)),
            ("models", lambda: check_models(services)),
        )
    for name, check in checks:
        try:
            check()
        except (SecureMaasError, SQLAlchemyError, OSError) as exc:
            log.warning("not ready: %s check failed: %s", name, exc)
            failed.append(name)
    return failed
