"""The console's session store and `Verifier.recheck` on SQLite and PostgreSQL: a session keeps
no secret and ends when expired, idle or deleted; a principal verified earlier is checked
again against the current revocations and directory (expired, revoked, unknown, disabled,
relinked), its roles only narrow, and an external identity provider's token is rechecked by
its namespaced name and its link. The CSRF token is the session's own."""

from __future__ import annotations

import dataclasses
import json
import secrets
from datetime import timedelta
from pathlib import Path

import pytest
from jwcrypto import jwk
from sqlalchemy.engine import Engine

from secure_maas.auth import tokens
from secure_maas.auth.external import external_name
from secure_maas.auth.principal import Principal
from secure_maas.auth.verify import InvalidToken, Verifier
from secure_maas.config import Settings
from secure_maas.console.sessions import (
    SessionEnded,
    SessionStore,
    csrf_matches,
    csrf_token,
    id_hash,
    well_formed,
)
from secure_maas.db import create_engine
from secure_maas.db.session import session_factory, session_scope
from secure_maas.instance import initialise
from secure_maas.keys import Keyring
from secure_maas.policy import directory
from secure_maas.timeutil import utcnow
from tests.unit.token_support import claims, sign

IDP = "https://idp.example/realms/ml"
KID = "idp-ec"
HOUR = timedelta(hours=1)


@pytest.fixture
def engine(settings: Settings) -> Engine:
    initialise(settings)
    made = create_engine(settings.database_url)
    with session_scope(session_factory(made)) as session:
        directory.add_principal(session, "alice", actor="tests", roles=["analyst", "auditor"])
        directory.add_principal(session, "bob", actor="tests")
    return made


def verifier(engine: Engine, settings: Settings) -> Verifier:
    """A verifier that looks for changes at every call (no waiting in these tests)."""
    return Verifier(engine, settings, interval=0.0)


def issue(engine: Engine, settings: Settings, subject: str, **options: object) -> str:
    keyring = Keyring.open(settings.keys_dir)
    with session_scope(session_factory(engine)) as session:
        issued = tokens.issue(
            session, keyring, settings, subject=subject, ttl=HOUR, actor="t", **options
        )
    return issued.token


def change(engine: Engine, action: str, *args: object) -> None:
    with session_scope(session_factory(engine)) as session:
        getattr(directory, action)(session, *args)


def test_recheck_follows_revocation_and_disabling(engine: Engine, settings: Settings) -> None:
    check = verifier(engine, settings)
    principal = check.verify(issue(engine, settings, "alice"))
    assert check.recheck(principal) == principal
    change(engine, "set_disabled", "alice", True)
    with pytest.raises(InvalidToken) as disabled:
        check.recheck(principal)
    assert disabled.value.reason == "principal disabled"
    change(engine, "set_disabled", "alice", False)
    assert check.recheck(principal) == principal
    with session_scope(session_factory(engine)) as session:
        tokens.revoke(session, principal.token_id, actor="tests")
    with pytest.raises(InvalidToken) as revoked:
        check.recheck(principal)
    assert revoked.value.reason == "revoked"


def test_recheck_refuses_an_expired_or_unknown_principal(
    engine: Engine, settings: Settings
) -> None:
    check = verifier(engine, settings)
    principal = check.verify(issue(engine, settings, "bob"))
    with pytest.raises(InvalidToken) as expired:
        check.recheck(principal, utcnow() + 2 * HOUR)
    assert expired.value.reason == "expired"
    ghost = dataclasses.replace(principal, subject="nobody")
    with pytest.raises(InvalidToken) as unknown:
        check.recheck(ghost)
    assert unknown.value.reason == "unknown principal"


def test_roles_only_narrow_during_a_session(engine: Engine, settings: Settings) -> None:
    check = verifier(engine, settings)
    principal = check.verify(issue(engine, settings, "alice"))
    assert principal.roles == ("analyst", "auditor")
    change(engine, "take_role", "alice", "auditor")
    assert check.recheck(principal).roles == ("analyst",)
    change(engine, "grant_role", "alice", "admin")
    assert check.recheck(principal).roles == ("analyst",)  # a new role needs a new sign-in
    change(engine, "grant_role", "alice", "auditor")
    assert check.recheck(principal).roles == ("analyst", "auditor")


