"""Two instances, one database.

Two `secure-maas serve` instances (gunicorn, 2 workers each, on different ports) share one
PostgreSQL schema and one sealed store, as two machines behind a load balancer would. What an
administrator changes with the real CLI reaches every worker of both within a second
(invariant 7): a revoked token (by jti and by subject), a disabled principal, a revoked rule,
and a newly imported model version, which both then serve. A quota is one counter for both:
hammered concurrently through both instances, exactly the quota is allowed and the rest is 429,
never more. Every answer either instance gave is in the one audit chain exactly once, and the
chain verifies.

Propagation is measured from the change's commit (the CLI records the change and its audit
event in one transaction; the event's time, stamped just before the commit, is the start) to
the arrival of the first answer of each instance's final run of changed answers. Probes run
while the command runs, one thread per instance on fresh connections, so that every worker of
an instance answers some. A new version is resolved (metadata names it) and served (each
worker decrypts and loads it on its first request for it) within that second, both reported.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import pytest
import sqlalchemy as sa

from secure_maas.auth import tokens
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import directory
from secure_maas.policy.models import QuotaCounter
from tests.functional.cli import run_cli
from tests.functional.serving_support import (
    Instance,
    Served,
    by_request,
    events,
    models,
    server,
)
from tests.system.conftest import Report
from tests.system.support import GUNICORN, ROW, Kind, audit_intact, wait_until

LIMIT_S = 1.0  # invariant 7; a new version is also *served* by every worker within it
STREAK = 8  # changed answers in a row from one instance before it counts as changed
PROPAGATION_BOUND_S = 1.0  # every worker of every instance applies a change within this
QUIET_S = 1.5  # how long every answer must be as before the change, before it is made
A = [[0.5, -0.25, 0.75]]
B = [[0.2, -0.4]]


@dataclass(frozen=True)
class Reply:
    """One answer: which instance, when it was sent and arrived, its status, id and body."""

    url: str
    kind: str
    sent: float
    arrived: float
    status: int
    request_id: str
    body: bytes
    wall: float  # time.time() the answer arrived


#: Every answer of this module, checked against the audit log by the last test.
REPLIES: list[Reply] = []
_LOCK = threading.Lock()


def call(url: str, kind: Kind) -> Reply:
    """`kind` sent to `url` on a fresh connection (so any worker of the instance may take it)."""
    host, port = url.removeprefix("http://").split(":")
    sent = time.monotonic()
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(kind.method, kind.path, body=kind.body, headers=dict(kind.headers))
        response = connection.getresponse()
        body = response.read()
        reply = Reply(
            url,
            kind.name,
            sent,
            time.monotonic(),
            response.status,
            response.headers.get("X-Request-Id", ""),
            body,
            time.time(),
        )
    except (OSError, http.client.HTTPException):
        reply = Reply(url, kind.name, sent, time.monotonic(), 0, "", b"", time.time())
    finally:
        connection.close()
    with _LOCK:
        REPLIES.append(reply)
    return reply


def metadata(token: str, model: str = "digits") -> Kind:
    headers = (("Authorization", f"Bearer {token}"),)
    return Kind(
        f"metadata:{model}", "GET", f"/v1/models/{model}/metadata", frozenset({200}), None, headers
    )


def predict_multi(token: str) -> Kind:
    body = json.dumps({"instances": [{"a": A[0], "b": B[0]}]}).encode()
    headers = (("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"))
    return Kind(
        "predict:multi", "POST", "/v1/models/multi:predict", frozenset({200}), body, headers
    )


def predict_digits(token: str) -> Kind:
    body = json.dumps({"instances": [ROW]}).encode()
    headers = (("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"))
    return Kind(
        "predict:digits", "POST", "/v1/models/digits:predict", frozenset({200}), body, headers
    )


def cli(instance: Instance, *args: str) -> str:
    """Run `secure-maas ARGS` as an administrator on this instance; its stdout."""
    done = run_cli(*args, env=instance.env())
    assert done.returncode == 0, f"secure-maas {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def issue(instance: Instance, subject: str) -> tuple[str, str]:
    """A fresh token for `subject` from the CLI, and its jti."""
    token = cli(instance, "token", "issue", "--subject", subject, "--ttl", "1h")
    claims = jwt.decode(token, options={"verify_signature": False})
    return token, str(claims["jti"])


def enrol(instance: Instance, name: str, roles: Sequence[str] = (), count: int = 1) -> list[str]:
    """Add the principal `name` and issue it `count` tokens: set-up done with the library, as
    `prepare` does, to spare the CLI's start-up time where nothing is measured."""
    keyring = Keyring.open(instance.settings.keys_dir)
    with session_scope(session_factory(instance.engine)) as session:
        directory.add_principal(session, name, actor="tests", roles=list(roles))
        return [
            tokens.issue(
                session, keyring, instance.settings, subject=name, ttl=timedelta(hours=1),
                actor="tests",
            ).token
            for _ in range(count)
        ]  # fmt: skip


