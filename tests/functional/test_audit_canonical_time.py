"""One canonical time text is MAC'd, stored and compared, on both databases.

The attack reproduced: rewrite an event's `at` to the same instant in another offset
(`...-07:00`). Before the fix verify normalised the time and said intact, while `audit list
--since` compared the stored text and lost the event, and prune cut elsewhere. Now `at` holds
`2026-11-01T05:00:00.000000Z` and nothing else: new events MAC that text (encoding 2), events
written before (encoding 1, migrated by 0008) have their text checked, and every filter and
prune compares the same text.
"""

from __future__ import annotations

import json
from datetime import timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.audit import AuditFilter, KeyringAuditKeys
from secure_maas.audit.chain import compute_mac
from secure_maas.audit.encoding import canonical_v1, canonical_v2
from secure_maas.audit.events import to_microseconds
from secure_maas.audit.models import CANONICAL_COLUMNS, events_table
from secure_maas.audit.prune import plan_prune, prune
from secure_maas.audit.query import list_events, read_snapshot
from secure_maas.config import Settings
from secure_maas.db import create_engine, migrate
from secure_maas.db.base import UTCDateTime
from secure_maas.keys import Keyring
from tests.functional.audit_support import KEYS, START, assert_bad, check, event, fill, sql
from tests.functional.cli import run_cli

WEST = timezone(timedelta(hours=-7))
#: The columns a release before 0008 wrote: `encoding` where `at` now leads the encoding.
_V1_COLUMNS = ("seq", "encoding", *CANONICAL_COLUMNS[2:], "mac")


def _raw_times(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.execute(sa.text("SELECT at FROM audit_events ORDER BY seq")).scalars()
        )


def _offset_text(hours: int) -> str:
    """Event `hours`'s time (see `audit_support.event`) spelled in UTC-7: the same instant,
    short enough (25 characters) for the 27-character column on PostgreSQL too."""
    return (START + timedelta(hours=hours)).astimezone(WEST).isoformat(timespec="seconds")


def _write_version_1(engine: Engine, count: int) -> None:
    """Events 1..count as a release before 0008 wrote them: encoding 1 (the MAC covers the
    instant in microseconds), `at` a timestamp column."""
    legacy = sa.table(
        "audit_events", *[sa.column(name) for name in _V1_COLUMNS], sa.column("at", UTCDateTime())
    )
    key_id, key = KEYS.active()
    previous, rows = bytes(32), []
    for index in range(count):
        e = event(index)
        assert e.at is not None
        values = (
            index + 1,
            to_microseconds(e.at),
            e.request_id,
            e.actor,
            e.actor_kind,
            e.action,
            e.model,
            e.model_version,
            e.decision,
            e.reason_code,
            e.reason,
            e.http_status,
            e.client,
            e.latency_us,
            e.rows,
            e.body_sha256,
            None,
            key_id,
        )
        mac = compute_mac(key, canonical_v1(values), previous)
        row = dict(zip(_V1_COLUMNS, (index + 1, 1, *values[2:], mac), strict=True))
        rows.append({**row, "at": e.at})
        previous = mac
    with engine.begin() as connection:
        connection.execute(sa.insert(legacy), rows)
        connection.execute(
            sa.text("UPDATE audit_head SET seq = :seq, mac = :mac, key_id = :key"),
            {"seq": count, "mac": previous, "key": key_id},
        )


def test_new_events_store_and_mac_the_canonical_text(migrated_engine: Engine) -> None:
    fill(migrated_engine, 3)
    assert _raw_times(migrated_engine) == [
        "2026-11-01T00:00:00.000000Z",
        "2026-11-01T01:00:00.000000Z",
        "2026-11-01T02:00:00.000000Z",
    ]
    report = check(migrated_engine)
    assert report.intact, report.problem


def test_an_offset_rewrite_of_the_same_instant_is_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 8)
    sql(migrated_engine, "UPDATE audit_events SET at = :at WHERE seq = 4", at=_offset_text(3))
    assert_bad(check(migrated_engine), 4, "is not the canonical UTC text")
    assert_bad(check(migrated_engine), 4, "2026-10-31T20:00:00-07:00")


