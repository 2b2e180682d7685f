"""Principals, roles and links in the database, and the snapshot of them token checks read.

Every change bumps the `principals` counter in the same transaction, so verifiers (which keep a
`Directory` snapshot) see a disabled principal, a removed role or a removed link within a
second. Functions take the caller's session and never commit: the CLI records the audit event in
the same transaction.

An external subject (`ext:<alias>:<sub>`) is its own principal, never a local one; it may have a
row (for roles, or to disable it) and an admin may link it to one local principal, whose
identity it then takes (`Directory.resolve`, the one place that rule is written).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from secure_maas.db.state import bump
from secure_maas.policy.errors import Conflict, NotFound
from secure_maas.policy.models import PRINCIPALS_SCOPE, PrincipalLink, PrincipalRow, Role
from secure_maas.policy.rules import (
    check_description,
    check_external_name,
    check_local_name,
    check_principal_name,
    check_role_name,
    is_external,
)
from secure_maas.timeutil import utcnow


@dataclass(frozen=True, slots=True)
class PrincipalState:
    """What a token check needs to know of a principal."""

    disabled: bool
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Identity:
    """Whom a principal name speaks for.

    `subject` is the name decisions, quotas and the audit log use: the name itself, or the local
    principal an external name is linked to. `names` are every name rules may call it by (the
    subject first); `roles` those of every row involved; `disabled` is true when any of those
    rows is disabled (or a link points at a principal that is gone): fail closed.
    """

    subject: str
    names: tuple[str, ...]
    roles: tuple[str, ...]
    disabled: bool
    linked_to: str | None = None


@dataclass(frozen=True)
class Directory:
    """Every principal by name, and every link, as of one read; immutable, shared by threads.

    `links` maps an external subject to the local principal it is linked to.
    """

    principals: Mapping[str, PrincipalState]
    links: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> PrincipalState | None:
        return self.principals.get(name)

    def resolve(self, name: str) -> Identity | None:
        """The identity of `name`; None for a local name with no row (an unknown principal).

        An external name always resolves: to itself with the roles of its row if it has one,
        or, once linked, to the local principal (with both rows' roles, rules for both names).
        """
        own = self.principals.get(name)
        if not is_external(name):
            if own is None:
                return None
            return Identity(name, (name,), own.roles, own.disabled)
        roles = set(own.roles if own is not None else ())
        disabled = own is not None and own.disabled
        local = self.links.get(name)
        if local is None:
            return Identity(name, (name,), tuple(sorted(roles)), disabled)
        target = self.principals.get(local)
        disabled = disabled or target is None or target.disabled
        roles.update(target.roles if target is not None else ())
        return Identity(local, (local, name), tuple(sorted(roles)), disabled, local)


def load_directory(session: Session) -> Directory:
    """Read every principal with its roles, and every link, in three queries."""
    states: dict[str, tuple[bool, list[str]]] = {
        name: (bool(disabled), [])
        for name, disabled in session.execute(sa.select(PrincipalRow.name, PrincipalRow.disabled))
    }
    memberships = session.execute(
        sa.select(PrincipalRow.name, Role.name).join(PrincipalRow.roles).order_by(Role.name)
    )
    for principal, role in memberships:
        states[principal][1].append(role)
    links = session.execute(
        sa.select(PrincipalLink.external_subject, PrincipalRow.name).join(PrincipalLink.principal)
    )
    principals = {
        name: PrincipalState(disabled, tuple(roles)) for name, (disabled, roles) in states.items()
    }
    return Directory(principals, {external: local for external, local in links})


def list_principals(session: Session) -> list[PrincipalRow]:
    query = (
        sa.select(PrincipalRow)
        .options(selectinload(PrincipalRow.roles))
        .order_by(PrincipalRow.name)
    )
    return list(session.scalars(query))


def list_roles(session: Session) -> list[Role]:
    return list(session.scalars(sa.select(Role).order_by(Role.name)))


def find_principal(session: Session, name: str) -> PrincipalRow | None:
    query = sa.select(PrincipalRow).options(selectinload(PrincipalRow.roles))
    return session.scalars(query.where(PrincipalRow.name == name)).one_or_none()


def get_principal(session: Session, name: str) -> PrincipalRow:
    principal = find_principal(session, name)
    if principal is None:
        raise NotFound(f"no principal {name!r}: add it with `secure-maas principal add {name}`")
    return principal


def find_role(session: Session, name: str) -> Role | None:
    return session.scalars(sa.select(Role).where(Role.name == name)).one_or_none()


def add_principal(
    session: Session,
    name: str,
    *,
    actor: str,
    roles: Iterable[str] = (),
    disabled: bool = False,
    description: str | None = None,
    now: datetime | None = None,
) -> PrincipalRow:
    """Create a principal; its roles are created too when they do not exist yet."""
    check_principal_name(name)
    if find_principal(session, name) is not None:
        raise Conflict(f"principal {name!r} already exists")
    moment = now or utcnow()
    principal = PrincipalRow(
        name=name,
        disabled=disabled,
        description=check_description(description),
        created_at=moment,
        created_by=actor,
        updated_at=moment,
    )
    principal.roles = [ensure_role(session, role) for role in sorted(set(roles))]
    session.add(principal)
    session.flush()
    bump(session, PRINCIPALS_SCOPE)
    return principal


def ensure_role(session: Session, name: str, description: str | None = None) -> Role:
    """The role `name`, created if missing (an existing role's description is kept)."""
    check_role_name(name)
    role = find_role(session, name)
    if role is None:
        role = Role(name=name, description=check_description(description))
        session.add(role)
        session.flush()
        bump(session, PRINCIPALS_SCOPE)
    return role


def set_disabled(
    session: Session, name: str, disabled: bool, *, now: datetime | None = None
) -> tuple[PrincipalRow, bool]:
    """Disable or enable `name`; returns the principal and whether anything changed."""
    principal = get_principal(session, name)
    if principal.disabled == disabled:
        return principal, False
    principal.disabled = disabled
    principal.updated_at = now or utcnow()
    session.flush()
    bump(session, PRINCIPALS_SCOPE)
    return principal, True


def grant_role(
    session: Session, name: str, role: str, *, now: datetime | None = None
) -> tuple[PrincipalRow, bool]:
    """Give `name` the role `role` (created if missing); returns whether anything changed."""
    principal = get_principal(session, name)
    if role in principal.role_names:
        return principal, False
    principal.roles.append(ensure_role(session, role))
    principal.updated_at = now or utcnow()
    session.flush()
    bump(session, PRINCIPALS_SCOPE)
    return principal, True


def take_role(
    session: Session, name: str, role: str, *, now: datetime | None = None
) -> tuple[PrincipalRow, bool]:
    """Remove `role` from `name`; returns whether anything changed."""
    principal = get_principal(session, name)
    kept = [r for r in principal.roles if r.name != role]
    if len(kept) == len(principal.roles):
        return principal, False
    principal.roles = kept
    principal.updated_at = now or utcnow()
    session.flush()
    bump(session, PRINCIPALS_SCOPE)
    return principal, True


def list_links(session: Session, local: str | None = None) -> list[PrincipalLink]:
    """Links (of the principal `local`, if given), by external subject."""
    query = sa.select(PrincipalLink).join(PrincipalLink.principal)
    if local is not None:
        query = query.where(PrincipalRow.name == local)
    return list(session.scalars(query.order_by(PrincipalLink.external_subject)))


def link(
    session: Session, local: str, external: str, *, actor: str, now: datetime | None = None
) -> bool:
    """Let the external subject `external` speak for the local principal `local`.

    Returns whether anything changed; an external subject linked to another principal is a
    `Conflict` (unlink it first): a link is never moved silently.
    """
    check_local_name(local)
    check_external_name(external)
    principal = get_principal(session, local)
    existing = session.scalars(
        sa.select(PrincipalLink).where(PrincipalLink.external_subject == external)
    ).one_or_none()
    if existing is not None:
        if existing.principal_id == principal.id:
            return False
        raise Conflict(
            f"{external} is linked to {existing.principal.name}: "
            f"unlink it first (`secure-maas principal unlink`)"
        )
    session.add(
        PrincipalLink(
            external_subject=external,
            principal_id=principal.id,
            created_at=now or utcnow(),
            created_by=actor,
        )
    )
    session.flush()
    bump(session, PRINCIPALS_SCOPE)
    return True


def unlink(session: Session, external: str) -> str:
    """Remove the link of `external`; returns the local principal it spoke for."""
    check_external_name(external)
    existing = session.scalars(
        sa.select(PrincipalLink).where(PrincipalLink.external_subject == external)
    ).one_or_none()
    if existing is None:
        raise NotFound(f"{external} is not linked to any principal")
    local = existing.principal.name
    session.delete(existing)
    session.flush()
    bump(session, PRINCIPALS_SCOPE)
    return local