@dataclass(frozen=True)
class Spread:
    """How long a change took to reach every instance: from the commit of the CLI's change
    (its audit event's time, a little before the commit), and from the command's return."""

    from_commit: float
    from_return: float


@dataclass(frozen=True)
class Probe:
    """A request and how to tell its answers before a change from those after it."""

    kind: Kind
    before: Callable[[Reply], bool]
    after: Callable[[Reply], bool]


def propagation(
    instance: Instance,
    urls: Sequence[str],
    probes: Sequence[Probe],
    change: Callable[[], object],
    action: str,
    *,
    limit: float = 10.0,
) -> list[Spread]:
    """Send each probe to every instance while `change()` runs and until each instance answers
    every probe as its `after` says; every answer must be `before` or `after`. The spread of
    each probe.

    Each (probe, instance) has its own thread, on fresh connections. An instance has changed at
    the arrival of the first answer of its final run of `STREAK` or more `after` answers; the
    change was made when the CLI's audit event of `action` (the newest) was stamped, in the
    change's own transaction."""
    lines = [(n, probe, url) for n, probe in enumerate(probes) for url in urls]
    replies: list[list[Reply]] = [[] for _ in lines]
    stop = threading.Event()

    def poll(n: int) -> None:
        kind, url = lines[n][1].kind, lines[n][2]
        deadline = time.monotonic() + limit + 120
        while not stop.is_set() and time.monotonic() < deadline:
            replies[n].append(call(url, kind))
            stop.wait(0.02)

    def ready(n: int) -> bool:
        # Every answer of the last QUIET_S is `before`: every worker (fresh connections reach
        # either) has taken the set-up, which new principals and tokens need, too, up to 1 s.
        got = replies[n]
        horizon = time.monotonic() - QUIET_S
        if not got or got[0].arrived > horizon:
            return False
        recent = [r for r in got if r.arrived >= horizon]
        return len(recent) >= 4 and all(lines[n][1].before(r) for r in recent)

    def settled() -> bool:
        for (_, probe, _), got in zip(lines, replies, strict=True):
            tail = got[-STREAK:]
            if len(tail) < STREAK or not all(probe.after(r) for r in tail):
                return False
        return True

    threads = [threading.Thread(target=poll, args=(n,), daemon=True) for n in range(len(lines))]
    for thread in threads:
        thread.start()
    try:
        # what was set up just before (a principal, a token) reaches every worker first
        wait_until(lambda: all(ready(n) for n in range(len(lines))), 30)
        starts = [len(got) - 4 for got in replies]  # from here on: before, then after
        change()
        returned = time.time()
        committed = events(instance.engine, action=action)[-1].at.timestamp()
        wait_until(settled, limit)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    changed: dict[int, float] = {}
    for (n, probe, url), start, every in zip(lines, starts, replies, strict=True):
        got = every[start:]
        odd = [r for r in got if not (probe.before(r) or probe.after(r))]
        if odd:  # the audit log says why each was answered so
            recorded = by_request(instance.engine, {r.request_id for r in odd[:3]})
            why = [(r.status, r.body[:200], [e.reason for e in recorded[r.request_id]])
                   for r in odd[:3]]  # fmt: skip
            raise AssertionError(f"{url}: answers neither before nor after the change: {why}")
        last_before = max((i for i, r in enumerate(got) if not probe.after(r)), default=-1)
        changed[n] = max(changed.get(n, 0.0), got[last_before + 1].wall)
    return [
        Spread(changed[n] - committed, max(0.0, changed[n] - returned)) for n in range(len(probes))
    ]


