"""Audit log benchmark: group commit vs one transaction per event, and verification speed.

    .venv/bin/python bench/audit.py [--events N] [--threads T] [--verify-events M]
                                    [--postgres-url URL]

Appends: T threads (default 64, as in a serving process with that many request threads; 16 is
shown too) append N events through one `AuditWriter` (group commit), then the same database
takes events one transaction each (`append_now`) from 1 thread and from 8 threads; the ratio is
group commit at T threads over the faster of those baselines. Both on SQLite (a file, WAL,
synchronous=FULL) and on PostgreSQL (a scratch schema, dropped afterwards; skipped with a note
when the server does not answer). Verification: M events (default 1,000,000) are bulk-loaded
as a valid chain, then `verify_database` checks them with one process and with the CLI's
default number of processes. Goals: ratio >= 5 on both databases, >= 100,000 events/s.
"""

from __future__ import annotations

import argparse
import hmac
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secure_maas.audit import AuditEvent, AuditWriter, StaticAuditKeys, append_now
from secure_maas.audit.chain import GENESIS_MAC
from secure_maas.audit.encoding import VERSION_2, canonical_v2
from secure_maas.audit.events import body_digest
from secure_maas.audit.parallel import verify_database
from secure_maas.audit.times import canonical_time
from secure_maas.db import create_engine, migrate

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
KEY_ID = "audit-bench"
KEYS = StaticAuditKeys({KEY_ID: secrets.token_bytes(32)}, KEY_ID)
START = datetime(2026, 11, 1, tzinfo=UTC)
CLI_JOBS = min(4, os.cpu_count() or 1)


def event(i: int) -> AuditEvent:
    """A realistic prediction event (what the serving app records per request)."""
    return AuditEvent(
        action="model:predict",
        actor=f"user-{i % 50}",
        model=("iris", "digits", "wine")[i % 3],
        model_version=1 + i % 4,
        decision="deny" if i % 10 == 0 else "allow",
        reason_code="no-rule" if i % 10 == 0 else "rule:12",
        http_status=403 if i % 10 == 0 else 200,
        client=f"10.0.{i % 7}.{i % 250}",
        latency_ms=1.0 + (i % 100) / 10,
        rows=1 + i % 32,
        body_sha256=body_digest(i.to_bytes(8, "big")),
        request_id=f"{i:016x}",
    )


