"""Load and soak. A real `secure-maas serve --workers 2 --threads 4`
(gunicorn) on PostgreSQL takes mixed traffic from 32 concurrent keep-alive connections for
`soak_seconds(15)` (`make system`: 60 s) after a warm-up of the same load.

Proven, for every request of the warm-up and of the measured period:
- no 5xx and no failed connection (status 0): the service never breaks under load;
- each class of request gets exactly the status the README's pipeline promises, and nothing
  else: valid -> 200; invisible model -> 404; listable but not allowed (a listed model, the
  canary label, the audit log) -> 403; bad shape or not JSON -> 400; wrong content type -> 415;
  no, malformed or refused token, disabled principal -> 401; a principal with a quota of
  QUOTA requests a day -> exactly QUOTA answers 200 in all (per UTC day the run touched),
  every other one 429, so the shared quota counter is exact across two workers and 32 threads;
- the audit log holds exactly one event (model loads aside) per answered request, under the
  answer's X-Request-Id, with the answered status, no event that no answer accounts for, and
  its hash chain verifies end to end;
- the workers' resident memory grows by less than 10 % from the start to the end of the
  measured period (after the warm-up has loaded models and filled caches and pools), and the
  workers are the same processes at the end (none crashed or was recycled under load).

Figures (requests/s, counts per class, RSS growth) go to the run's report.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from secure_maas.actions import Action
from secure_maas.audit.models import events_table
from secure_maas.audit.query import read_snapshot
from secure_maas.auth import tokens
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import Quota, Rule, directory, grants
from secure_maas.policy.rules import Effect, Window
from secure_maas.timeutil import utcnow
from tests.functional.serving_support import Instance, Served, by_request, server
from tests.system.conftest import Report
from tests.system.support import (
    GUNICORN,
    ROW,
    Answer,
    Kind,
    Load,
    audit_intact,
    children,
    rss_kib,
    soak_seconds,
    wait_until,
)

CONCURRENCY = 32
QUOTA = 5  # requests a day for the dedicated over-quota principal
QUOTA_PRINCIPAL = "soak-quota"
MAX_RSS_GROWTH = 0.10
CLASSES = ("valid", "forbidden", "invalid", "over_quota", "unauthenticated")


def grant_quota_principal(instance: Instance, name: str, requests: int) -> str:
    """A principal allowed to predict `multi`, `requests` requests a day; its token."""
    keyring = Keyring.open(instance.settings.keys_dir)
    factory = session_factory(instance.engine)
    with session_scope(factory) as session:
        directory.add_principal(session, name, actor="tests")
        quotas = (Quota(Window.DAY, requests=requests),)
        rule = Rule(Effect.ALLOW, f"user:{name}", (Action.MODEL_PREDICT,), "multi", quotas=quotas)
        grants.grant(session, rule, actor="tests")
        issued = tokens.issue(
            session, keyring, instance.settings, subject=name, ttl=timedelta(hours=1), actor="t"
        )
    return issued.token


def kinds(instance: Instance, quota_token: str) -> list[Kind]:
    """Every class of request, each with the one status (set) it must be answered; a kind's
    name is `class:label`."""

    def kind(
        label: str, path: str, expect: set[int], *, who: str | None = "alice",
        body: bytes | None = None, content_type: str = "application/json",
        token: str | None = None,
    ) -> Kind:  # fmt: skip
        headers: tuple[tuple[str, str], ...] = ()
        token = token if token is not None else (instance.tokens[who] if who else None)
        if token is not None:
            headers += (("Authorization", f"Bearer {token}"),)
        if body is not None:
            headers += (("Content-Type", content_type),)
        method = "GET" if body is None else "POST"
        return Kind(label, method, path, frozenset(expect), body, headers)

    def rows(count: int) -> bytes:
        return json.dumps({"instances": [ROW] * count}).encode()

    columns = json.dumps({"inputs": {"a": [[0.1, 0.2, 0.3]], "b": [[0.4, 0.5]]}}).encode()
    digits, label = "/v1/models/digits:predict", "/v1/models/digits/labels"
    multi = "/v1/models/multi:predict"
    classes: dict[str, list[Kind]] = {
        "valid": [
            kind("alice-digits-1-row", digits, {200}, body=rows(1)),
            kind("alice-digits-8-rows", digits, {200}, body=rows(8)),
            kind("alice-multi-columns", multi, {200}, body=columns),
            kind("alice-metadata", "/v1/models/digits/metadata", {200}),
            kind("alice-oip-ready", "/v2/models/digits/ready", {200}),
        ],
        "forbidden": [
            kind("eve-invisible", digits, {404}, who="eve", body=rows(1)),
            kind("alice-secret", "/v1/models/secret:predict", {404}, body=rows(1)),
            kind("alice-listed", "/v1/models/listed:predict", {403}, body=rows(1)),
            kind("alice-canary", f"{label}/canary:predict", {403}, body=rows(1)),
            kind("alice-audit", "/admin/audit", {403}),
        ],
        "invalid": [
            kind("wrong-shape", digits, {400}, body=b'{"instances": [[1.0, 2.0]]}'),
            kind("not-json", digits, {400}, body=b"{not json"),
            kind("wrong-content-type", digits, {415}, body=rows(1), content_type="text/csv"),
        ],
        "over_quota": [
            kind("quota-multi", multi, {200, 429}, body=columns, token=quota_token),
        ],
        "unauthenticated": [
            kind("no-token", digits, {401}, who=None, body=rows(1)),
            kind("garbage-token", digits, {401}, body=rows(1), token="not.a.token"),
            kind("expired-token", digits, {401}, who="expired", body=rows(1)),
            kind("disabled-carol", digits, {401}, who="carol", body=rows(1)),
        ],
    }
    return [
        Kind(f"{klass}:{k.name}", k.method, k.path, k.expect, k.body, k.headers)
        for klass, members in classes.items()
        for k in members
    ]


class RssSampler:
    """Samples each worker's RSS every `step` seconds in a thread: the peak per pid."""

    def __init__(self, pids: list[int], step: float = 1.0) -> None:
        self.pids, self.step = pids, step
        self.peak: dict[int, int] = {pid: rss_kib(pid) for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.step):
            for pid in self.pids:
                with contextlib.suppress(OSError, AssertionError):  # gone: checked after
                    self.peak[pid] = max(self.peak[pid], rss_kib(pid))


