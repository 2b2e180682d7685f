"""Errors of the policy package, shared by its store, rule and file modules."""

from __future__ import annotations

from secure_maas.errors import SecureMaasError


class PolicyError(SecureMaasError):
    """A policy operation cannot be done as asked."""


class InvalidRule(PolicyError, ValueError):
    """A rule, principal or role is malformed; the message says which field and why.

    `field` names the offending field when one is to blame, so a policy file error can point
    at its line.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(PolicyError):
    """No principal, role or rule by that name or id."""


class Conflict(PolicyError):
    """The change collides with what is already stored (a duplicate name or rule)."""