def propagated(
    instance: Instance,
    urls: Sequence[str],
    kind: Kind,
    before: Callable[[Reply], bool],
    after: Callable[[Reply], bool],
    change: Callable[[], object],
    action: str,
) -> Spread:
    """`propagation` of one probe."""
    return propagation(instance, urls, [Probe(kind, before, after)], change, action)[0]


def status_is(status: int) -> Callable[[Reply], bool]:
    return lambda reply: reply.status == status


def outputs_close(want: dict[str, np.ndarray]) -> Callable[[Reply], bool]:
    """Whether a reply is a 200 whose predictions are `want`'s (to 1e-5)."""

    def check(reply: Reply) -> bool:
        if reply.status != 200:
            return False
        row = json.loads(reply.body)["predictions"][0]
        return all(
            np.allclose(np.asarray(row[name], dtype=np.float64), want[name][0], atol=1e-5)
            for name in want
        )

    return check


def clear_of_day_end(margin: float = 30.0) -> None:
    """Quotas are counted in UTC-aligned windows: keep a burst out of a day's last seconds."""
    now = datetime.now(UTC).timestamp()
    left = 86400 - now % 86400
    if left < margin:
        time.sleep(left + 1)


@pytest.fixture(scope="module")
def pair(pg_instance: Instance) -> Iterator[tuple[Served, Served]]:
    """Two gunicorn instances on the one database and store, warmed up."""
    args = (*GUNICORN, "--preload", "digits", "--preload", "multi")
    with ExitStack() as stack, ThreadPoolExecutor(2) as pool:  # both start at once
        starting = [pool.submit(stack.enter_context, server(pg_instance, *args)) for _ in "12"]
        one, two = (future.result() for future in starting)
        alice = pg_instance.tokens["alice"]
        kinds = [predict_digits(alice), predict_multi(alice)] * 8
        for served in (one, two):
            with ThreadPoolExecutor(8) as pool:
                got = list(pool.map(lambda kind, url=served.url: call(url, kind).status, kinds))
            assert got == [200] * 16
        yield one, two


@pytest.fixture(scope="module")
def urls(pair: tuple[Served, Served]) -> list[str]:
    return [served.url for served in pair]


def check(report: Report, name: str, spread: Spread, what: str) -> None:
    """Record `spread` as figure `name` and hold it to invariant 7's second."""
    report.figure(name, spread.from_commit)
    report.note(
        "two instances",
        f"{what}: both instances changed {spread.from_commit:.3f} s after the commit "
        f"({spread.from_return:.3f} s after the command returned)",
    )
    assert spread.from_commit <= LIMIT_S, f"{what} reached both after {spread.from_commit:.3f} s"


