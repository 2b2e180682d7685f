"""Console sessions in the database, and their CSRF tokens; no Flask here.

A session id is 32 random bytes (`secrets.token_urlsafe`), given to the browser once, in its
cookie; the database keeps only its SHA-256, so reading the table yields no usable cookie.
The row holds what the verifier made of the pasted token (subject, roles, `jti`, issuer,
expiry), never the token. `SessionStore.load` gives back the principal of a live session and
ends (deletes) one that is past its token's expiry or idle for too long; the caller then
checks the principal again against revocations and the directory (`Verifier.recheck`) and
calls `end` when that fails, so a revoked token or a disabled principal ends the session at
its next request.

The CSRF token of a session is derived from its id (HMAC-SHA256 of a fixed label keyed with
the id): only the holder of the cookie can know it, nothing more is stored, and it is compared
in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.auth.principal import Principal
from secure_maas.console.models import ConsoleSession
from secure_maas.db.session import session_factory, session_scope

#: What a session id the console made looks like (token_urlsafe(32): 43 characters).
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
_CSRF_LABEL = b"secure-maas console csrf v1"
#: `last_seen_at` is written at most this often (a write per page view buys nothing), and at
#: most a tenth of the idle timeout, so a session in use never looks idle.
TOUCH_EVERY = timedelta(seconds=60)


class SessionEnded(Exception):
    """No live session: `reason` says why (for the audit log), `code` is its reason code."""

    def __init__(self, reason: str, code: str = "no_session") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class LiveSession:
    """A session found and not expired: its row id and the principal it was signed in as."""

    row_id: int
    principal: Principal
    expires_at: datetime


def id_hash(session_id: str) -> str:
    """The SHA-256 hex digest of a session id: what the database keeps of it."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def csrf_token(session_id: str) -> str:
    """The CSRF token of the session `session_id` (what its forms carry)."""
    return hmac.new(session_id.encode("ascii"), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_matches(session_id: str, given: str | None) -> bool:
    """Whether `given` is the session's CSRF token (constant-time; None or junk is False)."""
    if not given or not given.isascii():
        return False
    return hmac.compare_digest(csrf_token(session_id).encode("ascii"), given.encode("ascii"))


def well_formed(session_id: str | None) -> bool:
    """Whether a cookie value could be a session id at all (anything else is not looked up)."""
    return session_id is not None and _SESSION_ID.fullmatch(session_id) is not None


def _names(values: tuple[str, ...]) -> str:
    return ",".join(values)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


class SessionStore:
    """The console's sessions in `engine`'s database, ending after `idle_timeout` unused."""

    def __init__(self, engine: Engine, *, idle_timeout: timedelta) -> None:
        self._factory = session_factory(engine)
        self._idle = idle_timeout
        self._touch = min(TOUCH_EVERY, idle_timeout / 10)

    def create(self, principal: Principal, now: datetime) -> str:
        """A new session for `principal`; returns its id (for the cookie; not kept here)."""
        session_id = secrets.token_urlsafe(32)
        row = ConsoleSession(
            id_hash=id_hash(session_id),
            subject=principal.subject,
            roles=_names(principal.roles),
            token_id=principal.token_id,
            issuer=principal.issuer,
            external=principal.external,
            external_subject=principal.external_subject,
            claim_roles=_names(principal.claim_roles),
            created_at=now,
            last_seen_at=now,
            expires_at=principal.expires_at,
        )
        with session_scope(self._factory) as session:
            session.add(row)
            self._sweep(session, now)
        return session_id

    def load(self, session_id: str | None, now: datetime) -> LiveSession:
        """The live session `session_id` names, or `SessionEnded` (an ended one is deleted)."""
        if session_id is None:
            raise SessionEnded("no console session", "no_session")
        if not well_formed(session_id):
            raise SessionEnded("malformed console session cookie", "bad_session")
        ended: SessionEnded | None = None
        with session_scope(self._factory) as session:
            row = session.execute(
                sa.select(ConsoleSession).where(ConsoleSession.id_hash == id_hash(session_id))
            ).scalar_one_or_none()
            if row is None:
                raise SessionEnded("unknown console session", "bad_session")
            if now >= row.expires_at:
                ended = SessionEnded("console session ended: its token expired", "expired")
            elif now - row.last_seen_at >= self._idle:
                ended = SessionEnded("console session ended: idle too long", "idle")
            if ended is not None:
                session.delete(row)  # committed as the scope ends, before the refusal
            else:
                if now - row.last_seen_at >= self._touch:
                    row.last_seen_at = now
                live = LiveSession(row.id, self._principal(row), row.expires_at)
        if ended is not None:
            raise ended
        return live

    @staticmethod
    def _principal(row: ConsoleSession) -> Principal:
        return Principal(
            subject=row.subject,
            roles=_split(row.roles),
            issuer=row.issuer,
            token_id=row.token_id,
            expires_at=row.expires_at,
            external=row.external,
            external_subject=row.external_subject,
            claim_roles=_split(row.claim_roles),
        )

    def end(self, row_id: int) -> None:
        """Delete a session (sign-out, or its token no longer verifies)."""
        with session_scope(self._factory) as session:
            session.execute(sa.delete(ConsoleSession).where(ConsoleSession.id == row_id))

    def forget(self, session_id: str) -> None:
        """Delete the session `session_id` names, if there is one."""
        if not well_formed(session_id):
            return
        with session_scope(self._factory) as session:
            session.execute(
                sa.delete(ConsoleSession).where(ConsoleSession.id_hash == id_hash(session_id))
            )

    def _sweep(self, session: sa.orm.Session, now: datetime) -> None:
        """Delete sessions past their expiry or idle timeout (run at each sign-in)."""
        session.execute(
            sa.delete(ConsoleSession).where(
                sa.or_(
                    ConsoleSession.expires_at <= now,
                    ConsoleSession.last_seen_at <= now - self._idle,
                )
            )
        )
