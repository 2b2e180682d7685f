"""Making the database match `policies/` (apply), comparing them (diff), and writing it back.

`apply` is idempotent: it compares each role, principal and rule of the files with the
database and changes only what differs, so a second run reports no change. Without `prune`,
what the database holds and the files do not is listed and kept; with it, removed. Rules are
matched by identity (effect, subject, model scope, actions); a rule whose conditions or
description changed is updated in place and keeps its id. `export` writes a file that `apply`
takes unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session

from secure_maas.db.state import bump
from secure_maas.policy import directory, grants
from secure_maas.policy.files import SCHEMA_VERSION, PolicyDocument, PrincipalSpec, RoleSpec, load
from secure_maas.policy.models import PRINCIPALS_SCOPE, PrincipalRow, Role
from secure_maas.policy.rules import Rule
from secure_maas.timeutil import isoformat, utcnow


@dataclass(frozen=True)
class Change:
    """One difference: `op` is `+` (add), `~` (update) or `-` (remove)."""

    op: str
    kind: str
    name: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.op} {self.kind} {self.name}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass
class PolicyDiff:
    """What apply changed (or would change), and what it kept because `prune` was off."""

    changes: list[Change] = field(default_factory=list)
    kept: list[Change] = field(default_factory=list)
    applied: bool = False

    @property
    def empty(self) -> bool:
        return not self.changes

    def lines(self) -> list[str]:
        return [str(c) for c in self.changes] + [
            f"  (kept, not in the files; --prune removes it) {c}" for c in self.kept
        ]

    def summary(self) -> str:
        """`added 2, changed 1, removed 0` once applied; `dry run: 2 to add, ...` before."""
        ops = [sum(1 for c in self.changes if c.op == op) for op in "+~-"]
        if self.applied:
            return f"added {ops[0]}, changed {ops[1]}, removed {ops[2]}"
        return f"dry run, nothing changed: {ops[0]} to add, {ops[1]} to change, {ops[2]} to remove"


def _join(values: Iterable[str]) -> str:
    return ",".join(values) or "-"


def _was(before: object, after: object) -> str:
    return f"{before if before is not None else '-'} -> {after if after is not None else '-'}"


class _Plan:
    """The changes for one document against one session's view of the database."""

    def __init__(
        self, session: Session, document: PolicyDocument, *, prune: bool, actor: str, now: datetime
    ) -> None:
        self.session = session
        self.document = document
        self.prune = prune
        self.actor = actor
        self.now = now
        self.diff = PolicyDiff()
        self.steps: list[Callable[[], object]] = []
        self.roles = {r.name: r for r in directory.list_roles(session)}
        self.principals = {p.name: p for p in directory.list_principals(session)}
        self.rules = {r.key: r for r in grants.load_rules(session)}

    def note(self, change: Change, step: Callable[[], object]) -> None:
        self.diff.changes.append(change)
        self.steps.append(step)

    def surplus(self, change: Change, step: Callable[[], object]) -> None:
        if self.prune:
            self.note(change, step)
        else:
            self.diff.kept.append(change)

    def build(self) -> None:
        # Order matters: roles before the principals holding them, removals last.
        for spec in sorted(self.document.roles.values(), key=lambda r: r.name):
            self._role(spec)
        for principal in sorted(self.document.principals.values(), key=lambda p: p.name):
            self._principal(principal)
        for rule, _place in self.document.rules.values():
            self._rule(rule)
        s = self.session
        for key, rule in self.rules.items():
            if key not in self.document.rules:
                change = Change("-", "rule", f"{rule.id} {rule.summary()}")
                self.surplus(change, partial(grants.revoke, s, [rule.id]))
        for name, row in sorted(self.principals.items()):
            if name not in self.document.principals:
                self.surplus(Change("-", "principal", name), partial(_delete, s, row))
        for name, role_row in sorted(self.roles.items()):
            if name not in self.document.roles:
                self.surplus(Change("-", "role", name), partial(_delete, s, role_row))

    def _role(self, spec: RoleSpec) -> None:
        role = self.roles.get(spec.name)
        if role is None:
            step: Callable[[], object] = partial(
                directory.ensure_role, self.session, spec.name, spec.description
            )
            self.note(Change("+", "role", spec.name), step)
        elif role.description != spec.description:
            detail = f"description {_was(role.description, spec.description)}"
            step = partial(_set_description, self.session, role, spec.description)
            self.note(Change("~", "role", spec.name, detail), step)

    def _principal(self, spec: PrincipalSpec) -> None:
        s, name = self.session, spec.name
        principal = self.principals.get(name)
        if principal is None:
            detail = f"roles {_join(spec.roles)}" + (", disabled" if spec.disabled else "")
            step: Callable[[], object] = partial(
                directory.add_principal,
                s,
                name,
                actor=self.actor,
                roles=spec.roles,
                disabled=spec.disabled,
                description=spec.description,
                now=self.now,
            )
            self.note(Change("+", "principal", name, detail), step)
            return
        if principal.disabled != spec.disabled:
            detail = f"disabled {_was(principal.disabled, spec.disabled)}"
            step = partial(directory.set_disabled, s, name, spec.disabled, now=self.now)
            self.note(Change("~", "principal", name, detail), step)
        have = principal.role_names
        if have != spec.roles:
            detail = f"roles {_was(_join(have), _join(spec.roles))}"
            step = partial(_set_roles, s, name, have, spec.roles, self.now)
            self.note(Change("~", "principal", name, detail), step)
        if principal.description != spec.description:
            detail = f"description {_was(principal.description, spec.description)}"
            step = partial(_set_description, s, principal, spec.description)
            self.note(Change("~", "principal", name, detail), step)

    def _rule(self, rule: Rule) -> None:
        stored = self.rules.get(rule.key)
        if stored is None:
            step: Callable[[], object] = partial(
                grants.grant, self.session, rule, actor=self.actor, now=self.now
            )
            self.note(Change("+", "rule", rule.summary()), step)
        elif stored != rule or stored.description != rule.description:
            step = partial(grants.update, self.session, rule)
            self.note(Change("~", "rule", str(stored.id), _rule_change(stored, rule)), step)


