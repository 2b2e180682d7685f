"""Rules in the database: grant, revoke, list, load.

Each change bumps the `policy` counter in the caller's transaction. A rule is identified by its
effect, subject, model scope and actions (`Rule.key`, unique in the table); its conditions and
description are attributes of that identity. Granting a rule that exists with the same terms is
a no-op; granting one whose identity exists with other terms is refused, so a grant can never
silently loosen or tighten a rule someone else wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from secure_maas.actions import Action
from secure_maas.db.state import bump
from secure_maas.policy.errors import Conflict, NotFound
from secure_maas.policy.models import POLICY_SCOPE, AccessRule
from secure_maas.policy.rules import Effect, Quota, Rule
from secure_maas.timeutil import utcnow


def to_rule(row: AccessRule) -> Rule:
    return Rule(
        effect=Effect(row.effect),
        subject=row.subject,
        actions=tuple(Action(a) for a in row.actions.split(",")),
        model=row.model,
        version=row.model_version,
        label=row.model_label,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        max_rows=row.max_rows,
        max_epsilon=row.max_epsilon,
        quotas=tuple(Quota.from_mapping(q) for q in row.quotas or ()),
        finite_inputs=bool(row.finite_inputs),
        description=row.description,
        id=row.id,
    )


def _columns(rule: Rule) -> dict[str, Any]:
    return {
        "rule_key": rule.key,
        "effect": rule.effect.value,
        "subject": rule.subject,
        "model": rule.model,
        "model_version": rule.version,
        "model_label": rule.label,
        "actions": ",".join(a.value for a in rule.actions),
        "valid_from": rule.valid_from,
        "valid_until": rule.valid_until,
        "max_rows": rule.max_rows,
        "max_epsilon": rule.max_epsilon,
        "quotas": [q.to_mapping() for q in rule.quotas] or None,
        "finite_inputs": rule.finite_inputs,
        "description": rule.description,
    }


def load_rules(session: Session) -> list[Rule]:
    """Every rule, in id order."""
    return [to_rule(row) for row in session.scalars(sa.select(AccessRule).order_by(AccessRule.id))]


def _row_by_key(session: Session, key: str) -> AccessRule | None:
    return session.scalars(sa.select(AccessRule).where(AccessRule.rule_key == key)).one_or_none()


def grant(
    session: Session, rule: Rule, *, actor: str, now: datetime | None = None
) -> tuple[Rule, bool]:
    """Store `rule`; returns it with its id and whether it was new."""
    existing = _row_by_key(session, rule.key)
    if existing is not None:
        stored = to_rule(existing)
        if stored == rule and stored.description == rule.description:
            return stored, False
        raise Conflict(
            f"rule {existing.id} already covers {stored.summary()}; "
            f"revoke it first (`secure-maas policy revoke {existing.id}`)"
        )
    row = AccessRule(**_columns(rule), created_at=now or utcnow(), created_by=actor)
    session.add(row)
    session.flush()
    bump(session, POLICY_SCOPE)
    return rule.with_id(row.id), True


def grant_many(session: Session, rules: Iterable[Rule], *, actor: str) -> int:
    """Store many new rules with one insert and one counter bump (loading large policies).

    Rules whose identity is already stored are refused, as `grant` refuses a conflict; returns
    how many were stored.
    """
    batch = list(rules)
    keys = [rule.key for rule in batch]
    if len(set(keys)) != len(keys):
        raise Conflict("the same rule is given twice")
    taken = set(session.scalars(sa.select(AccessRule.rule_key)))
    clash = next((rule for rule in batch if rule.key in taken), None)
    if clash is not None:
        raise Conflict(f"a rule already covers {clash.summary()}")
    if not batch:
        return 0
    now = utcnow()
    session.execute(
        sa.insert(AccessRule),
        [{**_columns(rule), "created_at": now, "created_by": actor} for rule in batch],
    )
    bump(session, POLICY_SCOPE)
    return len(batch)


def update(session: Session, rule: Rule) -> Rule:
    """Replace the conditions and description of the stored rule with `rule`'s identity."""
    row = _row_by_key(session, rule.key)
    if row is None:
        raise NotFound(f"no rule {rule.summary()}")
    for name, value in _columns(rule).items():
        setattr(row, name, value)
    session.flush()
    bump(session, POLICY_SCOPE)
    return rule.with_id(row.id)


def revoke(session: Session, rule_ids: Iterable[int]) -> list[Rule]:
    """Delete the rules `rule_ids` (all or none); returns what was removed."""
    removed = []
    for rule_id in sorted(set(rule_ids)):
        row = session.get(AccessRule, rule_id)
        if row is None:
            raise NotFound(f"no rule with id {rule_id} (see `secure-maas policy list`)")
        removed.append(to_rule(row))
        session.delete(row)
    if removed:
        session.flush()
        bump(session, POLICY_SCOPE)
    return removed


def revoke_like(session: Session, pattern: Rule) -> Rule:
    """Delete the rule with `pattern`'s identity (effect, subject, model scope, actions).

    This undoes exactly what `grant(pattern)` added, and nothing else: a rule with the same
    scope but other actions is left alone. Raises `NotFound` naming those rules, if any.
    """
    row = _row_by_key(session, pattern.key)
    if row is None:
        near = session.scalars(
            sa.select(AccessRule.id).where(
                AccessRule.effect == pattern.effect.value,
                AccessRule.subject == pattern.subject,
                AccessRule.model == pattern.model,
            )
        ).all()
        hint = (
            f"; rules {', '.join(map(str, near))} have that scope with other actions"
            if near
            else ""
        )
        raise NotFound(f"no rule {pattern.summary()}{hint}")
    rule = to_rule(row)
    session.delete(row)
    session.flush()
    bump(session, POLICY_SCOPE)
    return rule