def test_an_external_token_is_rechecked_by_its_namespaced_name_and_link(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    signing = jwk.JWK.generate(kty="EC", crv="P-256")
    jwks = tmp_path / "idp-jwks.json"
    public = {**signing.export_public(as_dict=True), "kid": KID, "use": "sig"}
    jwks.write_text(json.dumps({"keys": [public]}))
    external = dataclasses.replace(settings, external_issuer=IDP, external_jwks=jwks)
    check = verifier(engine, external)
    name = external_name(IDP, "carol")
    with session_scope(session_factory(engine)) as session:  # carol of the IdP speaks for bob
        directory.link(session, "bob", name, actor="tests")
    body = claims(utcnow(), issuer=IDP, subject="carol", jti=secrets.token_hex(8))
    token = sign(signing, {"alg": "ES256", "kid": KID, "typ": "JWT"}, body)
    principal = check.verify(token)
    assert (principal.subject, principal.external_subject) == ("bob", name)
    assert check.recheck(principal) == principal
    with session_scope(session_factory(engine)) as session:
        directory.unlink(session, name)
    with pytest.raises(InvalidToken) as relinked:
        check.recheck(principal)
    assert relinked.value.reason == "principal link changed"


def principal_for(settings: Settings, engine: Engine, subject: str = "alice") -> Principal:
    return verifier(engine, settings).verify(issue(engine, settings, subject))


def test_a_session_keeps_no_secret_and_gives_its_principal_back(
    engine: Engine, settings: Settings
) -> None:
    store = SessionStore(engine, idle_timeout=timedelta(minutes=30))
    principal = principal_for(settings, engine)
    now = utcnow()
    session_id = store.create(principal, now)
    assert well_formed(session_id) and len(session_id) == 43
    live = store.load(session_id, now + timedelta(minutes=5))
    assert live.principal == principal
    store.forget(session_id)
    with pytest.raises(SessionEnded) as gone:
        store.load(session_id, now)
    assert gone.value.code == "bad_session"
    assert id_hash(session_id) != id_hash(session_id + "x")


@pytest.mark.parametrize(
    ("later", "code"),
    [(timedelta(minutes=31), "idle"), (2 * HOUR, "expired")],
)
def test_a_session_ends_when_idle_or_expired_and_is_deleted(
    engine: Engine, settings: Settings, later: timedelta, code: str
) -> None:
    store = SessionStore(engine, idle_timeout=timedelta(minutes=30))
    now = utcnow()
    session_id = store.create(principal_for(settings, engine), now)
    with pytest.raises(SessionEnded) as ended:
        store.load(session_id, now + later)
    assert ended.value.code == code
    with pytest.raises(SessionEnded) as again:
        store.load(session_id, now)  # deleted, not merely refused
    assert again.value.code == "bad_session"


def test_use_keeps_a_session_alive(engine: Engine, settings: Settings) -> None:
    store = SessionStore(engine, idle_timeout=timedelta(minutes=30))
    now = utcnow()
    session_id = store.create(principal_for(settings, engine), now)
    for minutes in (20, 40, 55):  # each request within the idle timeout of the last
        store.load(session_id, now + timedelta(minutes=minutes))


def test_use_keeps_a_session_alive_under_the_shortest_idle_timeout(
    engine: Engine, settings: Settings
) -> None:
    store = SessionStore(engine, idle_timeout=timedelta(minutes=1))
    now = utcnow()
    session_id = store.create(principal_for(settings, engine), now)
    for seconds in range(50, 600, 50):  # a request every 50 s, each within the minute
        store.load(session_id, now + timedelta(seconds=seconds))


def test_malformed_session_ids_are_not_looked_up(engine: Engine) -> None:
    store = SessionStore(engine, idle_timeout=timedelta(minutes=30))
    for value in (None, "", "x" * 42, "x" * 44, "é" * 43, "a b" + "c" * 40):
        with pytest.raises(SessionEnded):
            store.load(value, utcnow())


def test_the_csrf_token_is_the_sessions_own() -> None:
    first, second = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    token = csrf_token(first)
    assert csrf_matches(first, token) and csrf_token(first) == token
    assert not csrf_matches(second, token)
    for wrong in (None, "", token[:-1], token + "0", token.upper(), "é" * 64):
        assert not csrf_matches(first, wrong)