def test_old_events_keep_verifying_and_their_text_is_checked(engine: Engine) -> None:
    migrate.upgrade(engine, "0007")
    _write_version_1(engine, 6)
    if engine.dialect.name == "sqlite":
        # Before 0008 SQLite stored whatever text it was given: an offset rewrite verified.
        sql(engine, "UPDATE audit_events SET at = :at WHERE seq = 2", at=_offset_text(1))
    migrate.upgrade(engine)
    assert _raw_times(engine)[:3] == [
        "2026-11-01T00:00:00.000000Z",
        "2026-11-01T01:00:00.000000Z",  # normalised by the migration: the same instant
        "2026-11-01T02:00:00.000000Z",
    ]
    fill(engine, 3, start=6)
    report = check(engine)
    assert report.intact, report.problem
    with engine.connect() as connection:
        encodings = connection.execute(sa.text("SELECT encoding FROM audit_events ORDER BY seq"))
        assert list(encodings.scalars()) == [1] * 6 + [2] * 3
    with read_snapshot(engine) as connection:
        since = list_events(connection, AuditFilter(since=START + timedelta(hours=1)))
    assert [r.seq for r in since] == list(range(2, 10))

    # Encoding 1 MACs the instant, not the text: verify checks the text itself.
    sql(engine, "UPDATE audit_events SET at = :at WHERE seq = 3", at=_offset_text(2))
    assert_bad(check(engine), 3, 'time "2026-10-31T19:00:00-07:00" is not the canonical')


def test_filters_and_prune_compare_the_canonical_text(migrated_engine: Engine) -> None:
    fill(migrated_engine, 12)
    three = START + timedelta(hours=3)
    nine = START + timedelta(hours=9)
    with read_snapshot(migrated_engine) as connection:
        in_utc = list_events(connection, AuditFilter(since=three, until=nine))
        elsewhere = list_events(
            connection, AuditFilter(since=three.astimezone(WEST), until=nine.astimezone(WEST))
        )
        plan = plan_prune(connection, three.astimezone(WEST))
    assert [r.seq for r in in_utc] == [r.seq for r in elsewhere] == [4, 5, 6, 7, 8, 9]
    assert (plan.first, plan.last) == (1, 3)
    assert in_utc[0].at == three and in_utc[0].at.tzinfo is not None
    result = prune(migrated_engine, KEYS, before=three.astimezone(WEST), actor="a", now=START)
    assert result.plan.count == 3
    assert check(migrated_engine).intact


def test_the_cli_filters_by_the_same_text_and_verify_names_the_rewrite(
    cli_env: dict[str, str], settings: Settings
) -> None:
    assert run_cli("init", env=cli_env).returncode == 0
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            before = int(
                connection.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()
            )
        fill(engine, 6, keys=KeyringAuditKeys(Keyring.open(settings.keys_dir)))
        listed = run_cli(
            "audit",
            "list",
            "--since",
            "2026-10-31T20:00:00-07:00",  # 2026-11-01T03:00:00Z
            "--until",
            "2026-11-01T05:00:00Z",
            "--format",
            "json",
            env=cli_env,
        )
        assert listed.returncode == 0, listed.stderr
        shown = json.loads(listed.stdout)
        assert [e["seq"] for e in shown] == [before + 4, before + 5]
        assert shown[0]["time"] == "2026-11-01T03:00:00.000000Z"
        sql(
            engine,
            "UPDATE audit_events SET at = :at WHERE seq = :seq",
            at=_offset_text(3),
            seq=before + 4,
        )
        result = run_cli("audit", "verify", env=cli_env)
        assert result.returncode == 1
        assert f"TAMPERED: event {before + 4}: MAC does not match" in result.stdout
        assert "not the canonical UTC text" in result.stdout
    finally:
        engine.dispose()


def test_a_canonical_time_names_a_real_instant(migrated_engine: Engine) -> None:
    fill(migrated_engine, 2)
    sql(migrated_engine, "UPDATE audit_events SET at = '2026-13-01T00:00:00.000000Z' WHERE seq = 1")
    assert_bad(check(migrated_engine), 1, "MAC does not match")


def test_even_a_correct_mac_does_not_make_another_spelling_an_event_time(
    migrated_engine: Engine,
) -> None:
    # Only the writer's canonical text is ever MAC'd; another spelling under a valid MAC (the
    # last event re-MAC'd by someone holding the key) is refused all the same.
    fill(migrated_engine, 3)
    spelled = "2026-11-01 02:00:00.000000Z"  # 27 characters, a space for the T
    columns = [events_table.c[name] for name in CANONICAL_COLUMNS]
    with migrated_engine.begin() as connection:
        row = connection.execute(sa.select(*columns).where(events_table.c.seq == 3)).one()
        previous = connection.execute(
            sa.select(events_table.c.mac).where(events_table.c.seq == 2)
        ).scalar_one()
        _key_id, key = KEYS.active()
        mac = compute_mac(key, canonical_v2((3, spelled, *row[2:])), bytes(previous))
        connection.execute(
            sa.text("UPDATE audit_events SET at = :at, mac = :mac WHERE seq = 3"),
            {"at": spelled, "mac": mac},
        )
        connection.execute(sa.text("UPDATE audit_head SET mac = :mac"), {"mac": mac})
    assert_bad(check(migrated_engine), 3, 'time "2026-11-01 02:00:00.000000Z" is not the canonical')
