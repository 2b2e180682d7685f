"""Principals, rules and tokens in the database, on SQLite and PostgreSQL: what is stored reads
back the same, every change bumps its counter, and the refusals are clean errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.actions import Action
from secure_maas.auth import tokens
from secure_maas.auth.models import TOKENS_SCOPE, IssuedToken
from secure_maas.config import Settings
from secure_maas.db.session import session_factory, session_scope
from secure_maas.db.state import current
from secure_maas.keys import Keyring
from secure_maas.policy import Quota, Rule, Window, directory, grants
from secure_maas.policy.errors import Conflict, InvalidRule, NotFound
from secure_maas.policy.models import POLICY_SCOPE, PRINCIPALS_SCOPE

NOW = datetime(2027, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def session(migrated_engine: Engine) -> Iterator[Session]:
    with session_scope(session_factory(migrated_engine)) as session:
        yield session


def test_principals_roles_and_their_counter(session: Session) -> None:
    before = current(session, PRINCIPALS_SCOPE)
    directory.add_principal(session, "alice", actor="ops", roles=["analyst", "auditor"])
    directory.add_principal(session, "carol", actor="ops", disabled=True, description="gone")
    assert current(session, PRINCIPALS_SCOPE) > before
    with pytest.raises(Conflict, match="already exists"):
        directory.add_principal(session, "alice", actor="ops")
    with pytest.raises(InvalidRule, match="invalid principal name"):
        directory.add_principal(session, "has space", actor="ops")
    snapshot = directory.load_directory(session)
    assert snapshot.get("alice") == directory.PrincipalState(False, ("analyst", "auditor"))
    assert snapshot.get("carol") == directory.PrincipalState(True, ())
    assert snapshot.get("nobody") is None

    mark = current(session, PRINCIPALS_SCOPE)
    assert directory.take_role(session, "alice", "auditor")[1]
    assert not directory.take_role(session, "alice", "auditor")[1]
    assert directory.grant_role(session, "carol", "newrole")[1]
    assert directory.set_disabled(session, "carol", False)[1]
    assert not directory.set_disabled(session, "carol", False)[1]
    assert current(session, PRINCIPALS_SCOPE) == mark + 4  # no bump for a no-op
    assert directory.load_directory(session).get("carol") == directory.PrincipalState(
        False, ("newrole",)
    )
    with pytest.raises(NotFound, match="principal add bob"):
        directory.set_disabled(session, "bob", True)


def test_rules_read_back_exactly_and_bump_the_policy_counter(session: Session) -> None:
    rule = Rule(
        "allow",
        "role:analyst",
        (Action.MODEL_PREDICT, Action.MODEL_METADATA),
        "digits*",
        label="stable",
        valid_from=NOW,
        valid_until=NOW + timedelta(days=30),
        max_rows=1000,
        max_epsilon=3.0,
        quotas=(Quota(Window.MINUTE, 600), Quota(Window.DAY, rows=10**6)),
        description="analysts on digits",
    )
    before = current(session, POLICY_SCOPE)
    stored, created = grants.grant(session, rule, actor="ops")
    assert created and stored.id > 0
    assert current(session, POLICY_SCOPE) == before + 1
    (loaded,) = grants.load_rules(session)
    assert loaded == rule and loaded.description == rule.description and loaded.id == stored.id

    again, created_again = grants.grant(session, rule, actor="ops")
    assert (again.id, created_again) == (stored.id, False)
    assert current(session, POLICY_SCOPE) == before + 1
    with pytest.raises(Conflict, match=f"rule {stored.id} already covers"):
        grants.grant(
            session,
            Rule("allow", "role:analyst", rule.actions, "digits*", label="stable", max_rows=5),
            actor="ops",
        )

    other, _ = grants.grant(session, Rule("deny", "user:bob", (Action.MODEL_LIST,)), actor="ops")
    assert [r.id for r in grants.revoke(session, [other.id])] == [other.id]
    with pytest.raises(NotFound, match="no rule with id"):
        grants.revoke(session, [other.id])
    with pytest.raises(NotFound, match="other actions"):
        grants.revoke_like(
            session,
            Rule("allow", "role:analyst", (Action.MODEL_PREDICT,), "digits*", label="stable"),
        )
    assert grants.revoke_like(session, rule).id == stored.id
    assert grants.load_rules(session) == []


def test_tokens_are_recorded_by_jti_and_never_stored(session: Session, settings: Settings) -> None:
    keyring, _ = Keyring.init(settings.keys_dir)
    directory.add_principal(session, "alice", actor="ops", roles=["analyst"])
    directory.add_principal(session, "carol", actor="ops", disabled=True)

    def issue(subject: str = "alice", **options: object) -> tokens.Issued:
        values: dict[str, object] = {"ttl": timedelta(minutes=30), "actor": "ops", "now": NOW}
        values.update(options)
        return tokens.issue(session, keyring, settings, subject=subject, **values)  # type: ignore[arg-type]

    first, second = issue(), issue(roles=["analyst"])
    assert first.token not in repr(first)
    stored = session.scalars(sa.select(IssuedToken).order_by(IssuedToken.id)).all()
    assert [(r.jti, r.roles) for r in stored] == [(first.jti, None), (second.jti, "analyst")]
    for row in stored:
        assert first.token not in repr(row.__dict__) and second.token not in repr(row.__dict__)
    with pytest.raises(tokens.TokenError, match="disabled"):
        issue("carol")
    with pytest.raises(NotFound):
        issue("nobody")
    with pytest.raises(tokens.TokenError, match="outside 1s..1d"):
        issue(ttl=timedelta(days=2))
    with pytest.raises(tokens.TokenError, match="does not hold role"):
        issue(roles=["auditor"])

    counter = current(session, TOKENS_SCOPE)
    row, changed = tokens.revoke(session, first.jti, actor="ops", now=NOW)
    assert changed and row.revoked_by == "ops"
    assert not tokens.revoke(session, first.jti, actor="ops")[1]
    assert current(session, TOKENS_SCOPE) == counter + 1
    with pytest.raises(NotFound, match="no token with jti"):
        tokens.revoke(session, "nope", actor="ops")
    active = tokens.list_tokens(session, active=True, now=NOW)
    assert [t.jti for t in active] == [second.jti]
    assert [t.jti for t in tokens.revoke_subject(session, "alice", actor="ops", now=NOW)] == [
        second.jti
    ]
    assert tokens.list_tokens(session, active=True, now=NOW) == []
    assert tokens.revoked_ids(session) == {first.jti, second.jti}
    assert {tokens.status(t, NOW) for t in tokens.list_tokens(session)} == {"revoked"}
