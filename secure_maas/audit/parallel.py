"""Verifying a whole database's log: `verify_database`, with several processes when asked.

Each link `mac_i = HMAC(key, canonical(event_i) || mac_{i-1})` can be checked from the stored
`mac_{i-1}` alone, so the log splits into ranges of sequence numbers checked independently: a
worker starting at `low` takes the stored MAC of event `low - 1` (the previous worker checks
that event's own link). Every link and every sequence number is covered once. On PostgreSQL the
workers join the caller's snapshot (`pg_export_snapshot`); on SQLite they read the committed
events up to the caller's last one.

This path only ever says "intact": if a worker finds a problem, fails, or the log is too small
to be worth it, `verify_parallel` returns None and the caller's sequential walk names the first
problem, in its own snapshot.
"""

from __future__ import annotations

import multiprocessing
import re
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from secure_maas.audit.chain import Head, read_head
from secure_maas.audit.keys import AuditKeys
from secure_maas.audit.models import events_table
from secure_maas.audit.query import read_snapshot
from secure_maas.audit.verify import (
    ChainWalk,
    VerifyReport,
    find_anchor,
    finish,
    report,
    verify,
)
from secure_maas.db.engine import create_engine
from secure_maas.errors import SecureMaasError

#: Below this many events one process is as fast as starting several.
MIN_EVENTS = 100_000
_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f-]+$")


@dataclass(frozen=True)
class _Outcome:
    intact: bool
    checked: int
    checkpoints: int
    key_ids: tuple[str, ...]
    last_mac: bytes


def _split(low: int, high: int, parts: int) -> list[tuple[int, int]]:
    size = -(-(high - low + 1) // parts)
    return [(start, min(start + size - 1, high)) for start in range(low, high + 1, size)]


def verify_parallel(
    engine: Engine, connection: Connection, keys: AuditKeys, *, expected: Head | None, jobs: int
) -> VerifyReport | None:
    """An intact report from `jobs` worker processes, or None (then walk sequentially)."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return None
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    try:
        head: Head | None = read_head(connection)
    except SecureMaasError:
        return None
    anchor, problem = find_anchor(connection)
    c = events_table.c
    low_seen, high = connection.execute(sa.select(sa.func.min(c.seq), sa.func.max(c.seq))).one()
    if problem is not None or high is None or low_seen != anchor.seq + 1:
        return None
    if high - anchor.seq < MIN_EVENTS:
        return None
    snapshot = None
    if connection.dialect.name == "postgresql":
        snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
    outcomes = _run_workers(
        url.render_as_string(hide_password=False),
        snapshot,
        anchor,
        _split(anchor.seq + 1, high, jobs),
        keys,
    )
    if outcomes is None or not all(outcome.intact for outcome in outcomes):
        return None
    walk = ChainWalk(keys, anchor, expected)
    walk.next_seq = high + 1
    walk.previous = outcomes[-1].last_mac
    walk.first_seq = anchor.seq + 1
    walk.checked = sum(outcome.checked for outcome in outcomes)
    walk.checkpoints = sum(outcome.checkpoints for outcome in outcomes)
    for outcome in outcomes:
        for key_id in outcome.key_ids:
            walk.key(key_id)
    if expected is not None and anchor.seq < expected.seq <= high:
        stored = connection.execute(sa.select(c.mac).where(c.seq == expected.seq)).scalar_one()
        walk.check_expected(bytes(stored))
    notes = finish(walk, head) if walk.problem is None else []
    return report(walk, head, notes)


def _run_workers(
    url: str, snapshot: str | None, anchor: Head, ranges: list[tuple[int, int]], keys: AuditKeys
) -> list[_Outcome] | None:
    context = multiprocessing.get_context("fork")
    started: list[tuple[BaseProcess, Pipe]] = []
    for low, high in ranges:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker, args=(url, snapshot, anchor, low, high, keys, send), daemon=True
        )
        process.start()
        send.close()
        started.append((process, receive))
    outcomes: list[_Outcome] = []
    failed = False
    for worker, receive in started:
        try:
            outcome = receive.recv()
        except EOFError:
            failed = True
        else:
            outcomes.append(outcome)
        receive.close()
        worker.join()
    return None if failed else outcomes


def _worker(
    url: str,
    snapshot: str | None,
    anchor: Head,
    low: int,
    high: int,
    keys: AuditKeys,
    send: Pipe,
) -> None:
    """Check events `low`..`high`; send an `_Outcome` (a crash sends nothing: EOF)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        send.send(_check_range(engine, snapshot, anchor, low, high, keys))
    except (SQLAlchemyError, SecureMaasError, OSError):
        send.send(_Outcome(False, 0, 0, (), b""))
    finally:
        send.close()
        engine.dispose()


def _check_range(
    engine: Engine, snapshot: str | None, anchor: Head, low: int, high: int, keys: AuditKeys
) -> _Outcome:
    with engine.connect() as connection:
        if snapshot is not None:
            connection = connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        with connection.begin():
            if snapshot is not None:
                if not _SNAPSHOT_ID.match(snapshot):
                    return _Outcome(False, 0, 0, (), b"")
                connection.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            start, generation = anchor, 0
            if low != anchor.seq + 1:
                before = connection.execute(
                    sa.select(events_table.c.mac, events_table.c.key_id).where(
                        events_table.c.seq == low - 1
                    )
                ).one_or_none()
                if before is None:
                    return _Outcome(False, 0, 0, (), b"")
                start = Head(low - 1, bytes(before.mac))
                # The generation rule spans the cut: the previous range checks that key.
                place = keys.generation(before.key_id)
                generation = 0 if place is None else place.generation
            walk = ChainWalk(keys, start, None)
            walk.generation = generation
            walk.scan(connection, low=low, high=high)
    intact = walk.problem is None and walk.next_seq == high + 1
    used = tuple(k for k, v in walk.key_cache.items() if v is not None)
    return _Outcome(intact, walk.checked, walk.checkpoints, used, walk.previous)


def verify_database(
    engine: Engine, keys: AuditKeys, *, expected: Head | None = None, jobs: int = 1
) -> VerifyReport:
    """`verify` in one read-only snapshot of `engine`'s database.

    With `jobs` > 1 a large log is checked by that many processes, each over a range of
    sequence numbers (links are independent once the MACs are stored); whenever that finds
    anything wrong, or cannot run, the sequential walk runs and its report is the answer, so
    the problem named is always the first one. Use `jobs` > 1 only from a single-threaded
    process such as the CLI: the workers are forked.
    """
    with read_snapshot(engine) as connection:
        if jobs > 1:
            found = verify_parallel(engine, connection, keys, expected=expected, jobs=jobs)
            if found is not None:
                return found
        return verify(connection, keys, expected=expected)
