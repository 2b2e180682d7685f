"""Issuing and revoking this service's tokens.

A token is an EdDSA-signed JWT from the keyring's active JWT key, with `kid` in its header and
`iss`, `aud`, `sub`, `iat`, `nbf`, `exp` and `jti` claims. `--role` narrows a token: its `roles`
claim lists roles the principal holds at issue time, and a verifier grants only those of them
the principal still holds; a token without the claim carries all of the principal's roles, as
they are at each request. Only the `jti` and facts about the token are stored, never the token.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import jwt
import sqlalchemy as sa
from sqlalchemy.orm import Session

from secure_maas.auth.models import TOKENS_SCOPE, IssuedToken
from secure_maas.config import Settings
from secure_maas.db.state import bump
from secure_maas.errors import SecureMaasError
from secure_maas.keys import KeyKind, Keyring
from secure_maas.policy.directory import get_principal
from secure_maas.policy.errors import InvalidRule, NotFound
from secure_maas.policy.rules import check_local_name, check_role_name
from secure_maas.timeutil import format_duration, utcnow

ALGORITHM = "EdDSA"
ROLES_CLAIM = "roles"
#: The clock skew a verifier forgives at most (`exp`, `iat`, `nbf`): a token is accepted until
#: `exp` plus this, so revocation and `token list --active` must cover that long too.
MAX_LEEWAY = timedelta(seconds=30)


class TokenError(SecureMaasError):
    """A token cannot be issued or revoked as asked."""


@dataclass(frozen=True)
class Issued:
    """A freshly signed token and what was recorded about it. `token` is never printed in reprs."""

    token: str = field(repr=False)
    jti: str
    subject: str
    roles: tuple[str, ...] | None
    key_id: str
    issued_at: datetime
    expires_at: datetime


def issue(
    session: Session,
    keyring: Keyring,
    settings: Settings,
    *,
    subject: str,
    ttl: timedelta,
    roles: Iterable[str] | None = None,
    actor: str,
    now: datetime | None = None,
) -> Issued:
    """Sign a token for the enabled local principal `subject` and record its `jti` (an
    external subject's tokens come from its identity provider, never from here).

    `ttl` must lie within 1 s and `settings.max_token_ttl`; `roles`, when given, must be roles
    `subject` holds (the token then carries only those).
    """
    if not timedelta(seconds=1) <= ttl <= settings.max_token_ttl:
        raise TokenError(
            f"token lifetime {format_duration(ttl)} is outside 1s.."
            f"{format_duration(settings.max_token_ttl)} (SECURE_MAAS_MAX_TOKEN_TTL)"
        )
    try:
        check_local_name(subject)
    except InvalidRule as exc:
        raise TokenError(str(exc)) from None
    principal = get_principal(session, subject)
    if principal.disabled:
        raise TokenError(f"principal {subject!r} is disabled: enable it first")
    narrowed: tuple[str, ...] | None = None
    if roles is not None:
        narrowed = tuple(sorted({check_role_name(r) for r in roles}))
        missing = [r for r in narrowed if r not in principal.role_names]
        if missing:
            raise TokenError(f"principal {subject!r} does not hold role(s) {', '.join(missing)}")
    key = keyring.active(KeyKind.JWT)
    issued_at = (now or utcnow()).replace(microsecond=0)
    expires_at = issued_at + ttl
    # Hex, not base64url: one jti in 64 of those began with "-", and `token revoke JTI`
    # then read it as an option.
    jti = secrets.token_hex(16)
    claims: dict[str, object] = {
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": subject,
        "iat": int(issued_at.timestamp()),
        "nbf": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
        "jti": jti,
    }
    if narrowed is not None:
        claims[ROLES_CLAIM] = list(narrowed)
    token = jwt.encode(
        claims,
        keyring.private_key(key.id).pem(),
        algorithm=ALGORITHM,
        headers={"kid": key.id, "typ": "JWT"},
    )
    session.add(
        IssuedToken(
            jti=jti,
            subject=subject,
            roles=None if narrowed is None else ",".join(narrowed),
            key_id=key.id,
            issued_at=issued_at,
            expires_at=expires_at,
            issued_by=actor,
        )
    )
    session.flush()
    return Issued(token, jti, subject, narrowed, key.id, issued_at, expires_at)


def revoke(
    session: Session, jti: str, *, actor: str, now: datetime | None = None
) -> tuple[IssuedToken, bool]:
    """Revoke the token `jti`; returns its record and whether it was not revoked before."""
    row = session.scalars(sa.select(IssuedToken).where(IssuedToken.jti == jti)).one_or_none()
    if row is None:
        raise NotFound(f"no token with jti {jti!r} was issued here (see `secure-maas token list`)")
    if row.revoked_at is not None:
        return row, False
    row.revoked_at = now or utcnow()
    row.revoked_by = actor
    session.flush()
    bump(session, TOKENS_SCOPE)
    return row, True


def could_verify(moment: datetime) -> sa.ColumnElement[bool]:
    """Rows of tokens that a verifier may still accept at `moment`: unrevoked, and not past
    `exp` plus the leeway (`Verifier` refuses only once `moment > exp + leeway`)."""
    return sa.and_(IssuedToken.revoked_at.is_(None), IssuedToken.expires_at >= moment - MAX_LEEWAY)


def revoke_subject(
    session: Session, subject: str, *, actor: str, now: datetime | None = None
) -> list[IssuedToken]:
    """Revoke every token of `subject` that could still verify (expired ones still inside the
    verifier's leeway included); returns those revoked."""
    moment = now or utcnow()
    rows = list(
        session.scalars(
            sa.select(IssuedToken)
            .where(IssuedToken.subject == subject, could_verify(moment))
            .order_by(IssuedToken.id)
        )
    )
    for row in rows:
        row.revoked_at = moment
        row.revoked_by = actor
    if rows:
        session.flush()
        bump(session, TOKENS_SCOPE)
    return rows


def list_tokens(
    session: Session,
    *,
    active: bool = False,
    subject: str | None = None,
    now: datetime | None = None,
) -> list[IssuedToken]:
    """Issued tokens, newest first; `active` keeps those that could still verify (what
    `revoke_subject` would revoke)."""
    query = sa.select(IssuedToken).order_by(IssuedToken.id.desc())
    if subject is not None:
        query = query.where(IssuedToken.subject == subject)
    if active:
        query = query.where(could_verify(now or utcnow()))
    return list(session.scalars(query))


def status(row: IssuedToken, now: datetime) -> str:
    """`revoked`; `active` before `exp`; `leeway` past `exp` but still accepted (clock skew);
    `expired` once past `exp` plus the leeway."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at > now:
        return "active"
    return "leeway" if row.expires_at >= now - MAX_LEEWAY else "expired"


def revoked_ids(session: Session) -> frozenset[str]:
    """The `jti` of every revoked token.

    Expired ones are included on purpose: the set stays correct whatever clock a caller
    verifies with, and it holds one short string per revocation ever made.
    """
    return frozenset(
        session.scalars(sa.select(IssuedToken.jti).where(IssuedToken.revoked_at.is_not(None)))
    )
