"""Who a verified token speaks for: what `Verifier.verify` returns and `decide` takes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller.

    `roles` are the roles in force for this token now (sorted): for a local token, the
    principal's current roles (narrowed by the token's `roles` claim if it has one); for an
    external one, its row's roles plus those of the configured claim. `token_id` is the `jti`.
    """

    subject: str
    roles: tuple[str, ...]
    issuer: str
    token_id: str
    expires_at: datetime
    external: bool = False
