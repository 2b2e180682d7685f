"""Tamper evidence on both databases: every tampering is found and the first bad event named."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.audit import (
    AuditWriter,
    Head,
    KeyringAuditKeys,
    StaticAuditKeys,
    append_checkpoint,
    append_now,
)
from secure_maas.audit import parallel as parallel_verify
from secure_maas.audit.chain import GENESIS_MAC
from secure_maas.audit.models import events_table
from secure_maas.audit.prune import PruneRefused, plan_prune, prune
from secure_maas.audit.query import read_snapshot
from secure_maas.keys import KeyKind, Keyring
from tests.functional.audit_support import (
    KEYS,
    START,
    assert_bad,
    check,
    event,
    fill,
    head,
    seqs,
    sql,
)


def test_an_untouched_log_verifies(migrated_engine: Engine) -> None:
    empty = check(migrated_engine)
    assert empty.intact and empty.checked == 0 and empty.head == Head(0, GENESIS_MAC)
    fill(migrated_engine, 10)
    record = append_now(migrated_engine, event(10), KEYS)
    assert record.seq == 11
    report = check(migrated_engine)
    assert report.intact, report.problem
    assert (report.checked, report.first_seq, report.last_seq) == (11, 1, 11)
    assert report.head == Head(11, record.mac, "audit-test")
    assert report.key_ids == ("audit-test",)


def test_a_modified_field_is_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 8)
    sql(migrated_engine, "UPDATE audit_events SET decision = 'allow' WHERE seq = 5")
    assert_bad(check(migrated_engine), 5, "MAC does not match")


def test_a_modified_time_is_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 8)
    with migrated_engine.begin() as connection:
        connection.execute(sa.update(events_table).where(events_table.c.seq == 3).values(at=START))
    assert_bad(check(migrated_engine), 3, "MAC does not match")


def test_a_deleted_event_in_the_middle_is_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 8)
    sql(migrated_engine, "DELETE FROM audit_events WHERE seq = 4")
    assert_bad(check(migrated_engine), 4, "missing: the next event present is 5")


def test_a_forged_event_is_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 6)
    sql(
        migrated_engine,
        "INSERT INTO audit_events (seq, encoding, at, actor, actor_kind, action, decision, "
        "key_id, mac) VALUES (7, 1, :at, 'mallory', 'user', 'model:predict', 'allow', "
        "'audit-test', :mac)",
        at=START,
        mac=b"\x01" * 32,
    )
    sql(migrated_engine, "UPDATE audit_head SET seq = 7, mac = :mac", mac=b"\x01" * 32)
    assert_bad(check(migrated_engine), 7, "MAC does not match")


def test_a_replaced_event_is_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 6)
    sql(
        migrated_engine,
        "UPDATE audit_events SET actor = 'mallory', mac = :mac WHERE seq = 2",
        mac=b"\x02" * 32,
    )
    assert_bad(check(migrated_engine), 2, "MAC does not match")


def test_an_event_inserted_before_the_start_is_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 3)
    sql(
        migrated_engine,
        "INSERT INTO audit_events (seq, encoding, at, actor, actor_kind, action, decision, "
        "key_id, mac) SELECT 0, encoding, at, actor, actor_kind, action, decision, key_id, mac "
        "FROM audit_events WHERE seq = 1",
    )
    assert_bad(check(migrated_engine), 0, "lies before the chain's start")


def test_two_swapped_events_are_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 8)
    columns = [c for c in events_table.c if c.name != "seq"]
    with migrated_engine.begin() as connection:
        rows = {
            seq: connection.execute(sa.select(*columns).where(events_table.c.seq == seq)).one()
            for seq in (3, 6)
        }
        for seq, other in ((3, 6), (6, 3)):
            connection.execute(
                sa.update(events_table)
                .where(events_table.c.seq == seq)
                .values(dict(rows[other]._mapping))
            )
    assert_bad(check(migrated_engine), 3, "MAC does not match")


def test_a_changed_mac_is_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 8)
    sql(migrated_engine, "UPDATE audit_events SET mac = :mac WHERE seq = 4", mac=b"\x00" * 32)
    assert_bad(check(migrated_engine), 4, "MAC does not match")


def test_a_tampered_head_row_is_reported(migrated_engine: Engine) -> None:
    fill(migrated_engine, 3)
    sql(migrated_engine, "UPDATE audit_head SET mac = :mac", mac=b"\x07" * 32)
    assert_bad(check(migrated_engine), None, "head row's MAC differs from that of event 3")
    sql(migrated_engine, "DELETE FROM audit_head")
    assert_bad(check(migrated_engine), None, "head row is missing")


def test_periodic_checkpoints_name_the_event_before_them(migrated_engine: Engine) -> None:
    fill(migrated_engine, 12, checkpoint_every=5)
    report = check(migrated_engine)
    assert report.intact and report.checkpoints == 2  # 12 events and checkpoints 5 and 10
    with migrated_engine.connect() as connection:
        rows = connection.execute(sa.select(events_table.c.seq, events_table.c.action)).all()
    assert [seq for seq, action in rows if action == "audit:checkpoint"] == [5, 10]


def test_truncating_the_events_before_a_checkpoint_is_detected(migrated_engine: Engine) -> None:
    fill(migrated_engine, 12, checkpoint_every=5)
    sql(migrated_engine, "DELETE FROM audit_events WHERE seq < 10")
    assert_bad(check(migrated_engine), 1, "no prune event accounts for events 1..9")


def test_truncating_the_tail_back_past_a_checkpoint_is_detected(migrated_engine: Engine) -> None:
    fill(migrated_engine, 12, checkpoint_every=5)
    sql(migrated_engine, "DELETE FROM audit_events WHERE seq >= 8")
    assert_bad(check(migrated_engine), 8, "its head records seq 14 (tail truncated)")


def test_a_truncation_hidden_by_rewinding_the_head_needs_the_external_head(
    migrated_engine: Engine,
) -> None:
    fill(migrated_engine, 10)
    saved = check(migrated_engine).head
    assert saved is not None
    seven = migrated_engine.connect()
    with seven:
        mac7 = seven.execute(sa.text("SELECT mac FROM audit_events WHERE seq = 7")).scalar_one()
    sql(migrated_engine, "DELETE FROM audit_events WHERE seq > 7")
    sql(migrated_engine, "UPDATE audit_head SET seq = 7, mac = :mac", mac=mac7)
    # The database alone is consistent again: this is what the stored head is for.
    assert check(migrated_engine).intact
    assert_bad(check(migrated_engine, expected=saved), 8, "an earlier head was at seq 10")


def test_an_expected_head_that_was_rewritten_is_named(migrated_engine: Engine) -> None:
    fill(migrated_engine, 6)
    assert check(migrated_engine, expected=Head(4, b"\x09" * 32)).problem is not None
    assert_bad(check(migrated_engine, expected=Head(4, b"\x09" * 32)), 4, "expected head")
    saved = check(migrated_engine).head
    fill(migrated_engine, 3, start=6)
    assert check(migrated_engine, expected=saved).intact


def test_key_rotation_mid_chain_keeps_the_chain_verifiable(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    keyring, _report = Keyring.init(tmp_path / "keys")
    keys = KeyringAuditKeys(keyring)
    with AuditWriter(migrated_engine, keys) as writer:
        first = [writer.append(event(i)) for i in range(5)]
        keyring.rotate(KeyKind.AUDIT)
        second = [writer.append(event(i)) for i in range(5, 10)]
    assert first[0].key_id != second[0].key_id
    report = check(migrated_engine, KeyringAuditKeys(Keyring.open(tmp_path / "keys")))
    assert report.intact, report.problem
    assert set(report.key_ids) == {first[0].key_id, second[0].key_id}

    new_only = StaticAuditKeys({"x": b"x" * 32}, "x")
    assert_bad(check(migrated_engine, new_only), 1, f"MAC key {first[0].key_id} is not")


def test_prune_keeps_the_rest_verifiable_and_records_what_went(migrated_engine: Engine) -> None:
    fill(migrated_engine, 20)
    cut = START + timedelta(hours=12)
    with read_snapshot(migrated_engine) as connection:
        plan = plan_prune(connection, cut)
    assert (plan.first, plan.last, plan.count) == (1, 12, 12)
    result = prune(migrated_engine, KEYS, before=cut, actor="auditor", now=START)
    assert result.record.seq == 21 and result.new_anchor.seq == 12
    assert result.record.details["pruned_count"] == 12
    assert seqs(migrated_engine) == list(range(13, 22))
    report = check(migrated_engine)
    assert report.intact, report.problem
    assert report.anchor == result.new_anchor and report.first_seq == 13

    again = prune(migrated_engine, KEYS, before=cut, actor="auditor", now=START)
    assert again.plan.count == 0 and again.new_anchor == result.new_anchor
    fill(migrated_engine, 2, start=30)
    assert check(migrated_engine).intact


def test_tampering_after_a_prune_is_detected(migrated_engine: Engine) -> None:
    fill(migrated_engine, 10)
    prune(migrated_engine, KEYS, before=START + timedelta(hours=5), actor="a", now=START)
    sql(migrated_engine, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 8")
    assert_bad(check(migrated_engine), 8, "MAC does not match")


def test_removing_more_than_a_prune_recorded_is_detected(migrated_engine: Engine) -> None:
    fill(migrated_engine, 10)
    prune(migrated_engine, KEYS, before=START + timedelta(hours=5), actor="a", now=START)
    sql(migrated_engine, "DELETE FROM audit_events WHERE seq <= 7")
    assert_bad(check(migrated_engine), 6, "missing: the next event present is 8")


def test_a_forged_prune_anchor_is_detected(migrated_engine: Engine) -> None:
    fill(migrated_engine, 10)
    record = prune(
        migrated_engine, KEYS, before=START + timedelta(hours=5), actor="a", now=START
    ).record
    forged = record.detail.replace('"anchor_seq":5', '"anchor_seq":7') if record.detail else ""
    sql(migrated_engine, "DELETE FROM audit_events WHERE seq <= 7")
    sql(migrated_engine, "UPDATE audit_events SET detail = :d WHERE seq = 11", d=forged)
    report = check(migrated_engine)
    assert not report.intact and report.problem is not None
    assert report.problem.seq in (8, 11)  # the walk from the forged anchor fails first


def test_prune_refuses_to_remove_events_that_do_not_verify(migrated_engine: Engine) -> None:
    fill(migrated_engine, 10)
    sql(migrated_engine, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(PruneRefused, match="event 2: MAC does not match"):
        prune(migrated_engine, KEYS, before=START + timedelta(hours=5), actor="a", now=START)
    assert len(seqs(migrated_engine)) == 10


def test_on_demand_checkpoint(migrated_engine: Engine) -> None:
    fill(migrated_engine, 4)
    record = append_checkpoint(migrated_engine, KEYS, actor="auditor")
    assert record.seq == 5 and record.action == "audit:checkpoint"
    assert record.details["head_seq"] == 4
    assert head(migrated_engine) == (5, record.mac)
    assert check(migrated_engine).checkpoints == 1


def test_parallel_verification_agrees_with_the_sequential_walk(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel_verify, "MIN_EVENTS", 10)
    fill(migrated_engine, 60, checkpoint_every=7)
    prune(migrated_engine, KEYS, before=START + timedelta(hours=5), actor="a", now=START)
    sequential = check(migrated_engine)
    with read_snapshot(migrated_engine) as connection:
        direct = parallel_verify.verify_parallel(
            migrated_engine, connection, KEYS, expected=None, jobs=3
        )
    assert direct == sequential and sequential.intact
    assert check(migrated_engine, jobs=3) == sequential
    sql(migrated_engine, "UPDATE audit_events SET rows = 99 WHERE seq = 40")
    sql(migrated_engine, "UPDATE audit_events SET rows = 99 WHERE seq = 50")
    assert_bad(check(migrated_engine, jobs=3), 40, "MAC does not match")