def test_revoked_tokens_are_refused_by_both_instances_within_a_second(
    pg_instance: Instance, urls: list[str], report: Report
) -> None:
    token, jti = issue(pg_instance, "alice")
    spread = propagated(
        pg_instance,
        urls,
        metadata(token),
        status_is(200),
        status_is(401),
        lambda: cli(pg_instance, "token", "revoke", jti),
        "token:revoke",
    )
    check(report, "two_instances_token_revoke_s", spread, "token revoke JTI")

    first, second = enrol(pg_instance, "heidi", ["analyst"], count=2)
    spread = propagated(
        pg_instance,
        urls,
        metadata(first),
        status_is(200),
        status_is(401),
        lambda: cli(pg_instance, "token", "revoke", "--subject", "heidi"),
        "token:revoke",
    )
    check(report, "two_instances_subject_revoke_s", spread, "token revoke --subject")
    assert [call(url, metadata(second)).status for url in urls for _ in range(4)] == [401] * 8


def test_a_disabled_principal_is_refused_by_both_instances_within_a_second(
    pg_instance: Instance, urls: list[str], report: Report
) -> None:
    (token,) = enrol(pg_instance, "ivan", ["analyst"])
    kind = predict_digits(token)
    spread = propagated(
        pg_instance,
        urls,
        kind,
        status_is(200),
        status_is(401),
        lambda: cli(pg_instance, "principal", "disable", "ivan"),
        "principal:change",
    )
    check(report, "two_instances_disable_s", spread, "principal disable")
    spread = propagated(
        pg_instance,
        urls,
        kind,
        status_is(401),
        status_is(200),
        lambda: cli(pg_instance, "principal", "enable", "ivan"),
        "principal:change",
    )
    check(report, "two_instances_enable_s", spread, "principal enable")


def test_a_revoked_rule_is_refused_by_both_instances_within_a_second(
    pg_instance: Instance, urls: list[str], report: Report
) -> None:
    (token,) = enrol(pg_instance, "judy")
    kind = predict_multi(token)
    printed: list[str] = []
    grant = ("policy", "grant", "--subject", "user:judy", "--model", "multi")
    spread = propagated(
        pg_instance,
        urls,
        kind,
        status_is(404),  # invisible: no rule at all
        status_is(200),
        lambda: printed.append(cli(pg_instance, *grant, "--action", "model:predict")),
        "policy:grant",
    )
    check(report, "two_instances_grant_s", spread, "policy grant")
    found = re.match(r"rule (\d+):", printed[0])
    assert found, printed
    spread = propagated(
        pg_instance,
        urls,
        kind,
        status_is(200),
        status_is(404),
        lambda: cli(pg_instance, "policy", "revoke", found[1]),
        "policy:revoke",
    )
    check(report, "two_instances_rule_revoke_s", spread, "policy revoke")


