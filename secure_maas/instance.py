"""Bringing an instance to a usable state: keys in place, database at the newest schema.

Shared by `secure-maas init` and the demo; idempotent, so running it on a live instance
only reports that nothing needed doing.
"""

from __future__ import annotations

from dataclasses import dataclass

from secure_maas.config import Settings
from secure_maas.db import connect_check, create_engine, migrate
from secure_maas.keys import InitReport, Keyring


@dataclass(frozen=True)
class InitResult:
    keys: InitReport
    revision_before: str | None
    revision_after: str | None

    @property
    def changed(self) -> bool:
        return self.keys.changed or self.revision_before != self.revision_after


def initialise(settings: Settings, *, pq: bool = False) -> InitResult:
    """Create missing keys and migrate the database; check the database first so a bad URL
    fails before anything is written."""
    engine = create_engine(settings.database_url)
    try:
        connect_check(engine)
        _keyring, report = Keyring.init(settings.keys_dir, pq=pq)
        before = migrate.current(engine)
        migrate.upgrade(engine)
        after = migrate.current(engine)
    finally:
        engine.dispose()
    return InitResult(report, before, after)