def run_load(url: str, load_kinds: list[Kind], seconds: float) -> list[Answer]:
    with Load([url], load_kinds, concurrency=CONCURRENCY, seconds=seconds) as load:
        time.sleep(seconds)
    return load.snapshot()


def chunks(items: list[str], size: int) -> Iterator[set[str]]:
    for start in range(0, len(items), size):
        yield set(items[start : start + size])


def request_events(instance: Instance) -> int:
    """Events of requests (any event with a request id), model loads aside."""
    query = (
        sa.select(sa.func.count())
        .select_from(events_table)
        .where(events_table.c.request_id.is_not(None))
        .where(events_table.c.action != "model:load")
    )
    with read_snapshot(instance.engine) as connection:
        return int(connection.execute(query).scalar_one())


@pytest.fixture(scope="module")
def quota_token(pg_instance: Instance) -> str:
    return grant_quota_principal(pg_instance, QUOTA_PRINCIPAL, QUOTA)


@pytest.fixture(scope="module")
def served(pg_instance: Instance, quota_token: str) -> Iterator[Served]:
    args = (*GUNICORN, "--preload", "digits", "--preload", "multi")
    with server(pg_instance, *args) as running:
        yield running


def test_mixed_load_soak(
    pg_instance: Instance, served: Served, quota_token: str, report: Report
) -> None:
    duration = soak_seconds(15)
    warmup = max(3.0, min(10.0, duration / 3))
    load_kinds = kinds(pg_instance, quota_token)
    expect = {kind.name: kind.expect for kind in load_kinds}
    days = {utcnow().date()}

    # /readyz can be answered by the first worker before the master forked the second.
    wait_until(lambda: len(children(served.process.pid)) == 2, 60, step=0.1)
    workers = children(served.process.pid)
    assert len(workers) == 2, f"expected 2 gunicorn workers, found {workers}"
    warm = run_load(served.url, load_kinds, warmup)

    before = {pid: rss_kib(pid) for pid in workers}
    started = time.monotonic()
    with RssSampler(workers) as sampler:
        measured = run_load(served.url, load_kinds, duration)
    elapsed = time.monotonic() - started
    after = {pid: rss_kib(pid) for pid in workers}
    days.add(utcnow().date())
    still = children(served.process.pid)

    answers = warm + measured
    by_kind: Counter[tuple[str, int]] = Counter((a.kind, a.status) for a in answers)
    by_class: Counter[str] = Counter(a.kind.split(":", 1)[0] for a in answers)
    rps = len(measured) / elapsed
    growth = {pid: (after[pid] - before[pid]) / before[pid] for pid in workers}
    peak = {pid: (sampler.peak[pid] - before[pid]) / before[pid] for pid in workers}
    report.figure("soak_seconds", duration)
    report.figure("soak_rps", rps)
    report.figure("soak_requests", len(answers))
    for klass in CLASSES:
        report.figure(f"soak_{klass}", by_class[klass])
    report.figure("soak_rss_growth_max_pct", 100 * max(growth.values()))
    report.figure("soak_rss_peak_growth_max_pct", 100 * max(peak.values()))
    report.note(
        "soak",
        f"{len(measured)} requests in {elapsed:.1f} s at concurrency {CONCURRENCY} "
        f"({rps:.0f}/s) after a {warmup:.0f} s warm-up of {len(warm)}; statuses "
        f"{dict(sorted(Counter(a.status for a in answers).items()))}; worker RSS "
        + ", ".join(f"{before[p] // 1024}->{after[p] // 1024} MiB" for p in workers),
    )

    # Same workers throughout: none crashed, timed out or was recycled under load.
    if still != workers:
        report.note("soak", f"FINDING: workers changed under load: {workers} -> {still}")
    assert still == workers, f"workers changed under load: {workers} -> {still}"

    # No 5xx, no failed connection, every answer in its kind's expected set.
    broken = {key: n for key, n in by_kind.items() if not 0 < key[1] < 500}
    assert not broken, broken
    unexpected = {key: n for key, n in by_kind.items() if key[1] not in expect[key[0]]}
    assert not unexpected, unexpected
    assert all(by_kind[(kind.name, min(kind.expect))] > 0 for kind in load_kinds), by_kind
    granted = by_kind[("over_quota:quota-multi", 200)]
    assert granted == QUOTA * len(days), (granted, by_kind[("over_quota:quota-multi", 429)])

    # Memory: every worker grew by less than 10 % over the measured period.
    assert max(growth.values()) < MAX_RSS_GROWTH, {p: f"{g:.1%}" for p, g in growth.items()}

    # Audit: one event per answered request, with its status; nothing else.
    ids = [a.request_id for a in answers]
    assert all(ids) and len(set(ids)) == len(ids), "every answer has its own X-Request-Id"
    status_of = {a.request_id: a.status for a in answers}
    found: dict[str, list[tuple[int | None, str]]] = defaultdict(list)
    for batch in chunks(ids, 5000):
        for rid, records in by_request(pg_instance.engine, batch).items():
            found[rid] += [(record.http_status, record.decision) for record in records]
    wrong = {rid: found[rid] for rid in ids if [s for s, _ in found[rid]] != [status_of[rid]]}
    assert not wrong, dict(list(wrong.items())[:10])
    assert request_events(pg_instance) == len(answers)
    checked = audit_intact(pg_instance)
    report.figure("soak_audit_events_verified", checked)
