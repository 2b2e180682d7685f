"""The principal name of an external identity provider's subject: `ext:<alias>:<sub>`.

OIDC makes `sub` unique per issuer only, so an external `sub` is never taken as a local
principal's name: `sub=bob` from the provider is `ext:<alias>:bob`, a principal of its own, in
rules (`user:ext:<alias>:bob`), quotas and the audit log. Names beginning `ext:` are refused for
local principals and local tokens, so the two namespaces cannot meet; only an admin's link
(`secure-maas principal link`) lets an external subject speak for a local principal.

The alias is derived, not configured: the first 12 hex digits of the SHA-256 of the issuer
string. It is short, made of safe characters, stable for as long as the issuer is, and changes
when the issuer does, so subjects of a new provider never inherit an old one's rules or links.
"""

from __future__ import annotations

import hashlib

from secure_maas.policy.errors import InvalidRule
from secure_maas.policy.rules import EXTERNAL_PREFIX, PRINCIPAL_NAME, check_external_name

ALIAS_HEX_DIGITS = 12


def issuer_alias(issuer: str) -> str:
    """The alias of `issuer` in external principal names."""
    return hashlib.sha256(issuer.encode("utf-8")).hexdigest()[:ALIAS_HEX_DIGITS]


def external_name(issuer: str, subject: str) -> str:
    """The principal name of `subject` of `issuer`; `InvalidRule` when `subject` is not a
    principal name or is too long to be namespaced (128 characters in all)."""
    if not isinstance(subject, str) or not PRINCIPAL_NAME.match(subject):
        raise InvalidRule(f"external subject {str(subject)[:64]!r} is not a principal name")
    return check_external_name(f"{EXTERNAL_PREFIX}{issuer_alias(issuer)}:{subject}")
