"""The console's integrity banner on SQLite and PostgreSQL: `unknown` until a verification ran
in this process, `ok` with the number of events checked, `broken` naming the first bad event
when a stored event was altered, and `unknown` with the error when the walk could not run."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.audit import AuditEvent, AuditWriter, KeyringAuditKeys
from secure_maas.audit.models import events_table
from secure_maas.config import Settings
from secure_maas.console.integrity import Integrity
from secure_maas.db import create_engine
from secure_maas.instance import initialise
from secure_maas.keys import Keyring


def logged(settings: Settings, count: int) -> tuple[Engine, KeyringAuditKeys]:
    initialise(settings)
    engine = create_engine(settings.database_url)
    keys = KeyringAuditKeys(Keyring.open(settings.keys_dir))
    writer = AuditWriter(engine, keys)
    try:
        for n in range(count):
            writer.append(AuditEvent(action="audit:read", actor=f"user{n}", reason="read"))
    finally:
        writer.close(timeout=30)
    return engine, keys


def test_the_banner_is_unknown_then_ok_then_broken(settings: Settings) -> None:
    engine, keys = logged(settings, 12)
    integrity = Integrity(engine, keys)
    assert integrity.state().state == "unknown"
    assert integrity.start()
    integrity.wait(60)
    banner = integrity.state()
    assert banner.state == "ok" and banner.report is not None
    assert banner.checked >= 12 and banner.percent == 100
    with engine.begin() as connection:
        seq = connection.execute(
            sa.select(events_table.c.seq).where(events_table.c.actor == "user5")
        ).scalar_one()
        connection.execute(
            sa.update(events_table).where(events_table.c.seq == seq).values(reason="edited")
        )
    assert integrity.start()
    integrity.wait(60)
    broken = integrity.state()
    assert broken.state == "broken" and broken.report is not None
    assert broken.report.problem is not None and broken.report.problem.seq == seq
    engine.dispose()


class UnreadableKeys:
    """Audit keys that cannot be read (a missing or unreadable key file)."""

    def __getattr__(self, name: str) -> object:
        raise OSError(f"audit key unreadable ({name})")


def test_a_walk_that_cannot_run_leaves_the_banner_unknown_with_why(settings: Settings) -> None:
    engine, _keys = logged(settings, 2)
    integrity = Integrity(engine, UnreadableKeys())  # type: ignore[arg-type]
    assert integrity.start()
    integrity.wait(60)
    banner = integrity.state()
    assert banner.state == "unknown" and "audit key unreadable" in (banner.error or "")
    engine.dispose()