def burst(urls: Sequence[str], kind: Kind, count: int, concurrency: int = 12) -> list[Reply]:
    """`count` requests of `kind`, alternating between the instances, `concurrency` at once."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: call(urls[i % len(urls)], kind), range(count)))


def counted(instance: Instance, subject: str) -> int:
    """The requests the database counted for `subject` (every window, every model)."""
    query = sa.select(sa.func.coalesce(sa.func.sum(QuotaCounter.request_count), 0)).where(
        QuotaCounter.subject == subject
    )
    with instance.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def test_a_quota_is_one_counter_for_both_instances(
    pg_instance: Instance, urls: list[str], report: Report
) -> None:
    clear_of_day_end()
    # dave: 2 requests a day on `multi` (the instance's own rule)
    got = Counter(r.status for r in burst(urls, predict_multi(pg_instance.tokens["dave"]), 16))
    assert got == {200: 2, 429: 14}, got
    assert counted(pg_instance, "dave") == 2

    # a fresh principal with 20 requests a day, granted by the CLI
    (token,) = enrol(pg_instance, "quinn")
    kind = predict_multi(token)
    grant = (
        "policy",
        "grant",
        "--subject",
        "user:quinn",
        "--model",
        "multi",
        "--action",
        "model:predict",
        "--action",
        "model:metadata",
        "--quota",
        "20/day",
    )
    propagated(
        pg_instance,
        urls,
        metadata(token, "multi"),
        status_is(404),
        status_is(200),
        lambda: cli(pg_instance, *grant),
        "policy:grant",
    )
    # Seen by every worker within the propagation bound (1 s): a worker that fresh connections
    # did not reach during the probe may still hold the rules it polled just before the grant.
    time.sleep(PROPAGATION_BOUND_S)
    replies = burst(urls, kind, 60)
    got = Counter(r.status for r in replies)
    assert got == {200: 20, 429: 40}, got
    assert counted(pg_instance, "quinn") == 20
    by_instance = Counter(r.url for r in replies if r.status == 200)
    report.figure("two_instances_quota_allowed", got[200])
    report.note(
        "two instances",
        f"quota 20/day over both: {got[200]} allowed ({dict(by_instance)}), {got[429]} refused; "
        f"dave 2/day: 2 allowed",
    )


def version_is(number: int) -> Callable[[Reply], bool]:
    """Whether a reply is metadata (200) of version `number`."""

    def check(reply: Reply) -> bool:
        if reply.status != 200:
            return False
        return bool(json.loads(reply.body)["model_spec"]["version"] == str(number))

    return check


def test_a_new_version_reaches_both_instances_within_a_second_and_is_served(
    pg_instance: Instance, urls: list[str], report: Report, tmp_path: Path
) -> None:
    import tensorflow as tf

    old = models().keras["multi"]
    new = tf.keras.models.clone_model(old)  # the same layers, names and signature
    new.set_weights([w + 0.5 for w in old.get_weights()])
    inputs = [np.asarray(A, dtype=np.float32), np.asarray(B, dtype=np.float32)]
    want: dict[str, dict[str, Any]] = {}
    for key, model in (("old", old), ("new", new)):
        outputs = model.predict(inputs, verbose=0)
        want[key] = dict(zip(model.output_names, outputs, strict=True))
    assert not np.allclose(want["old"]["score"], want["new"]["score"], atol=1e-3)
    path = tmp_path / "multi.keras"
    new.save(path)

    alice = pg_instance.tokens["alice"]
    resolved, served = propagation(
        pg_instance,
        urls,
        [
            Probe(metadata(alice, "multi"), version_is(1), version_is(2)),
            Probe(predict_multi(alice), outputs_close(want["old"]), outputs_close(want["new"])),
        ],
        lambda: cli(pg_instance, "models", "import", str(path), "--name", "multi"),
        "model:publish",
        limit=30.0,
    )
    report.figure("two_instances_new_version_served_s", served.from_commit)
    report.note(
        "two instances",
        f"models import: multi v2 served by every answer of both {served.from_commit:.3f} s "
        f"after the commit (each worker loads it on its first request for it)",
    )
    check(report, "two_instances_new_version_s", resolved, "models import (multi v2 resolved)")
    # Each worker decrypts and loads v2 on its first request for it (~0.2 s of CPU here).
    assert served.from_commit <= LIMIT_S, f"v2 served after {served.from_commit:.3f} s"


def test_every_answer_of_both_instances_is_audited_once_and_the_chain_verifies(
    pg_instance: Instance, urls: list[str], report: Report
) -> None:
    with _LOCK:
        replies = [r for r in REPLIES if r.url in urls]
    assert replies and all(r.status != 0 and r.request_id for r in replies)
    for url in urls:
        assert any(r.url == url for r in replies), f"no answers from {url}"
    ids = Counter(r.request_id for r in replies)
    assert max(ids.values()) == 1, "a request id was answered twice"
    found = by_request(pg_instance.engine, set(ids))
    wrong = {
        r.request_id: [e.http_status for e in found[r.request_id]]
        for r in replies
        if [e.http_status for e in found[r.request_id]] != [r.status]
    }
    assert not wrong, f"{len(wrong)} answers not audited exactly once: {list(wrong.items())[:5]}"
    checked = audit_intact(pg_instance)
    report.figure("two_instances_audited", len(replies))
    report.note("two instances", f"{len(replies)} answers audited once each; chain of {checked}")
