"""`decide` and `explain` on a compiled policy: default deny, deny wins, conditions at request
time, and the indexed engine always agreeing with a scan of every rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from secure_maas.actions import Action
from secure_maas.policy.evaluate import Caller, ModelFacts, RequestFacts
from secure_maas.policy.index import CompiledPolicy
from secure_maas.policy.rules import Quota, Rule, Window

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
ALICE = Caller("alice", ("analyst",))
BOB = Caller("bob", ("auditor",))
DIGITS = ModelFacts("digits", 2, ("stable",), 2.5)
FACTS = RequestFacts(rows=10, now=NOW)
PREDICT = Action.MODEL_PREDICT


def policy(*rules: Rule) -> CompiledPolicy:
    return CompiledPolicy([r.with_id(i + 1) for i, r in enumerate(rules)], version=1)


def allow(subject: str, model: str = "*", *actions: Action, **conditions: object) -> Rule:
    return Rule("allow", subject, actions or (PREDICT,), model, **conditions)  # type: ignore[arg-type]


def deny(subject: str, model: str = "*", *actions: Action, **conditions: object) -> Rule:
    return Rule("deny", subject, actions or (PREDICT,), model, **conditions)  # type: ignore[arg-type]


def both(
    compiled: CompiledPolicy,
    who: Caller,
    action: Action,
    model: ModelFacts | None,
    facts: RequestFacts,
):  # type: ignore[no-untyped-def]
    decided = compiled.decide(who, action, model, facts)
    assert decided == compiled.decide_naive(who, action, model, facts)
    assert decided == compiled.explain(who, action, model, facts).decision
    return decided


def test_no_rule_means_deny() -> None:
    decision = both(policy(), ALICE, PREDICT, DIGITS, FACTS)
    assert not decision.allowed
    assert decision.rule_ids == ()
    assert decision.reason == "no rule allows model:predict on digits:2 for alice"


def test_a_role_rule_allows_and_names_itself() -> None:
    decision = both(policy(allow("role:analyst", "digits*")), ALICE, PREDICT, DIGITS, FACTS)
    assert decision.allowed and decision.rule_ids == (1,)
    assert decision.reason == "allowed by rule 1"
    assert not both(policy(allow("role:analyst", "digits*")), BOB, PREDICT, DIGITS, FACTS).allowed


@pytest.mark.parametrize("subject", ["*", "user:alice", "role:analyst"])
def test_any_matching_deny_beats_any_allow(subject: str) -> None:
    compiled = policy(
        allow("*"), allow("user:alice", "digits"), deny(subject, "dig*"), allow("role:analyst")
    )
    decision = both(compiled, ALICE, PREDICT, DIGITS, FACTS)
    assert not decision.allowed and decision.rule_ids == (3,)
    assert decision.reason == "denied by rule 3"


def test_rules_apply_to_their_actions_only() -> None:
    compiled = policy(allow("role:analyst", "digits", Action.MODEL_METADATA))
    assert both(compiled, ALICE, Action.MODEL_METADATA, DIGITS, FACTS).allowed
    assert not both(compiled, ALICE, PREDICT, DIGITS, FACTS).allowed


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        ("digits", True),
        ("digit", False),
        ("digits*", True),
        ("d?gits", True),
        ("[a-d]*", True),
        ("*its", True),
        ("Digits", False),
        ("wine*", False),
    ],
)
def test_model_names_and_globs(pattern: str, allowed: bool) -> None:
    assert both(policy(allow("*", pattern)), ALICE, PREDICT, DIGITS, FACTS).allowed is allowed


def test_version_and_label_are_checked_against_the_version_served() -> None:
    compiled = policy(allow("*", "digits", version=2), allow("*", "wine", label="stable"))
    assert both(compiled, ALICE, PREDICT, DIGITS, FACTS).allowed
    other = ModelFacts("digits", 3, (), 2.5)
    decision = both(compiled, ALICE, PREDICT, other, FACTS)
    assert not decision.allowed and decision.reason == "rule 1 does not apply: only version 2"
    assert both(compiled, ALICE, PREDICT, ModelFacts("wine", 1, ("stable",)), FACTS).allowed
    assert not both(compiled, ALICE, PREDICT, ModelFacts("wine", 2, ("canary",)), FACTS).allowed


def test_validity_window_is_inclusive_from_and_exclusive_until() -> None:
    compiled = policy(allow("*", valid_from=NOW, valid_until=NOW + timedelta(hours=1)))
    at = lambda t: both(compiled, ALICE, PREDICT, DIGITS, RequestFacts(1, t)).allowed  # noqa: E731
    assert at(NOW) and at(NOW + timedelta(minutes=59, seconds=59))
    assert not at(NOW - timedelta(seconds=1)) and not at(NOW + timedelta(hours=1))


def test_a_deny_outside_its_window_does_not_deny() -> None:
    compiled = policy(allow("*"), deny("*", valid_until=NOW))
    assert both(compiled, ALICE, PREDICT, DIGITS, FACTS).allowed


def test_max_rows_is_per_request() -> None:
    compiled = policy(allow("*", max_rows=10))
    assert both(compiled, ALICE, PREDICT, DIGITS, RequestFacts(10, NOW)).allowed
    decision = both(compiled, ALICE, PREDICT, DIGITS, RequestFacts(11, NOW))
    assert not decision.allowed
    assert decision.reason == "rule 1 does not apply: 11 rows is over max_rows 10"


def test_max_epsilon_refuses_larger_epsilon_and_models_without_a_guarantee() -> None:
    compiled = policy(allow("role:analyst", "*", max_epsilon=3))
    assert both(compiled, ALICE, PREDICT, ModelFacts("m", 1, (), 3.0), FACTS).allowed
    assert not both(compiled, ALICE, PREDICT, ModelFacts("m", 1, (), 3.01), FACTS).allowed
    decision = both(compiled, ALICE, PREDICT, ModelFacts("m", 1, (), None), FACTS)
    assert not decision.allowed and "no DP guarantee" in decision.reason


def test_actions_about_no_model_match_only_rules_about_any_model() -> None:
    compiled = policy(
        allow("role:auditor", "*", Action.AUDIT_READ), allow("user:alice", "x*", Action.AUDIT_READ)
    )
    assert both(compiled, BOB, Action.AUDIT_READ, None, FACTS).allowed
    assert not both(compiled, ALICE, Action.AUDIT_READ, None, FACTS).allowed


def test_quotas_of_every_allowing_rule_apply_merged() -> None:
    compiled = policy(
        allow("role:analyst", "digits*", quotas=(Quota(Window.MINUTE, 600),)),
        allow("user:alice", "digits", quotas=(Quota(Window.MINUTE, 100), Quota(Window.DAY, 5000))),
        allow("*", "digits", quotas=(Quota(Window.MINUTE, 50),), max_rows=1),
    )
    decision = both(compiled, ALICE, PREDICT, DIGITS, FACTS)
    assert decision.rule_ids == (1, 2)
    assert decision.quotas == (Quota(Window.MINUTE, 100), Quota(Window.DAY, 5000))


def test_explain_lists_every_rule_with_why() -> None:
    compiled = policy(
        allow("role:analyst", "digits*", max_epsilon=2),
        allow("role:auditor", "*", Action.AUDIT_READ),
        deny("user:bob"),
        allow("*", "wine"),
        allow("user:alice", "digits", Action.MODEL_PREDICT, max_rows=100),
    )
    explanation = compiled.explain(ALICE, PREDICT, DIGITS, FACTS)
    assert explanation.decision.allowed and explanation.decision.rule_ids == (5,)
    whys = [(c.rule.id, c.matched, c.why) for c in explanation.checks]
    assert whys == [
        (1, False, "model epsilon 2.5 is over max_epsilon 2"),
        (2, False, "subject role:auditor does not apply"),
        (3, False, "subject user:bob does not apply"),
        (4, False, "model wine does not match digits"),
        (5, True, "matches: allow"),
    ]


def test_cached_decisions_still_check_conditions_per_request() -> None:
    compiled = policy(allow("*", "digits", max_rows=5))
    assert compiled.decide(ALICE, PREDICT, DIGITS, RequestFacts(5, NOW)).allowed
    assert not compiled.decide(ALICE, PREDICT, DIGITS, RequestFacts(6, NOW)).allowed
    assert compiled.decide(ALICE, PREDICT, DIGITS, RequestFacts(1, NOW)).allowed


def test_roles_are_part_of_the_cached_key() -> None:
    compiled = policy(allow("role:analyst"))
    assert compiled.decide(Caller("alice", ("analyst",)), PREDICT, DIGITS, FACTS).allowed
    assert not compiled.decide(Caller("alice", ()), PREDICT, DIGITS, FACTS).allowed
