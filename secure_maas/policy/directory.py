"""Principals and roles in the database, and the snapshot of them that token checks read.

Every change bumps the `principals` counter in the same transaction, so verifiers (which keep a
`Directory` snapshot) see a disabled principal or a removed role within a second. Functions take
the caller's session and never commit: the CLI records the audit event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from secure_maas.db.state import bump
from secure_maas.policy.errors import Conflict, NotFound
from secure_maas.policy.models import PRINCIPALS_SCOPE, Principal, Role
from secure_maas.policy.rules import check_description, check_principal_name, check_role_name
from secure_maas.timeutil import utcnow


@dataclass(frozen=True, slots=True)
class PrincipalState:
    """What a token check needs to know of a principal."""

    disabled: bool
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Directory:
    """Every principal by name, as of one read; immutable, shared between threads."""

    principals: Mapping[str, PrincipalState]

    def get(self, name: str) -> PrincipalState | None:
        return self.principals.get(name)


def load_directory(session: Session) -> Directory:
    """Read every principal with its roles in two queries."""
    states: dict[str, tuple[bool, list[str]]] = {
        name: (bool(disabled), [])
        for name, disabled in session.execute(sa.select(Principal.name, Principal.disabled))
    }
    memberships = session.execute(
        sa.select(Principal.name, Role.name).join(Principal.roles).order_by(Role.name)
    )
    for principal, role in memberships:
        states[principal][1].append(role)
    return Directory(
        {name: PrincipalState(disabled, tuple(roles)) for name, (disabled, roles) in states.items()}
    )


def list_principals(session: Session) -> list[Principal]:
    query = sa.select(Principal).options(selectinload(Principal.roles)).order_by(Principal.name)
    return list(session.scalars(query))


def list_roles(session: Session) -> list[Role]:
    return list(session.scalars(sa.select(Role).order_by(Role.name)))


def find_principal(session: Session, name: str) -> Principal | None:
    query = sa.select(Principal).options(selectinload(Principal.roles))
    return session.scalars(query.where(Principal.name == name)).one_or_none()


def get_principal(session: Session, name: str) -> Principal:
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
) -> Principal:
    """Create a principal; its roles are created too when they do not exist yet."""
    check_principal_name(name)
    if find_principal(session, name) is not None:
        raise Conflict(f"principal {name!r} already exists")
    moment = now or utcnow()
    principal = Principal(
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
) -> tuple[Principal, bool]:
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
) -> tuple[Principal, bool]:
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
) -> tuple[Principal, bool]:
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
