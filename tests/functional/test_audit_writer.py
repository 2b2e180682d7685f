"""Durability and fail-closed: group commit, several writer processes, SIGKILL, failed writes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.audit import AuditUnavailable, AuditWriter, KeyringAuditKeys, append_now
from secure_maas.audit.chain import append_events, write_transaction
from secure_maas.db import create_engine
from secure_maas.db.engine import begin_immediate
from secure_maas.keys import KeyKind, Keyring
from tests.functional.audit_support import KEYS, START, check, event, fill, head, seqs, sql

ROOT = Path(__file__).resolve().parents[2]


def spawn(url: str, count: int, threads: int, copies: int = 1) -> list[subprocess.Popen[str]]:
    """Start `copies` writer processes and let them all go at once."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.functional.audit_child", url, str(count), str(threads)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(copies)
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", child.stderr and child.stderr.read()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.close()
    return children


def test_an_append_returns_only_after_commit(migrated_engine: Engine) -> None:
    with AuditWriter(migrated_engine, KEYS) as writer:
        record = writer.append(event(1))
        # Another connection sees it at once: it was committed before append returned.
        assert seqs(migrated_engine) == [record.seq] == [1]
    assert check(migrated_engine).intact


def test_group_commit_puts_many_waiting_events_in_one_transaction(
    migrated_engine: Engine,
) -> None:
    writer = AuditWriter(migrated_engine, KEYS)
    blocker = migrated_engine.connect()
    begin_immediate(blocker)
    transaction = blocker.begin()
    blocker.execute(
        sa.text(
            "SELECT seq FROM audit_head"
            + ("" if blocker.dialect.name == "sqlite" else " FOR UPDATE")
        )
    )
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(writer.append, event(i)) for i in range(50)]
        deadline = time.monotonic() + 10
        while writer.pending() < 49 and time.monotonic() < deadline:
            time.sleep(0.01)
        transaction.commit()  # release the chain's lock: the queue drains in one batch
        blocker.close()
        records = [future.result(timeout=30) for future in futures]
    writer.close()
    assert sorted(r.seq for r in records) == list(range(1, 51))
    assert writer.batches <= 2
    assert check(migrated_engine).intact


def test_several_processes_write_one_chain(migrated_engine: Engine, database_url: str) -> None:
    children = spawn(database_url, 200, 4, copies=4)
    acknowledged: list[int] = []
    for child in children:
        assert child.stdout is not None and child.stderr is not None
        out, err = child.stdout.read(), child.stderr.read()
        child.wait(timeout=120)
        assert child.returncode == 0, err
        acknowledged += [int(line) for line in out.split()]
    assert len(acknowledged) == 800 == len(set(acknowledged))
    present = seqs(migrated_engine)
    assert set(acknowledged) <= set(present)
    assert present == list(range(1, len(present) + 1))
    report = check(migrated_engine)
    assert report.intact, report.problem
    assert report.checked == len(present) and report.checkpoints == len(present) - 800


def test_a_killed_writer_loses_no_acknowledged_event(
    migrated_engine: Engine, database_url: str
) -> None:
    [child] = spawn(database_url, 0, 4)
    assert child.stdout is not None
    acknowledged: list[int] = []
    for line in child.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 150:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    acknowledged += [int(line) for line in child.stdout.read().split()]
    child.stdout.close()
    assert child.stderr is not None
    child.stderr.close()
    present = set(seqs(migrated_engine))
    assert set(acknowledged) <= present
    assert check(migrated_engine).intact
    after = append_now(migrated_engine, event(0), KEYS)
    assert after.seq == max(present) + 1
    assert check(migrated_engine).intact


def test_a_failed_batch_fails_every_caller_and_writes_nothing(migrated_engine: Engine) -> None:
    fill(migrated_engine, 5)
    before = head(migrated_engine)
    sql(migrated_engine, "ALTER TABLE audit_events RENAME TO audit_events_away")
    with AuditWriter(migrated_engine, KEYS) as writer:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(writer.append, event(i)) for i in range(20)]
            errors = [future.exception(timeout=60) for future in futures]
        assert all(isinstance(error, AuditUnavailable) for error in errors), errors
        assert "audit log write failed" in str(errors[0])
        sql(migrated_engine, "ALTER TABLE audit_events_away RENAME TO audit_events")
        assert head(migrated_engine) == before
        assert writer.append(event(99)).seq == 6
    assert seqs(migrated_engine) == [1, 2, 3, 4, 5, 6]
    assert check(migrated_engine).intact


def test_a_batch_is_all_or_nothing(migrated_engine: Engine) -> None:
    fill(migrated_engine, 3)
    sql(
        migrated_engine,
        "INSERT INTO audit_events (seq, encoding, at, actor, actor_kind, action, decision, "
        "key_id, mac) VALUES (6, 1, :at, 'x', 'user', 'model:list', 'allow', 'k', :mac)",
        at=START,
        mac=b"\x00" * 32,
    )
    events = [event(i) for i in range(5)]  # would be seq 4..8; 6 is taken
    with pytest.raises(AuditUnavailable, match="audit log write failed"):
        write_transaction(migrated_engine, lambda c: append_events(c, events, KEYS, now=START))
    assert seqs(migrated_engine) == [1, 2, 3, 6]
    assert head(migrated_engine)[0] == 3


def test_an_unreachable_database_fails_the_caller() -> None:
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(AuditUnavailable, match="audit log write failed"):
        append_now(engine, event(0), KEYS)
    with AuditWriter(engine, KEYS) as writer, pytest.raises(AuditUnavailable):
        writer.append(event(0))
    engine.dispose()


def test_a_missing_audit_key_fails_the_caller(migrated_engine: Engine, tmp_path: Path) -> None:
    keyring, _report = Keyring.init(tmp_path / "keys")
    (tmp_path / "keys" / f"{keyring.active(KeyKind.AUDIT).id}.key").unlink()
    with pytest.raises(AuditUnavailable, match="is missing"):
        append_now(migrated_engine, event(0), KeyringAuditKeys(keyring))
    assert seqs(migrated_engine) == []


def test_close_drains_the_queue_then_refuses(migrated_engine: Engine) -> None:
    writer = AuditWriter(migrated_engine, KEYS)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(writer.append(event(i)).seq))
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert sorted(results) == list(range(1, 21))
    with pytest.raises(AuditUnavailable, match="closed"):
        writer.append(event(0))
