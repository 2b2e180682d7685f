"""Quota leases (`policy.leases`): the counters are shared as with `consume`, but written once
per lease rather than once per request. On SQLite and PostgreSQL.

What must hold whatever the interleaving: no window ever serves more than its limit (the
counter, which holds served plus leased-unused, never passes it); one process alone is exact
(it gets its whole allowance); several processes together never exceed it, and once their
leases are given back the counter equals what they served; a request refused by one window
takes nothing from another; and far fewer transactions than requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine

from secure_maas.db.session import session_factory, session_scope
from secure_maas.policy import Quota, Window
from secure_maas.policy.leases import QuotaLeases
from secure_maas.policy.models import QuotaCounter
from secure_maas.policy.quota import usage
from tests.functional.access_child import race

NOW = datetime(2027, 5, 1, 12, 0, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(migrated_engine: Engine, clock: Clock) -> Iterator[QuotaLeases]:
    leases = QuotaLeases(migrated_engine, clock=clock, reaper=False)
    yield leases
    leases.close()


def counted(engine: Engine, subject: str, period: str = "day") -> tuple[int, int]:
    with session_scope(session_factory(engine)) as session:
        row = session.get(QuotaCounter, (subject, "digits", period, _start(period)))
        return (0, 0) if row is None else (int(row.request_count), int(row.row_count))


def _start(period: str) -> int:
    seconds = {"minute": 60, "hour": 3600, "day": 86400}[period]
    stamp = int(NOW.timestamp())
    return stamp - stamp % seconds


def test_one_process_gets_exactly_its_allowance_in_few_transactions(
    migrated_engine: Engine, book: QuotaLeases
) -> None:
    quotas = (Quota(Window.DAY, requests=1000),)
    results = []
    for _ in range(1020):
        results.append(book.consume("alice", "digits", quotas, 1, NOW).allowed)
        assert counted(migrated_engine, "alice")[0] <= 1000
    assert results == [True] * 1000 + [False] * 20
    refused = book.consume("alice", "digits", quotas, 1, NOW)
    assert refused.retry_after > 0 and "exhausted" in refused.reason
    # Leases of 1/16 of what is left: about 16 ln(1000/16) + 16, not one per request.
    assert book.transactions < 150, book.transactions
    book.close()
    assert counted(migrated_engine, "alice")[0] == 1000


def test_units_another_holder_leased_come_back_when_its_lease_ends(
    migrated_engine: Engine, clock: Clock
) -> None:
    quotas = (Quota(Window.DAY, requests=32),)
    first = QuotaLeases(migrated_engine, clock=clock, reaper=False)
    second = QuotaLeases(migrated_engine, clock=clock, reaper=False)
    try:
        assert first.consume("bob", "digits", quotas, 1, NOW).allowed  # leases 2, uses 1
        served = 1 + sum(second.consume("bob", "digits", quotas, 1, NOW).allowed
                         for _ in range(40))  # fmt: skip
        assert served == 31  # the 32nd unit is leased to `first`, unused
        assert counted(migrated_engine, "bob")[0] == 32
        clock.now += 5
        first.reap()  # its lease ended: the unused unit goes back
        assert counted(migrated_engine, "bob")[0] == 31
        assert second.consume("bob", "digits", quotas, 1, NOW).allowed
        assert not second.consume("bob", "digits", quotas, 1, NOW).allowed
        assert not first.consume("bob", "digits", quotas, 1, NOW).allowed
    finally:
        first.close()
        second.close()
    assert counted(migrated_engine, "bob")[0] == 32


def test_rows_are_leased_and_bounded_like_requests(
    migrated_engine: Engine, book: QuotaLeases
) -> None:
    quotas = (Quota(Window.MINUTE, rows=100),)
    assert [book.consume("carol", "digits", quotas, 10, NOW).allowed for _ in range(9)] == [
        True
    ] * 9
    assert counted(migrated_engine, "carol", "minute")[1] <= 100
    assert not book.consume("carol", "digits", quotas, 11, NOW).allowed
    assert book.consume("carol", "digits", quotas, 10, NOW).allowed
    assert not book.consume("carol", "digits", quotas, 1, NOW).allowed
    assert not book.consume("carol", "digits", quotas, 101, NOW).allowed  # never fits
    book.close()
    assert counted(migrated_engine, "carol", "minute")[1] == 100


def test_a_request_refused_by_one_window_takes_nothing_from_another(
    migrated_engine: Engine, book: QuotaLeases
) -> None:
    quotas = (Quota(Window.MINUTE, requests=2), Quota(Window.DAY, requests=100))
    assert [book.consume("dave", "digits", quotas, 1, NOW).allowed for _ in range(4)] == [
        True,
        True,
        False,
        False,
    ]
    book.close()
    with session_scope(session_factory(migrated_engine)) as session:
        assert usage(session, "dave", "digits", Quota(Window.DAY, 100), NOW) == 2
        assert usage(session, "dave", "digits", Quota(Window.MINUTE, 2), NOW) == 2


def test_processes_never_exceed_the_quota_and_give_back_what_they_did_not_use(
    migrated_engine: Engine, cli_env: dict[str, str]
) -> None:
    quota, per_process, processes = 60, 40, 3
    got = race("leases", "erin", quota, per_process, NOW.isoformat(), processes, cli_env)
    outputs = [out.split() for out in got]
    allowed = [int(out[0]) for out in outputs]
    assert sum(allowed) <= quota
    assert all(n <= per_process for n in allowed), allowed
    assert counted(migrated_engine, "erin")[0] == sum(allowed)  # every unused unit came back
