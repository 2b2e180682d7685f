"""Quotas are shared through the database: several processes together get exactly the quota;
a refused request consumes nothing and says when to retry. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from secure_maas.db.session import session_factory, session_scope
from secure_maas.policy import Quota, Window, consume
from secure_maas.policy.quota import usage
from tests.functional.access_child import race

NOW = datetime(2027, 5, 1, 12, 0, 30, tzinfo=UTC)


def test_processes_share_one_quota_exactly(
    migrated_engine: Engine, cli_env: dict[str, str]
) -> None:
    quota, per_process, processes = 60, 40, 3  # no single process can take it all
    outputs = race("quota", "alice", quota, per_process, NOW.isoformat(), processes, cli_env)
    allowed = [int(out) for out in outputs]
    assert sum(allowed) == quota
    assert all(n <= per_process for n in allowed), allowed
    with session_scope(session_factory(migrated_engine)) as session:
        assert usage(session, "alice", "digits", Quota(Window.DAY, quota), NOW) == quota


def test_over_quota_is_refused_with_retry_after_and_counts_nothing(migrated_engine: Engine) -> None:
    quotas = (Quota(Window.MINUTE, requests=2), Quota(Window.DAY, requests=100))
    for _ in range(2):
        assert consume(migrated_engine, "bob", "digits", quotas, 1, NOW).allowed
    refused = consume(migrated_engine, "bob", "digits", quotas, 1, NOW)
    assert not refused.allowed
    assert refused.retry_after == 30  # the minute started at 12:00:00
    assert "2 requests/minute" in refused.reason
    with session_scope(session_factory(migrated_engine)) as session:
        # the day window was rolled back with the minute's refusal
        assert usage(session, "bob", "digits", quotas[1], NOW) == 2
    later = NOW + timedelta(seconds=30)
    assert consume(migrated_engine, "bob", "digits", quotas, 1, later).allowed
    assert consume(migrated_engine, "bob", "wine", quotas, 1, NOW).allowed  # per model
    assert consume(migrated_engine, "carol", "digits", quotas, 1, NOW).allowed  # per subject


def test_row_quotas_count_rows(migrated_engine: Engine) -> None:
    quotas = (Quota(Window.HOUR, rows=100),)
    assert consume(migrated_engine, "alice", "digits", quotas, 60, NOW).allowed
    refused = consume(migrated_engine, "alice", "digits", quotas, 41, NOW)
    assert not refused.allowed and refused.retry_after == 3570
    assert consume(migrated_engine, "alice", "digits", quotas, 40, NOW).allowed
    too_big = consume(migrated_engine, "alice", "other", quotas, 101, NOW)
    assert not too_big.allowed


def test_no_quota_means_no_counting(migrated_engine: Engine) -> None:
    assert consume(migrated_engine, "alice", "digits", (), 10**6, NOW).allowed
