"""The audit page's statistics, the same on SQLite and PostgreSQL: denials by actor and by model,
the top reasons of refused requests, and latency percentiles per model per time bucket, all
narrowed by the table's `AuditFilter`, bounded by `top` and by a row cap."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from secure_maas.audit import AuditFilter
from secure_maas.audit.chain import append_events, write_transaction
from secure_maas.audit.query import read_snapshot
from secure_maas.audit.stats import denials, latency_percentiles, nearest_rank, top_reasons
from tests.functional.audit_support import KEYS, START, event

HOUR = timedelta(hours=1)


def write(engine: Engine, specs: list[dict[str, Any]]) -> None:
    events = [event(i, **spec) for i, spec in enumerate(specs)]
    write_transaction(
        engine, lambda c: append_events(c, events, KEYS, now=START + timedelta(days=60))
    )


def refused(actor: str, model: str | None, reason: str, decision: str = "deny") -> dict[str, Any]:
    return {
        "actor": actor,
        "model": model,
        "model_version": None,
        "decision": decision,
        "http_status": 403 if decision == "deny" else 413,
        "reason_code": reason,
        "latency_ms": None,
        "at": START + timedelta(minutes=30),
    }


def allowed(
    model: str, latency_ms: float | None, at: timedelta, actor: str = "alice"
) -> dict[str, Any]:
    return {
        "actor": actor,
        "model": model,
        "decision": "allow",
        "http_status": 200,
        "reason_code": "rule:1",
        "latency_ms": latency_ms,
        "at": START + at,
    }


REFUSED = [
    *[refused("mallory", "iris", "no-rule") for _ in range(3)],
    refused("mallory", "digits", "explicit-deny"),
    *[refused("eve", "digits", "no-rule") for _ in range(2)],
    refused("eve", None, "bad-token"),
    *[refused("bob", "iris", "too_large", decision="error") for _ in range(2)],
]


@pytest.fixture
def log(migrated_engine: Engine) -> Engine:
    latencies = [
        # iris: 1..100 ms in the first hour, 7 ms in the second.
        *[allowed("iris", float(ms), timedelta(seconds=ms)) for ms in range(1, 101)],
        allowed("iris", 7.0, HOUR + timedelta(minutes=5), actor="bob"),
        # digits: three in the first hour.
        *[allowed("digits", ms, timedelta(minutes=10), actor="bob") for ms in (30.0, 10.0, 20.0)],
        # No latency, or no model: not in the latency chart.
        allowed("digits", None, timedelta(minutes=11)),
        {**allowed("iris", 5000.0, timedelta(minutes=12)), "model": None, "action": "model:list"},
    ]
    write(migrated_engine, [*REFUSED, *latencies])
    return migrated_engine


def test_denials_by_actor_and_by_model(log: Engine) -> None:
    with read_snapshot(log) as connection:
        everything = AuditFilter()
        assert denials(connection, everything, by="actor") == [("mallory", 4), ("eve", 3)]
        # Ties by name, the event without a model last on both databases.
        assert denials(connection, everything, by="model") == [
            ("digits", 3),
            ("iris", 3),
            (None, 1),
        ]
        assert denials(connection, everything, by="model", top=1) == [("digits", 3)]
        # The table's filter narrows the chart.
        assert denials(connection, AuditFilter(model="iris"), by="actor") == [("mallory", 3)]
        assert denials(connection, AuditFilter(actor="alice"), by="actor") == []
        assert denials(connection, AuditFilter(decision="allow"), by="model") == []
        late = AuditFilter(since=START + HOUR)
        assert denials(connection, late, by="actor") == []


def test_top_reasons_of_refused_requests(log: Engine) -> None:
    with read_snapshot(log) as connection:
        assert top_reasons(connection, AuditFilter()) == [
            ("no-rule", 5),
            ("too_large", 2),
            ("bad-token", 1),
            ("explicit-deny", 1),
        ]
        assert top_reasons(connection, AuditFilter(), top=2) == [("no-rule", 5), ("too_large", 2)]
        assert top_reasons(connection, AuditFilter(decision="error")) == [("too_large", 2)]
        assert top_reasons(connection, AuditFilter(actor="eve")) == [
            ("no-rule", 2),
            ("bad-token", 1),
        ]
        # Allowed requests have reasons too (the rule that let them through): never counted.
        assert top_reasons(connection, AuditFilter(decision="allow")) == []


def test_latency_percentiles_per_model_per_bucket(log: Engine) -> None:
    with read_snapshot(log) as connection:
        result = latency_percentiles(connection, AuditFilter(), bucket=HOUR)
    assert result.truncated is False and result.rows == 104
    assert list(result.models) == ["iris", "digits"]
    iris, digits = result.models["iris"], result.models["digits"]
    assert [(b.start, b.count) for b in iris] == [(START, 100), (START + HOUR, 1)]
    assert iris[0].percentiles == {50: 50.0, 95: 95.0, 99: 99.0}
    assert iris[1].percentiles == {50: 7.0, 95: 7.0, 99: 7.0}
    assert [(b.start, b.count, b.percentiles) for b in digits] == [
        (START, 3, {50: 20.0, 95: 30.0, 99: 30.0})
    ]
    shown = result.to_json()
    assert shown["bucket_seconds"] == 3600 and shown["truncated"] is False
    assert shown["models"]["digits"][0]["p95_ms"] == 30.0


def test_latency_percentiles_follow_the_filter_and_the_bounds(log: Engine) -> None:
    with read_snapshot(log) as connection:
        bobs = latency_percentiles(connection, AuditFilter(actor="bob"), bucket=HOUR)
        assert {m: [b.count for b in bs] for m, bs in bobs.models.items()} == {
            "digits": [3],
            "iris": [1],
        }
        busiest = latency_percentiles(connection, AuditFilter(), models=1)
        assert list(busiest.models) == ["iris"]
        # The row cap reads the newest latencies only, and says so.
        capped = latency_percentiles(connection, AuditFilter(), bucket=HOUR, max_rows=10)
        assert capped.truncated is True and capped.rows == 10
        assert sum(b.count for bs in capped.models.values() for b in bs) == 10
        exact = latency_percentiles(connection, AuditFilter(), bucket=HOUR, max_rows=104)
        assert exact.truncated is False and exact.rows == 104
        day = latency_percentiles(connection, AuditFilter(model="iris"), bucket=timedelta(days=1))
        assert [(b.count, b.percentiles[99]) for b in day.models["iris"]] == [(101, 99.0)]
        nothing = latency_percentiles(connection, AuditFilter(actor="nobody"))
        assert nothing.models == {} and nothing.rows == 0


def test_bad_arguments_are_refused(migrated_engine: Engine) -> None:
    with read_snapshot(migrated_engine) as connection:
        with pytest.raises(ValueError, match="actor or model"):
            denials(connection, AuditFilter(), by="action")
        with pytest.raises(ValueError, match="top"):
            denials(connection, AuditFilter(), by="actor", top=0)
        with pytest.raises(ValueError, match="top"):
            top_reasons(connection, AuditFilter(), top=0)
        with pytest.raises(ValueError, match="bucket"):
            latency_percentiles(connection, AuditFilter(), bucket=timedelta(0))
        with pytest.raises(ValueError, match="percentile"):
            latency_percentiles(connection, AuditFilter(), percentiles=(0,))
        with pytest.raises(ValueError, match="percentile"):
            latency_percentiles(connection, AuditFilter(), percentiles=(101,))
        with pytest.raises(ValueError, match="max_rows"):
            latency_percentiles(connection, AuditFilter(), max_rows=0)
        assert denials(connection, AuditFilter(), by="actor") == []
        assert top_reasons(connection, AuditFilter()) == []


def test_nearest_rank_is_an_observed_value() -> None:
    assert nearest_rank([5], 50) == 5 and nearest_rank([5], 99) == 5
    assert nearest_rank([1, 2, 3, 4], 50) == 2
    assert nearest_rank([1, 2, 3, 4], 51) == 3
    assert nearest_rank(list(range(1, 1001)), 99) == 990
    assert nearest_rank([1, 2], 100) == 2
