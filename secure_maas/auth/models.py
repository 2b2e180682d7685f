"""Issued tokens, recorded by `jti` (the token itself is never stored).

A row is written when `token issue` signs a token and updated when it is revoked; revoking bumps
the `tokens` change counter so every verifier drops its cache within a second. Expired rows stay
for `token list` and the audit trail; they cost nothing at verification time.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from secure_maas.db.base import Base, IdType, UTCDateTime

#: Change-counter scope bumped by every revocation (see db/state.py).
TOKENS_SCOPE = "tokens"


class IssuedToken(Base):
    __tablename__ = "issued_tokens"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    jti: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    subject: Mapped[str] = mapped_column(sa.String(128), nullable=False, index=True)
    roles: Mapped[str | None] = mapped_column(sa.String(1024))
    key_id: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    issued_by: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(sa.String(128))