def concurrently(threads: int, total: int, work: Callable[[int], object]) -> float:
    """Events per second when `threads` threads share `total` calls of `work`."""
    per_thread = total // threads

    def run(offset: int) -> None:
        for i in range(offset, offset + per_thread):
            work(i)

    workers = [threading.Thread(target=run, args=(t * per_thread,)) for t in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return per_thread * threads / (time.perf_counter() - started)


def _append(writer: AuditWriter, i: int) -> None:
    writer.append(event(i))


def appends(engine: Engine, events: int, threads: int) -> float:
    """Group commit over the best one-transaction-per-event baseline, printed and returned."""
    append_now(engine, event(0), KEYS)  # warm the pool and the caches
    rates: dict[int, float] = {}
    for count in sorted({16, threads}):
        with AuditWriter(engine, KEYS) as writer:
            rates[count] = concurrently(count, events, partial(_append, writer))
            batches = writer.batches
        print(
            f"  group commit, {count} threads: {rates[count]:10,.0f} events/s "
            f"({events / max(batches, 1):.0f} events per transaction)"
        )
    grouped = rates[threads]
    baseline_events = max(200, events // 5)
    single = concurrently(1, baseline_events, lambda i: append_now(engine, event(i), KEYS))
    several = concurrently(8, baseline_events, lambda i: append_now(engine, event(i), KEYS))
    best = max(single, several)
    ratio = grouped / best
    print(f"  one transaction per event, 1 thread: {single:10,.0f} events/s")
    print(f"  one transaction per event, 8 threads: {several:10,.0f} events/s")
    print(f"  ratio at {threads} threads: {ratio:.1f}x")
    return ratio


def chain_rows(count: int) -> Iterator[tuple[object, ...]]:
    """A valid chain of `count` events as table rows, computed without the database."""
    _key_id, key = KEYS.active()
    previous = GENESIS_MAC
    for seq in range(1, count + 1):
        e = event(seq)
        at = START + timedelta(milliseconds=seq)
        values = (
            seq,
            canonical_time(at),
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
            KEY_ID,
        )
        previous = hmac.digest(key, canonical_v2(values) + previous, "sha256")
        yield (seq, VERSION_2, values[1], *values[2:], previous)


COLUMNS = (
    "seq, encoding, at, request_id, actor, actor_kind, action, model, model_version, decision, "
    "reason_code, reason, http_status, client, latency_us, rows, body_sha256, detail, key_id, mac"
)


def bulk_load(engine: Engine, count: int) -> None:
    """Write a valid chain of `count` events straight through the driver (setup, not timed)."""
    last = None
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM audit_events")
        raw = connection.connection.driver_connection
        cursor = raw.cursor()  # type: ignore[union-attr]
        if engine.dialect.name == "postgresql":
            with cursor.copy(f"COPY audit_events ({COLUMNS}) FROM STDIN") as copy:
                for row in chain_rows(count):
                    copy.write_row(row)
                    last = row
        else:
            marks = ", ".join("?" * 20)
            batch: list[tuple[object, ...]] = []
            for row in chain_rows(count):
                batch.append(row)  # `at` is already the canonical text the column holds
                if len(batch) == 50_000:
                    cursor.executemany(f"INSERT INTO audit_events VALUES ({marks})", batch)
                    batch.clear()
                last = row
            cursor.executemany(f"INSERT INTO audit_events VALUES ({marks})", batch)
        if last is not None:
            connection.execute(
                sa.text("UPDATE audit_head SET seq = :seq, mac = :mac, key_id = :k"),
                {"seq": last[0], "mac": last[-1], "k": KEY_ID},
            )


def verification(engine: Engine, count: int) -> float:
    """Events per second verified with the CLI's default number of processes."""
    started = time.perf_counter()
    bulk_load(engine, count)
    print(f"  loaded {count:,} chained events in {time.perf_counter() - started:.1f}s")
    result = 0.0
    for jobs in sorted({1, CLI_JOBS}):
        started = time.perf_counter()
        report = verify_database(engine, KEYS, jobs=jobs)
        rate = report.checked / (time.perf_counter() - started)
        if not report.intact or report.checked != count:
            raise SystemExit(f"verification failed: {report.problem}")
        print(f"  verify, {jobs} process{'es' if jobs > 1 else ''}: {rate:10,.0f} events/s")
        result = rate
    return result


def pg_answers(url: str) -> bool:
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), 1):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="appends per measurement")
    parser.add_argument(
        "--threads", type=int, default=64, help="request threads appending at once (ratio)"
    )
    parser.add_argument("--verify-events", type=int, default=1_000_000)
    parser.add_argument("--postgres-url", default=PG_URL)
    args = parser.parse_args()
    results: dict[str, str] = {}
    print(
        f"audit benchmark: {args.events:,} appends, {args.threads} threads, {os.cpu_count()} CPUs"
    )

    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        migrate.upgrade(engine)
        print("SQLite (WAL, synchronous=FULL):")
        results["group_commit_ratio_sqlite"] = f"{appends(engine, args.events, args.threads):.1f}"
        results["verify_eps_sqlite"] = f"{verification(engine, args.verify_events):.0f}"
        engine.dispose()

    if not pg_answers(args.postgres_url):
        print(f"PostgreSQL: skipped, nothing answers at {make_url(args.postgres_url).host}")
        results["group_commit_ratio_pg"] = "skipped"
    else:
        schema = f"smaas_bench_{secrets.token_hex(4)}"
        admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(args.postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        engine = create_engine(url.render_as_string(hide_password=False))
        try:
            migrate.upgrade(engine)
            print("PostgreSQL:")
            ratio = appends(engine, args.events, args.threads)
            results["group_commit_ratio_pg"] = f"{ratio:.1f}"
            results["verify_eps_pg"] = f"{verification(engine, args.verify_events):.0f}"
        finally:
            engine.dispose()
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()

    results["verify_eps"] = results["verify_eps_sqlite"]
    print("RESULT " + " ".join(f"{name}={value}" for name, value in results.items()))


if __name__ == "__main__":
    main()