def _rule_change(before: Rule, after: Rule) -> str:
    old, new = set(before.conditions()), set(after.conditions())
    parts = [f"-{c}" for c in before.conditions() if c not in new]
    parts += [f"+{c}" for c in after.conditions() if c not in old]
    if before.description != after.description:
        parts.append(f"description {_was(before.description, after.description)}")
    return f"{before.summary()}: {' '.join(parts)}"


def _set_roles(
    session: Session, name: str, have: tuple[str, ...], want: tuple[str, ...], now: datetime
) -> None:
    for role in want:
        if role not in have:
            directory.grant_role(session, name, role, now=now)
    for role in have:
        if role not in want:
            directory.take_role(session, name, role, now=now)


def _set_description(session: Session, row: Role | PrincipalRow, description: str | None) -> None:
    row.description = description  # descriptions decide nothing: no counter to bump
    session.flush()


def _delete(session: Session, row: Role | PrincipalRow) -> None:
    session.delete(row)
    session.flush()
    bump(session, PRINCIPALS_SCOPE)


def plan(
    session: Session,
    document: PolicyDocument,
    *,
    prune: bool,
    actor: str = "policy-apply",
    now: datetime | None = None,
) -> tuple[PolicyDiff, list[Callable[[], object]]]:
    built = _Plan(session, document, prune=prune, actor=actor, now=now or utcnow())
    built.build()
    return built.diff, built.steps


def apply(
    session: Session,
    paths: Iterable[Path],
    *,
    dry_run: bool = False,
    prune: bool = False,
    actor: str = "policy-apply",
    now: datetime | None = None,
) -> PolicyDiff:
    """Make the database match the files under `paths`; return what changed (or would).

    A malformed file raises `PolicyFileError` before the database is read. With `dry_run`,
    nothing is written. The caller's transaction makes the whole apply one change.
    """
    document = load(paths)
    changes, steps = plan(session, document, prune=prune, actor=actor, now=now)
    if not dry_run:
        for step in steps:
            step()
        changes.applied = True
    return changes


def diff(session: Session, paths: Iterable[Path]) -> PolicyDiff:
    """Every difference between the files and the database, in both directions."""
    return plan(session, load(paths), prune=True)[0]


def export(session: Session) -> str:
    """The database's roles, principals and rules as one policy file that `apply` accepts."""
    roles = {
        role.name: {"description": role.description} if role.description else {}
        for role in directory.list_roles(session)
    }
    principals: dict[str, dict[str, Any]] = {}
    for principal in directory.list_principals(session):
        body: dict[str, Any] = {}
        if principal.role_names:
            body["roles"] = list(principal.role_names)
        if principal.disabled:
            body["disabled"] = True
        if principal.description:
            body["description"] = principal.description
        principals[principal.name] = body
    rules = [rule_mapping(rule) for rule in grants.load_rules(session)]
    document = {"version": SCHEMA_VERSION, "roles": roles, "principals": principals, "rules": rules}
    header = "# secure-maas policy export; `secure-maas policy apply` takes this file unchanged.\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def rule_mapping(rule: Rule) -> dict[str, Any]:
    """A rule as a policy file writes it (only the fields that are set)."""
    data: dict[str, Any] = {
        "effect": rule.effect.value,
        "subject": rule.subject,
        "model": rule.model,
    }
    if rule.version is not None:
        data["version"] = rule.version
    if rule.label is not None:
        data["label"] = rule.label
    data["actions"] = [a.value for a in rule.actions]
    if rule.valid_from is not None:
        data["valid_from"] = isoformat(rule.valid_from)
    if rule.valid_until is not None:
        data["valid_until"] = isoformat(rule.valid_until)
    if rule.max_rows is not None:
        data["max_rows"] = rule.max_rows
    if rule.max_epsilon is not None:
        data["max_epsilon"] = rule.max_epsilon
    if rule.quotas:
        quotas = [q.to_mapping() for q in rule.quotas]
        data["quota"] = quotas[0] if len(quotas) == 1 else quotas
    if rule.finite_inputs:
        data["finite_inputs"] = True
    if rule.description:
        data["description"] = rule.description
    return data
