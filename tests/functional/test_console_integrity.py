"""The console's integrity banner on SQLite and PostgreSQL: `unknown` until a verification ran,
`ok` with the number of events checked and the head, the same in another process (the outcome
is read back from the audit log), `broken` naming the first bad event when a stored event was
altered, and `unknown` with the error when the walk could not run."""

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


def logged(settings: Settings, count: int) -> tuple[Engine, KeyringAuditKeys, AuditWriter]:
    initialise(settings)
    engine = create_engine(settings.database_url)
    keys = KeyringAuditKeys(Keyring.open(settings.keys_dir))
    writer = AuditWriter(engine, keys)
    for n in range(count):
        writer.append(AuditEvent(action="audit:read", actor=f"user{n}", reason="read"))
    return engine, keys, writer


def test_the_banner_is_unknown_then_ok_then_broken(settings: Settings) -> None:
    engine, keys, writer = logged(settings, 12)
    integrity = Integrity(engine, keys, writer.append)
    assert integrity.state().state == "unknown"
    assert integrity.start("tester")
    integrity.wait(60)
    banner = integrity.state()
    assert banner.state == "ok" and banner.requested_by == "tester" and banner.head
    assert banner.checked >= 12 and banner.percent == 100
    assert Integrity(engine, keys, writer.append).state() == banner  # another process: the log
    with engine.begin() as connection:
        seq = connection.execute(
            sa.select(events_table.c.seq).where(events_table.c.actor == "user5")
        ).scalar_one()
        connection.execute(
            sa.update(events_table).where(events_table.c.seq == seq).values(reason="edited")
        )
    assert integrity.start("tester")
    integrity.wait(60)
    broken = integrity.state()
    assert broken.state == "broken" and f"event {seq}" in (broken.summary or "")
    writer.close(timeout=30)
    engine.dispose()


class UnreadableKeys:
    """Audit keys that cannot be read (a missing or unreadable key file)."""

    def __getattr__(self, name: str) -> object:
        raise OSError(f"audit key unreadable ({name})")


def test_a_walk_that_cannot_run_leaves_the_banner_unknown_with_why(settings: Settings) -> None:
    engine, _keys, writer = logged(settings, 2)
    integrity = Integrity(engine, UnreadableKeys(), writer.append)  # type: ignore[arg-type]
    assert integrity.start("tester")
    integrity.wait(60)
    banner = integrity.state()
    assert banner.state == "unknown" and "audit key unreadable" in (banner.summary or "")
    writer.close(timeout=30)
    engine.dispose()
