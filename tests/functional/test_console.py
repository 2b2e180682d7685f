"""The web console through Flask's client, on SQLite and PostgreSQL: sign-in and its session
(cookie flags, nothing secret stored, ended by revocation, disabling, expiry, idleness or
sign-out), CSRF and Origin on every form, the security headers, every page and action allowed,
forbidden and invisible, an audit event for each, and 503 when that event cannot be written."""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from jwcrypto import jwk
from werkzeug.test import TestResponse

from secure_maas.audit import AuditEvent, AuditUnavailable
from secure_maas.audit.models import events_table
from secure_maas.auth import tokens
from secure_maas.auth.external import external_name
from secure_maas.console.guard import COOKIE
from secure_maas.console.headers import CONTENT_SECURITY_POLICY
from secure_maas.console.models import ConsoleSession
from secure_maas.console.sessions import id_hash
from secure_maas.console.views import INTEGRITY
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import directory, grants
from secure_maas.policy.rules import Rule
from secure_maas.serving.app import close_app, create_app, services_of
from secure_maas.timeutil import utcnow
from secure_maas.training import dataset_catalog, ledger
from tests.functional.serving_support import Instance, prepared
from tests.functional.training_support import audit_keys, plan
from tests.unit.token_support import claims, sign

HOUR = timedelta(hours=1)
IDP = "https://idp.example/realms/ml"
EXTRA = {
    "admin": ["admin:write", "audit:read", "model:list"],
    "lister": ["audit:read", "model:list", "model:predict", "model:metadata", "privacy:read"],
    "priv": [],
    "privall": [],
    "victim1": ["audit:read"],
    "victim2": ["audit:read"],
    "victim3": ["audit:read"],
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    for made in prepared(request, tmp_path_factory, "console"):
        _add_console_facts(made)
        yield made


def _add_console_facts(instance: Instance) -> None:
    """Principals and rules of the console tests, a dataset with a finished run (digits:2)
    and a run started and never finished (of the invisible model 'secret')."""
    settings, engine = instance.settings, instance.engine
    keyring = Keyring.open(settings.keys_dir)
    factory = session_factory(engine)
    with session_scope(factory) as session:
        for name, actions in EXTRA.items():
            directory.add_principal(session, name, actor="tests")
            if actions:
                grants.grant(session, Rule("allow", f"user:{name}", actions), actor="tests")
        grants.grant(
            session, Rule("allow", "user:priv", ["privacy:read"], model="digits*"), actor="tests"
        )
        grants.grant(session, Rule("allow", "user:privall", ["privacy:read"]), actor="tests")
        for name in EXTRA:
            issued = tokens.issue(session, keyring, settings, subject=name, ttl=HOUR, actor="t")
            instance.tokens[name] = issued.token
    keys = audit_keys(settings)
    dataset_catalog.register_dataset(
        engine, keys, name="wine", source="sklearn:wine", epsilon_budget=10.0, actor="tests"
    )
    digits = plan(1.5, model="digits")
    finished = ledger.reserve(engine, keys, "wine", digits, actor="tests")
    with session_scope(factory) as session:
        ledger.finish(
            session,
            keys,
            finished.run_id,
            privacy=digits.privacy,
            model_version=2,
            path_used="fast",
            test_accuracy=0.9,
            actor="tests",
        )
    ledger.reserve(engine, keys, "wine", plan(2.0, model="secret"), actor="tests")


# -- helpers ----------------------------------------------------------------------------------


def sign_in(client: FlaskClient, instance: Instance, who: str) -> TestResponse:
    answer = client.post("/console/signin", data={"token": instance.tokens[who]})
    assert answer.status_code == 303, answer.text
    assert answer.headers["Location"] == "/console/audit"
    return answer


def csrf_of(client: FlaskClient, path: str = "/console/models") -> str:
    page = client.get(path)
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert found, page.text
    return found.group(1)


def events_of(instance: Instance, answer: TestResponse) -> list[dict[str, Any]]:
    rid = answer.headers["X-Request-Id"]
    query = sa.select(events_table).where(events_table.c.request_id == rid)
    with instance.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def event_of(instance: Instance, answer: TestResponse) -> dict[str, Any]:
    [event] = events_of(instance, answer)
    return event


def events_by_action(instance: Instance, action: str) -> list[dict[str, Any]]:
    query = (
        sa.select(events_table).where(events_table.c.action == action).order_by(events_table.c.seq)
    )
    with instance.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def assert_headers(answer: TestResponse, *, cached: bool = False) -> None:
    headers = answer.headers
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    if not cached:
        assert headers["Cache-Control"] == "no-store"


def assert_no_inline(html: str) -> None:
    assert "<script" not in html and "style=" not in html and "<style" not in html
    assert not re.search(r"<[^>]+\son[a-z]+=", html), "an inline event handler"


def session_rows(instance: Instance) -> list[ConsoleSession]:
    with session_scope(session_factory(instance.engine)) as session:
        return list(session.scalars(sa.select(ConsoleSession)))


def wait_until(check: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll `check` until it holds (bounded; the verifier looks for changes every 0.25 s)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("still not so after the bound")
        time.sleep(0.05)


# -- sign-in, the session and its cookie -------------------------------------------------------


def test_the_sign_in_page_has_its_form_and_the_headers(client: FlaskClient) -> None:
    answer = client.get("/console/signin")
    assert answer.status_code == 200
    html = answer.text
    assert '<form id="signin"' in html and '<textarea id="token" name="token"' in html
    assert 'id="signin-submit"' in html and 'id="console-nav"' in html
    assert html.count('rel="stylesheet"') == 1 and "/console/static/console.css" in html
    assert_headers(answer)
    assert_no_inline(html)
    css = client.get("/console/static/console.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert_headers(css, cached=True)


def test_unknown_paths_and_methods_under_the_console_get_its_headers(
    client: FlaskClient,
) -> None:
    for answer in (client.get("/console/nothing-here"), client.get("/console/signout")):
        assert answer.status_code in (404, 405)
        assert_headers(answer)
    assert "Content-Security-Policy" not in client.get("/healthz").headers  # the API's own


def test_the_index_sends_to_sign_in_without_a_session(client: FlaskClient) -> None:
    answer = client.get("/console/")
    assert answer.status_code == 303 and answer.headers["Location"] == "/console/signin"
    assert_headers(answer)


def test_a_bad_token_is_refused_and_audited(client: FlaskClient, instance: Instance) -> None:
    for token in ("", "not-a-token", instance.tokens["expired"], instance.tokens["revoked"]):
        answer = client.post("/console/signin", data={"token": token})
        assert answer.status_code == 401 and "invalid token" in answer.text
        assert COOKIE not in answer.headers.get("Set-Cookie", "")
        event = event_of(instance, answer)
        assert event["action"] == "auth:verify" and event["decision"] == "deny"
        assert event["actor"] == "anonymous" and event["http_status"] == 401
    disabled = client.post("/console/signin", data={"token": instance.tokens["carol"]})
    assert disabled.status_code == 401
    assert event_of(instance, disabled)["reason"] == "principal disabled"


def test_sign_in_makes_a_session_holding_no_secret(client: FlaskClient, instance: Instance) -> None:
    answer = sign_in(client, instance, "bob")
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/console/"} <= flags
    assert "secure" not in flags  # plain HTTP here; see the TLS test
    session_id = cookie.split(";")[0].split("=", 1)[1]
    event = event_of(instance, answer)
    assert (event["action"], event["actor"], event["decision"]) == ("auth:verify", "bob", "allow")
    [row] = [r for r in session_rows(instance) if r.id_hash == id_hash(session_id)]
    assert row.subject == "bob" and row.roles == "auditor"
    values = [str(getattr(row, c.name)) for c in ConsoleSession.__table__.columns]
    assert not any(session_id in v or instance.tokens["bob"] in v for v in values)
    page = client.get("/console/audit")
    assert page.status_code == 200 and '<span id="whoami">bob</span>' in page.text


def test_the_cookie_is_secure_over_tls_or_when_the_setting_says_so(
    app: Flask, instance: Instance
) -> None:
    over_tls = app.test_client()
    answer = over_tls.post(
        "/console/signin",
        data={"token": instance.tokens["bob"]},
        base_url="https://localhost",
    )
    assert "secure" in answer.headers["Set-Cookie"].lower().split("; ")
    settings = dataclasses.replace(instance.settings, console_secure_cookie=True)
    services = dataclasses.replace(services_of(app), settings=settings)
    proxied = create_app(services=services).test_client()
    answer = proxied.post("/console/signin", data={"token": instance.tokens["bob"]})
    assert "secure" in answer.headers["Set-Cookie"].lower().split("; ")


def test_without_a_session_pages_send_to_sign_in_audited(
    client: FlaskClient, instance: Instance
) -> None:
    for path in ("/console/audit", "/console/privacy", "/console/models", "/console/access"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["Location"] == "/console/signin"
        assert_headers(answer)
        event = event_of(instance, answer)
        assert event["decision"] == "deny" and event["actor"] == "anonymous"
        assert event["reason_code"] == "no_session"


def test_a_tampered_or_unknown_cookie_is_refused_and_cleared(
    client: FlaskClient, instance: Instance
) -> None:
    answer = sign_in(client, instance, "bob")
    session_id = answer.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    flipped = session_id[:-1] + ("A" if session_id[-1] != "A" else "B")
    for value in (flipped, "x" * 43, "short", session_id + "x"):
        client.set_cookie(COOKIE, value, path="/console/")
        refused = client.get("/console/audit")
        assert refused.status_code == 303 and refused.headers["Location"] == "/console/signin"
        assert f"{COOKIE}=;" in refused.headers["Set-Cookie"]  # cleared
        event = event_of(instance, refused)
        assert event["decision"] == "deny" and event["reason_code"] == "bad_session"


def test_sign_out_ends_the_session(client: FlaskClient, instance: Instance) -> None:
    answer = sign_in(client, instance, "victim3")
    session_id = answer.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    token = csrf_of(client, "/console/audit")
    out = client.post("/console/signout", data={"csrf": token})
    assert out.status_code == 303 and out.headers["Location"] == "/console/signin"
    assert event_of(instance, out)["reason"] == "console sign-out"
    assert id_hash(session_id) not in {r.id_hash for r in session_rows(instance)}
    client.set_cookie(COOKIE, session_id, path="/console/")
    assert client.get("/console/audit").status_code == 303


def test_revoking_the_token_ends_the_session(client: FlaskClient, instance: Instance) -> None:
    sign_in(client, instance, "victim1")
    assert client.get("/console/audit").status_code == 200
    with session_scope(session_factory(instance.engine)) as session:
        tokens.revoke_subject(session, "victim1", actor="tests")
    wait_until(lambda: client.get("/console/audit").status_code == 303)
    ended = [
        e for e in events_by_action(instance, "audit:read") if e["reason_code"] == "invalid_token"
    ]
    assert any("revoked" in (e["reason"] or "") for e in ended)
    assert "victim1" not in {r.subject for r in session_rows(instance)}


def test_disabling_the_principal_ends_the_session(client: FlaskClient, instance: Instance) -> None:
    sign_in(client, instance, "victim2")
    assert client.get("/console/audit").status_code == 200
    with session_scope(session_factory(instance.engine)) as session:
        directory.set_disabled(session, "victim2", True)
    wait_until(lambda: client.get("/console/audit").status_code == 303)
    assert "victim2" not in {r.subject for r in session_rows(instance)}


@pytest.mark.parametrize(("column", "code"), [("expires_at", "expired"), ("last_seen_at", "idle")])
def test_an_expired_or_idle_session_ends(
    client: FlaskClient, instance: Instance, column: str, code: str
) -> None:
    answer = sign_in(client, instance, "bob")
    session_id = answer.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    past = utcnow() - timedelta(days=2)
    with session_scope(session_factory(instance.engine)) as session:
        session.execute(
            sa.update(ConsoleSession)
            .where(ConsoleSession.id_hash == id_hash(session_id))
            .values({column: past})
        )
    refused = client.get("/console/audit")
    assert refused.status_code == 303
    assert event_of(instance, refused)["reason_code"] == code
    assert id_hash(session_id) not in {r.id_hash for r in session_rows(instance)}


def test_an_external_identity_providers_token_signs_in(instance: Instance, tmp_path: Path) -> None:
    signing = jwk.JWK.generate(kty="EC", crv="P-256")
    jwks = tmp_path / "idp-jwks.json"
    public = {**signing.export_public(as_dict=True), "kid": "idp-ec", "use": "sig"}
    jwks.write_text(json.dumps({"keys": [public]}))
    settings = dataclasses.replace(instance.settings, external_issuer=IDP, external_jwks=jwks)
    external = create_app(settings)
    try:
        client = external.test_client()
        body = claims(utcnow(), issuer=IDP, subject="zoe", jti=secrets.token_hex(8))
        token = sign(signing, {"alg": "ES256", "kid": "idp-ec", "typ": "JWT"}, body)
        answer = client.post("/console/signin", data={"token": token})
        assert answer.status_code == 303
        name = external_name(IDP, "zoe")
        event = event_of(instance, answer)
        assert event["actor"] == name and IDP in event["detail"]
        page = client.get("/console/models")
        assert page.status_code == 200 and f'<span id="whoami">{name}</span>' in page.text
        assert client.get("/console/audit").status_code == 403  # no rule names it
    finally:
        close_app(external)


# -- CSRF and Origin -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/console/audit/verify", "/console/access/explain", "/console/access/grant",
             "/console/signout"]
)  # fmt: skip
def test_a_post_without_or_with_a_wrong_csrf_token_is_403_and_audited(
    client: FlaskClient, instance: Instance, path: str
) -> None:
    sign_in(client, instance, "admin")
    good = csrf_of(client)
    wrong = ("0" if good[0] != "0" else "1") + good[1:]
    for data in ({}, {"csrf": wrong}, {"csrf": ""}, {"csrf": "é"}):
        answer = client.post(path, data={**data, "subject": "user:x", "action": "audit:read"})
        assert answer.status_code == 403, path
        assert "CSRF" in answer.text
        assert_headers(answer)
        event = event_of(instance, answer)
        assert event["decision"] == "deny" and event["actor"] == "admin"
        assert "CSRF" in event["reason"]
    assert client.get("/console/audit").status_code == 200  # the session is still there


def test_another_sessions_csrf_token_does_not_pass(app: Flask, instance: Instance) -> None:
    first, second = app.test_client(), app.test_client()
    sign_in(first, instance, "admin")
    sign_in(second, instance, "admin")
    theirs = csrf_of(second)
    answer = first.post("/console/audit/verify", data={"csrf": theirs})
    assert answer.status_code == 403


def test_a_cross_origin_post_is_refused(client: FlaskClient, instance: Instance) -> None:
    sign_in(client, instance, "bob")
    token = csrf_of(client, "/console/audit")
    answer = client.post(
        "/console/audit/verify", data={"csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert answer.status_code == 403
    assert "Origin" in event_of(instance, answer)["reason"]
    signin = client.post(
        "/console/signin",
        data={"token": instance.tokens["bob"]},
        headers={"Origin": "https://evil.example"},
    )
    assert signin.status_code == 403
    for origin in ("http://localhost.evil.example", "http://localhost:8080", "file://", "null"):
        refused = client.post(
            "/console/audit/verify", data={"csrf": token}, headers={"Origin": origin}
        )
        assert refused.status_code == 403, origin
    # https: TLS ended at a proxy (browsers name the console's origin: Referrer-Policy is
    # same-origin, not no-referrer, under which they would send null)
    for origin in ("http://localhost", "https://localhost"):
        allowed = client.post(
            "/console/audit/verify", data={"csrf": token}, headers={"Origin": origin}
        )
        assert allowed.status_code == 303, origin


def test_signing_in_again_replaces_the_session(client: FlaskClient, instance: Instance) -> None:
    first = sign_in(client, instance, "bob").headers["Set-Cookie"].split(";")[0].split("=")[1]
    second = sign_in(client, instance, "bob").headers["Set-Cookie"].split(";")[0].split("=")[1]
    hashes = {r.id_hash for r in session_rows(instance)}
    assert id_hash(second) in hashes and id_hash(first) not in hashes


# -- audit -----------------------------------------------------------------------------------


def test_the_audit_page_for_an_auditor(client: FlaskClient, instance: Instance) -> None:
    sign_in(client, instance, "bob")
    answer = client.get("/console/audit")
    assert answer.status_code == 200
    html = answer.text
    for hook in (
        '<form id="audit-filter" method="get"',
        'id="audit-filter-submit"',
        '<table id="audit-table">',
        'id="integrity" data-state="',
        'class="event',
    ):
        assert hook in html, hook  # fmt: skip
    for chart in (
        "chart-requests",
        "chart-denials-actor",
        "chart-denials-model",
        "chart-latency",
        "chart-reasons",
    ):
        assert f'id="{chart}"' in html, chart  # fmt: skip
    assert_headers(answer)
    assert_no_inline(html)
    event = event_of(instance, answer)
    assert (event["action"], event["actor"], event["decision"]) == ("audit:read", "bob", "allow")
    assert event["rows"] == len(re.findall(r'<tr class="event', html))


def test_the_audit_page_is_forbidden_without_audit_read(
    client: FlaskClient, instance: Instance
) -> None:
    sign_in(client, instance, "alice")
    for path in ("/console/audit", "/console/audit/1", "/console/audit.csv"):
        answer = client.get(path)
        assert answer.status_code == 403, path
        assert "permission denied" in answer.text and "<table" not in answer.text
        assert_headers(answer)
        event = event_of(instance, answer)
        assert event["decision"] == "deny" and event["actor"] == "alice"


def test_the_audit_filter_and_pages(client: FlaskClient, instance: Instance) -> None:
    alice = client.application.test_client()
    sign_in(alice, instance, "alice")
    alice.get("/console/audit")  # a denial by alice to find
    sign_in(client, instance, "bob")
    answer = client.get("/console/audit?actor=alice&decision=deny&action=audit:read&status=403")
    rows = re.findall(r'<tr class="event deny" data-seq="(\d+)"', answer.text)
    assert rows, answer.text
    with instance.engine.connect() as connection:
        expected = (
            connection.execute(
                sa.select(events_table.c.seq)
                .where(
                    events_table.c.actor == "alice",
                    events_table.c.decision == "deny",
                    events_table.c.action == "audit:read",
                    events_table.c.http_status == 403,
                )
                .order_by(events_table.c.seq.desc())
            )
            .scalars()
            .all()
        )
    assert [int(r) for r in rows] == list(expected)[:50]
    for bad in (
        "since=yesterday",
        "decision=maybe",
        "status=abc",
        "page=0",
        "colour=red",
        "actor=" + "x" * 200,
        "actor=a%01b",  # a control character: the API's rule (audit.query.text_filter_problem)
        "model=a%C2%85b",
    ):
        refused = client.get(f"/console/audit?{bad}")
        assert refused.status_code == 400, bad  # fmt: skip
    assert client.get("/console/audit?actor=a%C2%A0b").status_code == 200  # a no-break space
    for _ in range(55):  # more than a page of events, whatever ran before in this module
        alice.get("/console/audit")
    first = client.get("/console/audit")
    assert len(re.findall(r'class="event', first.text)) == 50
    link = re.search(r'<a class="next" href="([^"]+)"', first.text)
    assert link is not None and 'class="prev"' not in first.text
    second = client.get(html.unescape(link.group(1)))
    assert 'class="prev"' in second.text
    seqs_first = [int(s) for s in re.findall(r'data-seq="(\d+)"', first.text)]
    seqs_second = [int(s) for s in re.findall(r'data-seq="(\d+)"', second.text)]
    assert seqs_second[0] == seqs_first[-1] - 1  # no overlap although the log grew
    assert seqs_first == sorted(seqs_first, reverse=True)


def test_an_event_shows_its_mac_and_key_id(client: FlaskClient, instance: Instance) -> None:
    sign_in(client, instance, "bob")
    with instance.engine.connect() as connection:
        row = connection.execute(
            sa.select(events_table.c.seq, events_table.c.mac, events_table.c.key_id).limit(1)
        ).one()
    answer = client.get(f"/console/audit/{row.seq}")
    assert answer.status_code == 200 and '<dl id="event">' in answer.text
    assert bytes(row.mac).hex() in answer.text and row.key_id in answer.text
    assert client.get("/console/audit/999999999").status_code == 404


def test_the_csv_export_streams_the_filtered_events(
    client: FlaskClient, instance: Instance
) -> None:
    sign_in(client, instance, "bob")
    answer = client.get("/console/audit.csv?decision=allow&actor=bob")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert rows and all(r["decision"] == "allow" and r["actor"] == "bob" for r in rows)
    assert {"seq", "mac", "key_id"} <= set(rows[0])
    event = event_of(instance, answer)
    assert event["action"] == "audit:read" and event["reason"] == "CSV export"


def test_verify_runs_in_the_background_and_every_worker_shows_its_outcome(
    app: Flask, client: FlaskClient, instance: Instance
) -> None:
    sign_in(client, instance, "bob")
    assert 'id="integrity" data-state="' in client.get("/console/audit").text
    answer = client.post("/console/audit/verify", data={"csrf": csrf_of(client, "/console/audit")})
    assert answer.status_code == 303 and answer.headers["Location"] == "/console/audit"
    assert event_of(instance, answer)["decision"] == "allow"
    app.extensions[INTEGRITY].wait(60)
    page = client.get("/console/audit").text
    assert 'data-state="ok"' in page and "Chain intact" in page
    logged = [e for e in events_by_action(instance, "audit:read") if e["actor"] == "console-verify"]
    started, outcome = logged[-2:]
    assert '"verify":"started"' in started["detail"] and '"requested_by":"bob"' in started["detail"]
    assert '"verify":"ok"' in outcome["detail"] and outcome["actor_kind"] == "service"
    other = create_app(instance.settings)  # another worker: nothing ran there, the log tells
    try:
        elsewhere = other.test_client()
        sign_in(elsewhere, instance, "bob")
        assert 'data-state="ok"' in elsewhere.get("/console/audit").text
    finally:
        close_app(other)


# -- privacy ---------------------------------------------------------------------------------


def test_the_privacy_page_shows_only_what_the_rules_let_one_read(
    app: Flask, instance: Instance
) -> None:
    narrow = app.test_client()
    sign_in(narrow, instance, "priv")
    answer = narrow.get("/console/privacy")
    assert answer.status_code == 200
    html = answer.text
    assert '<section class="dataset" data-dataset="wine">' in html
    assert 'id="gauge-wine"' in html and 'id="runs-wine"' in html
    assert '<table class="models">' in html and "digits:2" in html
    assert "secret" not in html  # the run of a model priv may not read
    assert_no_inline(html)
    event = event_of(instance, answer)
    assert (event["action"], event["decision"], event["rows"]) == ("privacy:read", "allow", 1)
    wide = app.test_client()
    sign_in(wide, instance, "privall")
    html = wide.get("/console/privacy").text
    assert "secret" in html and "started, not finished" in html


def test_the_privacy_page_is_forbidden_without_privacy_read(
    client: FlaskClient, instance: Instance
) -> None:
    sign_in(client, instance, "alice")
    answer = client.get("/console/privacy")
    assert answer.status_code == 403 and "wine" not in answer.text
    assert event_of(instance, answer)["decision"] == "deny"


# -- models and access -------------------------------------------------------------------------


def test_the_models_page_lists_only_visible_versions(
    client: FlaskClient, instance: Instance
) -> None:
    sign_in(client, instance, "alice")
    answer = client.get("/console/models")
    assert answer.status_code == 200 and '<table id="models-table">' in answer.text
    shown = set(re.findall(r'data-model="([^"]+)" data-version="(\d+)"', answer.text))
    assert ("digits", "2") in shown and ("listed", "1") in shown
    assert not any(name == "secret" for name, _ in shown)
    assert 'id="label"' not in answer.text  # no admin:write, no form
    event = event_of(instance, answer)
    assert event["action"] == "model:list" and event["rows"] == len(shown)
    sign_in(client, instance, "eve")  # no rule at all: an empty list, as /v1/models gives
    assert "no model you may see" in client.get("/console/models").text


def test_the_access_page_and_explain(client: FlaskClient, instance: Instance) -> None:
    sign_in(client, instance, "bob")
    answer = client.get("/console/access")
    assert answer.status_code == 200
    for hook in (
        'id="principals-table"',
        'id="roles-table"',
        'id="rules-table"',
        '<form id="explain" method="post" action="/console/access/explain">',
        'id="explain-submit"',
    ):
        assert hook in answer.text, hook  # fmt: skip
    assert 'id="grant"' not in answer.text  # bob may read, not change
    token = csrf_of(client, "/console/access")
    for model, allowed in (("digits:2", "true"), ("secret", "false")):
        data = {"csrf": token, "subject": "alice", "model": model, "action": "model:predict"}
        explained = client.post("/console/access/explain", data=data)
        assert explained.status_code == 200
        assert f'<div id="explain-result" data-allowed="{allowed}">' in explained.text
        assert event_of(instance, explained)["action"] == "audit:read"
    bad = client.post("/console/access/explain", data={"csrf": token, "subject": "alice",
                                                         "action": "model:fly"})  # fmt: skip
    assert bad.status_code == 400
    sign_in(client, instance, "alice")
    assert client.get("/console/access").status_code == 403


def test_changes_need_admin_write(client: FlaskClient, instance: Instance) -> None:
    sign_in(client, instance, "bob")  # audit:read only: a rule naming it, not admin:write
    token = csrf_of(client, "/console/access")
    for path, data in (
        ("/console/access/grant", {"subject": "user:eve", "actions": "model:list"}),
        ("/console/access/revoke", {"rule": "1"}),
        ("/console/access/disable", {"principal": "eve"}),
        ("/console/models/label", {"model": "digits", "version": "1", "label": "x"}),
    ):
        answer = client.post(path, data={"csrf": token, **data})
        assert answer.status_code in (403, 404), path
        event = event_of(instance, answer)
        assert event["decision"] == "deny" and event["actor"] == "bob"
    assert not events_by_action(instance, "policy:grant") or all(
        e["actor"] != "bob" for e in events_by_action(instance, "policy:grant")
    )


def test_an_admin_grants_revokes_disables_and_labels_with_audit_events(
    client: FlaskClient, instance: Instance
) -> None:
    sign_in(client, instance, "admin")
    token = csrf_of(client, "/console/access")
    assert 'id="grant"' in client.get("/console/access").text
    granted = client.post(
        "/console/access/grant",
        data={"csrf": token, "subject": "user:eve", "model": "listed", "actions": "model:list"},
    )
    assert granted.status_code == 303
    assert event_of(instance, granted)["action"] == "admin:write"
    [change] = [e for e in events_by_action(instance, "policy:grant") if e["actor"] == "admin"]
    assert change["actor_kind"] == "user" and "user:eve" in change["reason"]
    with session_scope(session_factory(instance.engine)) as session:
        [rule] = [r for r in grants.load_rules(session) if r.subject == "user:eve"]
    revoked = client.post("/console/access/revoke", data={"csrf": token, "rule": str(rule.id)})
    assert revoked.status_code == 303
    assert any(e["actor"] == "admin" for e in events_by_action(instance, "policy:revoke"))
    conditioned = client.post(
        "/console/access/grant",
        data={"csrf": token, "subject": "role:analyst", "model": "digits", "label": "stable",
              "max_epsilon": "2.5", "max_rows": "10", "finite_inputs": "1",
              "actions": ["model:predict", "model:metadata"], "effect": "allow"},
    )  # fmt: skip
    assert conditioned.status_code == 303
    with session_scope(session_factory(instance.engine)) as session:
        [made] = [r for r in grants.load_rules(session) if r.label == "stable"]
    assert (made.max_epsilon, made.max_rows, made.finite_inputs) == (2.5, 10, True)
    for bad in (
        {"version": "1", "label": "stable"},
        {"max_epsilon": "lots"},
        {"actions": []},
        {"subject": "nobody"},
        {"actions": "model:fly"},
    ):
        refused = client.post(
            "/console/access/grant",
            data={"csrf": token, "subject": "user:eve", "actions": "model:list", **bad},
        )
        assert refused.status_code == 400, bad  # fmt: skip
    missing = client.post("/console/access/revoke", data={"csrf": token, "rule": "999999"})
    assert missing.status_code == 404
    disabled = client.post("/console/access/disable", data={"csrf": token, "principal": "dave"})
    assert disabled.status_code == 303
    with session_scope(session_factory(instance.engine)) as session:
        assert directory.get_principal(session, "dave").disabled
    enabled = client.post(
        "/console/access/disable", data={"csrf": token, "principal": "dave", "enable": "1"}
    )
    assert enabled.status_code == 303
    labelled = client.post(
        "/console/models/label",
        data={"csrf": token, "model": "digits", "version": "1", "label": "review"},
    )
    assert labelled.status_code == 303, labelled.text
    [label] = [e for e in events_by_action(instance, "model:label") if e["actor"] == "admin"]
    assert label["model"] == "digits" and "review" in label["reason"]
    hidden = client.post(
        "/console/models/label",
        data={"csrf": token, "model": "nothing", "version": "1", "label": "x"},
    )
    assert hidden.status_code == 404


def test_admin_write_is_not_implied_by_other_actions(
    client: FlaskClient, instance: Instance
) -> None:
    sign_in(client, instance, "lister")  # every read action, on every model: no admin:write
    token = csrf_of(client, "/console/access")
    answer = client.post("/console/access/disable", data={"csrf": token, "principal": "eve"})
    assert answer.status_code == 403


# -- failing closed -----------------------------------------------------------------------------


class FullDiskAudit:
    """An audit sink whose every write fails, as a full disk makes it."""

    def append(self, event: AuditEvent) -> object:
        raise AuditUnavailable("audit log write failed: disk full")

    def close(self, timeout: float | None = None) -> None:
        return None


def test_a_failed_audit_write_turns_any_answer_into_503(app: Flask, instance: Instance) -> None:
    good = app.test_client()
    answer = sign_in(good, instance, "bob")
    session_id = answer.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    failing_app = create_app(services=dataclasses.replace(services_of(app), audit=FullDiskAudit()))
    failing = failing_app.test_client()
    before = {r.id_hash for r in session_rows(instance)}
    refused = failing.post("/console/signin", data={"token": instance.tokens["bob"]})
    assert refused.status_code == 503 and COOKIE not in refused.headers.get("Set-Cookie", "")
    assert {r.id_hash for r in session_rows(instance)} == before  # no unaudited session kept
    failing.set_cookie(COOKIE, session_id, path="/console/")
    for path in (
        "/console/audit",
        "/console/privacy",
        "/console/models",
        "/console/access",
        "/console/audit.csv",
    ):
        page = failing.get(path)
        assert page.status_code == 503, path  # fmt: skip
        assert "service unavailable" in page.text
        assert_headers(page)
