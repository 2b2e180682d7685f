"""Who a verified token speaks for: what `Verifier.verify` returns and `decide` takes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller.

    `subject` is the principal decisions, quotas and the audit log name: for a local token its
    `sub`; for an external one its namespaced name `ext:<alias>:<sub>` (`external_subject`), or
    the local principal an admin linked that name to. `roles` are the roles in force for this
    token now (sorted): for a local token, the principal's current roles (narrowed by the token's
    `roles` claim if it has one); for an external one, those of its rows (its own, the linked
    principal's) plus `claim_roles`, the roles the configured claim gave. `token_id` is the
    `jti`.
    """

    subject: str
    roles: tuple[str, ...]
    issuer: str
    token_id: str
    expires_at: datetime
    external: bool = False
    external_subject: str | None = None
    claim_roles: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name rules may call this caller by, `subject` first (a linked external
        subject answers to its own name too, so a deny naming it still applies)."""
        if self.external_subject is None or self.external_subject == self.subject:
            return (self.subject,)
        return (self.subject, self.external_subject)

    def audit_detail(self) -> dict[str, str] | None:
        """What the audit event records of an external identity (None for a local token):
        the issuer, the external subject, the principal it is linked to, the claim's roles."""
        if not self.external or self.external_subject is None:
            return None
        detail = {"issuer": self.issuer, "external_subject": self.external_subject}
        if self.subject != self.external_subject:
            detail["linked_to"] = self.subject
        if self.claim_roles:
            detail["claim_roles"] = ",".join(self.claim_roles)
        return detail
