"""`token revoke --subject` revokes every token the service still accepts, those past their
`exp` but inside its clock leeway included. Over real HTTP through gunicorn (2 workers x 4
threads), on SQLite and PostgreSQL: a token past its `exp` but inside the leeway is served,
`token list --active` lists it, `token revoke --subject` revokes it, and every request sent a
second after the command returned is refused as revoked (invariant 7).

The one timing assumption is the leeway itself (30 s): the token expired 2 s before the first
request, so the CLI calls and the requests have about 28 s, which a busy machine meets with a
wide margin; the refusal's audit reason proves it was refused as revoked, not as expired.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta

import pytest

from secure_maas.auth import tokens
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.timeutil import utcnow
from tests.functional.cli import run_cli
from tests.functional.serving_support import (
    ROOT,
    Instance,
    Served,
    by_request,
    prepared,
    server,
)
from tests.system.support import GUNICORN

PROPAGATION_S = 1.0  # invariant 7: a revocation is refused everywhere within a second
PROBES = 8  # requests on fresh connections, so both workers are asked


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "leeway")


@pytest.fixture(scope="module")
def served(instance: Instance) -> Iterator[Served]:
    with server(instance, *GUNICORN) as running:
        yield running


def audit_read(url: str, token: str, request_id: str) -> int:
    """The status of `GET /admin/audit?limit=1` with `token` (bob is an auditor)."""
    request = urllib.request.Request(
        url + "/admin/audit?limit=1",
        headers={"Authorization": f"Bearer {token}", "X-Request-Id": request_id},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


def cli(instance: Instance, *args: str) -> str:
    done = run_cli(*args, env=instance.env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def just_expired(instance: Instance, subject: str) -> tokens.Issued:
    """A 5 s token of `subject` that expired a second ago: past `exp`, inside the leeway."""
    keyring = Keyring.open(instance.settings.keys_dir)
    with session_scope(session_factory(instance.engine)) as session:
        issued = tokens.issue(
            session, keyring, instance.settings, subject=subject, ttl=timedelta(seconds=5),
            actor="tests", now=utcnow() - timedelta(seconds=6),
        )  # fmt: skip
    assert issued.expires_at < utcnow() < issued.expires_at + tokens.MAX_LEEWAY
    return issued


def inside_leeway(issued: tokens.Issued) -> None:
    """Fail loudly (rather than pass for the wrong reason) if the window was missed."""
    late = utcnow() - (issued.expires_at + tokens.MAX_LEEWAY)
    assert late.total_seconds() < 0, f"too slow: the leeway ended {late} before the check"


def test_revoke_subject_covers_tokens_inside_the_leeway(instance: Instance, served: Served) -> None:
    issued = just_expired(instance, "bob")
    assert audit_read(served.url, issued.token, "leeway-before") == 200

    said = cli(instance, "token", "revoke", "--subject", "bob")
    returned = time.monotonic()
    assert "revoked 2 active token(s) of bob" in said  # the fixture's 1 h token, and this one

    time.sleep(max(0.0, returned + PROPAGATION_S - time.monotonic()))
    ids = {f"leeway-after-{n}" for n in range(PROBES)}
    statuses = [audit_read(served.url, issued.token, rid) for rid in sorted(ids)]
    inside_leeway(issued)
    assert statuses == [401] * PROBES
    found = by_request(instance.engine, ids)
    reasons = {event.reason for rid in ids for event in found[rid]}
    assert reasons == {"revoked"}, reasons


def test_token_list_active_shows_what_revoke_would_revoke(
    instance: Instance, served: Served
) -> None:
    issued = just_expired(instance, "eve")
    assert audit_read(served.url, issued.token, "leeway-eve") != 401  # accepted (eve: 403)
    listed = json.loads(cli(instance, "token", "list", "--active", "--format", "json"))
    inside_leeway(issued)
    mine = [row for row in listed if row["jti"] == issued.jti]
    assert [row["status"] for row in mine] == ["leeway"], listed
