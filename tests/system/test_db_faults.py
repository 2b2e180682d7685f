"""The database goes away in the middle of load, and comes back.

A `secure-maas serve` instance (gunicorn, 2 workers) reaches PostgreSQL through a TCP proxy
that the test cuts (every connection dropped, new ones refused) and restores, so that only this
server loses its database while PostgreSQL keeps serving everyone else. Under a steady mixed
load (predictions, metadata, a revoked token, an invisible model, readiness probes) it shows:

- fail closed (invariant 2): every answer that arrives while the database is away is a 503,
  never a 200, a 500 or a dropped connection, and it arrives (nothing hangs);
- audit completeness (invariant 8): every answer other than a 503, before, during and after
  the outage, has exactly one audit event with its status (read straight from PostgreSQL, not
  through the proxy), and the chain verifies;
- self-healing: once the database is back the service answers normally again within seconds,
  with no restart: the same worker processes before and after, and `/healthz` answered 200
  all along (a liveness probe would not have restarted anything either).

Caches (verified tokens, compiled policy, the registry copy) may let a request get as far as its
audit write without the database; that write fails, so the answer is still 503.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.functional.serving_support import Instance, Served, by_request, server
from tests.system.conftest import Report
from tests.system.support import (
    GUNICORN,
    Answer,
    Kind,
    Load,
    TcpProxy,
    audit_intact,
    children,
    predict,
    send,
    via,
    wait_until,
)

OUTAGE_S = 3.0
#: Answers arriving this soon after the cut may have been committed just before it.
GRACE_S = 0.5
RECOVERY_LIMIT_S = 10.0
UNAVAILABLE = 503


def get(name: str, path: str, expect: int, token: str | None = None) -> Kind:
    headers = (("Authorization", f"Bearer {token}"),) if token is not None else ()
    return Kind(name, "GET", path, frozenset({expect}), None, headers)


def renamed(kind: Kind, name: str, expect: int) -> Kind:
    return Kind(name, kind.method, kind.path, frozenset({expect}), kind.body, kind.headers)


@pytest.fixture(scope="module")
def proxy() -> Iterator[TcpProxy]:
    cut = TcpProxy()
    try:
        yield cut
    finally:
        cut.close()


@pytest.fixture(scope="module")
def served(pg_instance: Instance, proxy: TcpProxy) -> Iterator[Served]:
    """A gunicorn instance whose database connections all go through `proxy`."""
    behind = via(pg_instance, "127.0.0.1", proxy.port)
    with server(behind, *GUNICORN, "--preload", "digits") as running:
        yield running
        proxy.restore()  # its workers write their last audit events on SIGTERM


def in_window(answers: list[Answer], start: float, end: float) -> list[Answer]:
    return [a for a in answers if start < a.at <= end]


def test_a_database_outage_fails_closed_and_heals_without_a_restart(
    pg_instance: Instance, proxy: TcpProxy, served: Served, report: Report
) -> None:
    alice = pg_instance.tokens["alice"]
    kinds = [
        predict(pg_instance, "alice"),
        get("alice:metadata", "/v1/models/digits/metadata", 200, alice),
        renamed(predict(pg_instance, "revoked"), "revoked:digits", 401),
        renamed(predict(pg_instance, "eve"), "eve:digits", 404),
        get("readyz", "/readyz", 200),
    ]
    expected = {kind.name: kind.expect for kind in kinds}
    healthz = get("healthz", "/healthz", 200)
    workers = children(served.process.pid)
    assert len(workers) == 2, workers

    with Load([served.url], kinds, concurrency=6, seconds=120) as load:

        def ok_after(moment: float) -> int:
            """Audited 200s (predictions, metadata) that arrived after `moment`."""
            return sum(
                1
                for a in load.snapshot()
                if a.at > moment and a.status == 200 and a.kind != "readyz"
            )

        wait_until(lambda: ok_after(load.started) >= 40, 60)
        cut = time.monotonic()
        proxy.cut()
        try:
            health = []
            while time.monotonic() - cut < OUTAGE_S:
                health.append(send(served.url, healthz).status)
                time.sleep(0.2)
        finally:
            restored = time.monotonic()
            proxy.restore()
        recovery = wait_until(lambda: ok_after(restored) > 0, RECOVERY_LIMIT_S, step=0.01)
        # then keep going until every kind has been answered again, several times over
        settled = time.monotonic()
        wait_until(
            lambda: (
                ok_after(restored) >= 40
                and all(
                    sum(1 for a in load.snapshot() if a.at > settled and a.kind == kind.name) >= 5
                    for kind in kinds
                )
            ),
            60,
        )
    answers = load.snapshot()

    # nothing was dropped, nothing crashed
    statuses = Counter((a.kind, a.status) for a in answers)
    assert not [a for a in answers if a.status in (0, 500)], statuses

    # before the cut, everything as usual
    before = in_window(answers, 0, cut)
    assert before and all(a.status in expected[a.kind] for a in before), Counter(
        (a.kind, a.status) for a in before
    )

    # while the database was away: answers kept coming, and every one was a 503
    during = in_window(answers, cut + GRACE_S, restored)
    assert len(during) >= 10, f"only {len(during)} answers during a {OUTAGE_S} s outage"
    assert all(a.status == UNAVAILABLE for a in during), Counter((a.kind, a.status) for a in during)
    assert health and set(health) == {200}, health

    # after: back to normal by itself, within seconds
    after = in_window(answers, restored, float("inf"))
    unavailable = [a.at for a in after if a.status not in expected[a.kind]]
    healed = (max(unavailable) - restored) if unavailable else 0.0
    assert all(a.status in expected[a.kind] or a.status == UNAVAILABLE for a in after)
    assert healed <= RECOVERY_LIMIT_S, f"503s until {healed:.2f} s after the database returned"
    assert send(served.url, get("readyz", "/readyz", 200)).status == 200

    # no worker was restarted, the server is still the same process
    assert served.process.poll() is None
    assert children(served.process.pid) == workers

    # every answer but a 503 is audited exactly once, with its status (read directly)
    audited = [a for a in answers if a.kind != "readyz"]
    assert all(a.request_id for a in audited)
    assert max(Counter(a.request_id for a in audited).values()) == 1
    found = by_request(pg_instance.engine, {a.request_id for a in audited})
    wrong = [
        (a.kind, a.status, [e.http_status for e in found[a.request_id]])
        for a in audited
        if (a.status != UNAVAILABLE and [e.http_status for e in found[a.request_id]] != [a.status])
        or len(found[a.request_id]) > 1
    ]
    assert not wrong, f"{len(wrong)} answers not audited exactly once: {wrong[:5]}"
    ok = [a for a in audited if a.status == 200]
    assert all(found[a.request_id][0].decision == "allow" for a in ok)
    checked = audit_intact(pg_instance)

    report.figure("db_recovery_s", recovery)
    report.figure("db_healed_s", healed)
    report.figure("db_outage_answers", len(during))
    report.note(
        "database faults",
        f"{OUTAGE_S:.0f} s outage under load: {len(during)} answers in it, all 503; first 200 "
        f"{recovery:.2f} s after the database returned, all normal after {healed:.2f} s; "
        f"workers {workers} unchanged; {len(ok)} 200s audited once each, chain of {checked}",
    )
