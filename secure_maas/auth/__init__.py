"""Authentication: issuing, verifying and revoking tokens (invariant 6). Knows nothing of Flask.

- `auth.verify`: `Verifier` (`verify(token, now) -> Principal`) and the one opaque
  `InvalidToken`.
- `auth.tokens`: `issue`, `revoke`, `revoke_subject`, `list_tokens` (records `jti`s, never
  tokens) and `MAX_LEEWAY`, the clock skew verification forgives (revocation covers it).
- `auth.external`: an external provider's `sub` as the principal `ext:<alias>:<sub>`.
- `auth.keyset`: the keyring's JWT keys and an external identity provider's JWKS, by `kid`.
- `auth.principal`: `Principal`, what a verified token speaks for.
- `auth.models`: the `issued_tokens` table.

This file imports nothing, so `secure_maas.db.schema` (and so Alembic) can import
`auth.models` without the JWT and crypto stack.
"""
