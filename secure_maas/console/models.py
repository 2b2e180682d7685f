"""The console's sessions: one row per signed-in browser, keyed by the SHA-256 of its id.

The random session id lives only in the browser's cookie; the row holds its hash, so a read of
the database gives nobody a usable cookie. The bearer token pasted at sign-in is never stored:
the row keeps what the verifier made of it (subject, roles, `jti`, issuer, expiry), and every
request checks that again against the current revocations and principals
(`Verifier.recheck`). A session ends at its token's expiry, after the idle timeout, at
sign-out, or as soon as the token is revoked or the principal disabled.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from secure_maas.db.base import Base, IdType, UTCDateTime


class ConsoleSession(Base):
    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    #: SHA-256 hex of the session id the cookie carries.
    id_hash: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    subject: Mapped[str] = mapped_column(sa.String(128), nullable=False, index=True)
    roles: Mapped[str] = mapped_column(sa.String(1024), nullable=False)
    token_id: Mapped[str] = mapped_column(sa.String(64), nullable=False, index=True)
    issuer: Mapped[str] = mapped_column(sa.String(256), nullable=False)
    external: Mapped[bool] = mapped_column(sa.Boolean(), nullable=False)
    external_subject: Mapped[str | None] = mapped_column(sa.String(128))
    claim_roles: Mapped[str] = mapped_column(sa.String(1024), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
