"""Properties of the rule engine over random policies and requests (hypothesis).

- the indexed, cached engine decides exactly as a scan of every rule;
- no rule means deny; a matching deny always wins;
- adding an allow never removes access;
- revoking a granted rule (through the database) restores exactly the decisions before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.actions import Action
from secure_maas.db import create_engine, migrate
from secure_maas.policy import grants
from secure_maas.policy.errors import Conflict
from secure_maas.policy.evaluate import Caller, ModelFacts, RequestFacts
from secure_maas.policy.index import CompiledPolicy
from secure_maas.policy.rules import Quota, Rule, Window

T0 = datetime(2027, 1, 1, tzinfo=UTC)
SUBJECTS = ["*", "user:alice", "user:bob", "role:analyst", "role:auditor"]
PATTERNS = ["*", "digits", "digits*", "wine", "d?gits", "[dw]*", "*_v2"]
MODEL_NAMES = ["digits", "digits_v2", "wine", "iris"]

actions = st.lists(st.sampled_from(list(Action)), min_size=1, max_size=3, unique=True)
moments = st.sampled_from([None, T0, T0 + timedelta(hours=1)])


@st.composite
def rules(draw: st.DrawFn, effect: str | None = None) -> Rule:
    effect = effect or draw(st.sampled_from(["allow", "deny"]))
    version, label = draw(
        st.sampled_from([(None, None), (1, None), (2, None), (None, "stable"), (None, "canary")])
    )
    start = draw(moments)
    end = draw(moments)
    if start is not None and end is not None and end <= start:
        start, end = None, end
    conditions: dict[str, object] = {}
    if effect == "allow":
        conditions = {
            "max_rows": draw(st.sampled_from([None, 5, 50])),
            "max_epsilon": draw(st.sampled_from([None, 1.0, 3.0])),
            "quotas": draw(st.sampled_from([(), (Quota(Window.MINUTE, 10),)])),
        }
    return Rule(
        effect,  # type: ignore[arg-type]
        draw(st.sampled_from(SUBJECTS)),
        tuple(draw(actions)),
        draw(st.sampled_from(PATTERNS)),
        version=version,
        label=label,
        valid_from=start,
        valid_until=end,
        **conditions,  # type: ignore[arg-type]
    )


@st.composite
def requests(draw: st.DrawFn) -> tuple[Caller, Action, ModelFacts | None, RequestFacts]:
    who = Caller(
        draw(st.sampled_from(["alice", "bob", "carol"])),
        tuple(sorted(draw(st.sets(st.sampled_from(["analyst", "auditor", "other"]))))),
    )
    action = draw(st.sampled_from(list(Action)))
    model = draw(
        st.none()
        | st.builds(
            ModelFacts,
            st.sampled_from(MODEL_NAMES),
            st.sampled_from([1, 2, 3]),
            st.sets(st.sampled_from(["stable", "canary"])).map(lambda s: tuple(sorted(s))),
            st.sampled_from([None, 0.5, 2.0, 8.0]),
        )
    )
    facts = RequestFacts(
        draw(st.sampled_from([1, 5, 10, 100])),
        draw(st.sampled_from([T0 - timedelta(minutes=1), T0, T0 + timedelta(minutes=30)])),
    )
    return who, action, model, facts


def compiled(rule_list: list[Rule]) -> CompiledPolicy:
    return CompiledPolicy([r.with_id(i + 1) for i, r in enumerate(rule_list)])


policies = st.lists(rules(), max_size=25)
some_requests = st.lists(requests(), min_size=1, max_size=10)


@given(policies, some_requests)
def test_indexed_engine_agrees_with_a_scan_of_every_rule(rule_list: list[Rule], asks: list) -> None:  # type: ignore[type-arg]
    policy = compiled(rule_list)
    for ask in asks:
        first = policy.decide(*ask)
        assert first == policy.decide_naive(*ask)
        assert first == policy.decide(*ask)  # from the cache


@given(some_requests)
def test_no_rule_means_deny(asks: list) -> None:  # type: ignore[type-arg]
    for ask in asks:
        assert not compiled([]).decide(*ask).allowed


@given(policies, requests(), st.sampled_from(["user", "role", "*"]))
def test_a_matching_deny_always_wins(
    rule_list: list[Rule], ask: tuple[Caller, Action, ModelFacts | None, RequestFacts], kind: str
) -> None:
    who, action, model, facts = ask
    if kind == "role" and not who.roles:
        kind = "*"
    subject = {
        "user": f"user:{who.subject}",
        "role": f"role:{who.roles[0] if who.roles else ''}",
        "*": "*",
    }[kind]
    pattern = "*" if model is None else model.name
    blocker = Rule("deny", subject, (action,), pattern)
    for position in (0, len(rule_list)):
        policy = compiled([*rule_list[:position], blocker, *rule_list[position:]])
        decision = policy.decide(who, action, model, facts)
        assert not decision.allowed
        assert position + 1 in decision.rule_ids


@given(policies, rules(effect="allow"), some_requests)
def test_adding_an_allow_never_removes_access(
    rule_list: list[Rule],
    extra: Rule,
    asks: list,  # type: ignore[type-arg]
) -> None:
    before, after = compiled(rule_list), compiled([*rule_list, extra])
    for ask in asks:
        if before.decide(*ask).allowed:
            assert after.decide(*ask).allowed


@pytest.fixture(scope="module")
def scratch_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path: Path = tmp_path_factory.mktemp("props") / "policy.db"
    engine = create_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(policies, rules(), some_requests)
def test_revoke_removes_exactly_what_the_grant_added(
    scratch_engine: Engine,
    rule_list: list[Rule],
    extra: Rule,
    asks: list,  # type: ignore[type-arg]
) -> None:
    with scratch_engine.connect() as connection, connection.begin() as outer:
        session = Session(bind=connection)
        for rule in rule_list:
            with contextlib.suppress(Conflict):  # same identity, other conditions
                grants.grant(session, rule, actor="test")
        before = CompiledPolicy(grants.load_rules(session))
        try:
            _stored, created = grants.grant(session, extra, actor="test")
        except Conflict:
            created = False
        if created:
            granted = CompiledPolicy(grants.load_rules(session))
            grants.revoke_like(session, extra)
        after = CompiledPolicy(grants.load_rules(session))
        for ask in asks:
            assert after.decide(*ask) == before.decide(*ask)
            if created and extra.effect.value == "allow" and before.decide(*ask).allowed:
                assert granted.decide(*ask).allowed
        session.close()
        outer.rollback()
