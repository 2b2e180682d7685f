"""Token verification: every check of invariant 6, one opaque error, and a safe cache.

`Verifier.verify(token, now)` refuses, with `InvalidToken`, a token that is:
over 8 KiB (before any parsing); not three base64url segments of JSON objects; without a
`kid`, or with a `kid` no key set holds; signed with any algorithm but its key's own (so never
`none`, never HMAC); carrying `crit`, `b64`, `jku`, `jwk`, `x5u` or `x5c` headers; badly signed;
missing `exp`, `iat`, `sub`, `iss`, `aud` or `jti`; from another issuer or for another audience;
expired, or with `iat`/`nbf` in the future (beyond the leeway, at most 30 s); living longer than
`max_token_ttl`; revoked; or for a principal that is unknown (local tokens) or disabled.

An external provider's `sub` is namespaced by issuer (`auth.external`): it never names a local
principal, and a local token never names an external subject. Only an admin's link lets an
external subject speak for a local principal (`Directory.resolve`).

`InvalidToken` says "invalid token" and nothing else; its `reason` is for logs and the audit
log. The token is never logged or stored: the cache is keyed by its SHA-256.

Caching: a verified token is remembered until it expires. The principals, roles and revoked
ids it was checked against are reloaded when their change counters move (looked at every 0.25 s)
and the whole cache is dropped then, so a revocation or a disabled principal is refused within
a second. Key files are looked at on the same cadence (a rotated or retired key also drops it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidSignatureError, PyJWTError
from sqlalchemy.engine import Engine

from secure_maas.auth.external import external_name
from secure_maas.auth.keyset import (
    JwksFileKeys,
    KeyringKeys,
    KeySource,
    VerificationKey,
    merged,
)
from secure_maas.auth.models import TOKENS_SCOPE
from secure_maas.auth.principal import Principal
from secure_maas.auth.tokens import MAX_LEEWAY, ROLES_CLAIM, revoked_ids
from secure_maas.config import Settings
from secure_maas.db.session import session_factory, session_scope
from secure_maas.db.watch import POLL_INTERVAL_S, Watcher
from secure_maas.errors import SecureMaasError
from secure_maas.policy.directory import Directory, load_directory
from secure_maas.policy.errors import InvalidRule
from secure_maas.policy.models import PRINCIPALS_SCOPE
from secure_maas.policy.rules import PRINCIPAL_NAME, ROLE_NAME, is_external

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 8192
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud", "jti")
REFUSED_HEADERS = ("crit", "b64", "jku", "jwk", "x5u", "x5c")
MAX_JTI = 64
CACHE_ENTRIES = 10_000


class InvalidToken(SecureMaasError):
    """The token was refused (401). The message is opaque on purpose; see `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__("invalid token")
        self.reason = reason


@dataclass(frozen=True)
class _State:
    directory: Directory
    revoked: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    valid_until: float  # exp + leeway, Unix seconds


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidToken(f"claim {name} is not a number")
    return float(value)


def _claim_path(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


class Verifier:
    """Verifies tokens for one service instance; thread-safe, one per process is enough."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        sources: list[KeySource] | None = None,
        leeway: timedelta = MAX_LEEWAY,
        cache_entries: int = CACHE_ENTRIES,
        interval: float = POLL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timedelta(0) <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must lie within 0..{MAX_LEEWAY.seconds} s")
        self._settings = settings
        self._leeway = leeway.total_seconds()
        self._max_lifetime = settings.max_token_ttl.total_seconds()
        self._cache_entries = cache_entries
        self._interval = interval
        self._clock = clock
        if sources is None:
            sources = [KeyringKeys(settings.keys_dir, settings.issuer)]
            if settings.external_issuer is not None and settings.external_jwks is not None:
                sources.append(JwksFileKeys(settings.external_jwks, settings.external_issuer))
        self._sources = sources
        self._keys = merged(sources)
        self._next_key_check = clock() + interval
        self._factory = session_factory(engine)
        self._watcher = Watcher(
            engine, (TOKENS_SCOPE, PRINCIPALS_SCOPE), interval=interval, clock=clock
        )
        self._state = _State(Directory({}), frozenset())
        self._lock = threading.Lock()
        self._cache: dict[bytes, _Entry] = {}
        self._generation = 0
        self._jws = PyJWS()

    # -- freshness ------------------------------------------------------------------------

    def _reload(self, _counters: Mapping[str, int]) -> None:
        with session_scope(self._factory) as session:
            state = _State(load_directory(session), revoked_ids(session))
        self._replace(state=state)

    def _replace(
        self, *, state: _State | None = None, keys: dict[str, VerificationKey] | None = None
    ) -> None:
        with self._lock:
            if state is not None:
                self._state = state
            if keys is not None:
                self._keys = keys
            self._cache = {}
            self._generation += 1

    def _refresh(self) -> None:
        if self._clock() >= self._next_key_check:
            if any([source.refresh() for source in self._sources]):
                self._replace(keys=merged(self._sources))
            self._next_key_check = self._clock() + self._interval
        self._watcher.refresh(self._reload)

    # -- verification ---------------------------------------------------------------------

    def verify(self, token: str | bytes, now: datetime | None = None) -> Principal:
        """The principal `token` speaks for, or `InvalidToken`.

        Raises `DatabaseUnavailable` or `KeySetError` (and `KeyringError` from the keyring) when
        what it must check against cannot be read: the caller fails closed (503), never 401.
        """
        if not isinstance(token, (str, bytes)):
            raise InvalidToken("token is not text")
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken(f"token is larger than {MAX_TOKEN_BYTES} bytes")
        if isinstance(token, str):
            try:
                raw = token.encode("ascii")
            except UnicodeEncodeError:
                raise InvalidToken("token is not ASCII") from None
        else:
            raw = token
        if now is not None and now.tzinfo is None:
            raise ValueError("now must be timezone-aware (use timeutil.utcnow())")
        moment = (now or datetime.now(UTC)).timestamp()
        self._refresh()
        digest = hashlib.sha256(raw).digest()
        entry = self._cache.get(digest)
        if entry is not None and moment <= entry.valid_until:
            return entry.principal
        generation = self._generation
        try:
            principal, valid_until = self._verify(raw, moment)
        except InvalidToken as exc:
            log.debug("token refused: %s", exc.reason)
            raise
        with self._lock:
            if generation == self._generation:
                if len(self._cache) >= self._cache_entries:
                    self._evict(moment)
                self._cache[digest] = _Entry(principal, valid_until)
        return principal

    def recheck(self, principal: Principal, now: datetime | None = None) -> Principal:
        """`principal` (what `verify` returned earlier for a token no longer at hand) as it
        stands now, or `InvalidToken`: its token expired or revoked, its principal unknown,
        disabled or linked elsewhere. A session that keeps the principal and not the token
        (the web console's) calls this on every request, so revocations reach it as fast as
        they reach `verify` (within a second).

        Roles can only narrow: they are those held at `verify` time that the principal still
        holds (plus an external token's claim roles, which came with the token); a role granted
        since then needs a fresh sign-in.
        """
        if now is not None and now.tzinfo is None:
            raise ValueError("now must be timezone-aware (use timeutil.utcnow())")
        moment = (now or datetime.now(UTC)).timestamp()
        self._refresh()
        state = self._state
        if moment > principal.expires_at.timestamp() + self._leeway:
            raise InvalidToken("expired")
        if principal.token_id in state.revoked:
            raise InvalidToken("revoked")
        name = principal.external_subject if principal.external else principal.subject
        identity = state.directory.resolve(name) if name is not None else None
        if identity is None:
            raise InvalidToken("unknown principal")
        if identity.disabled:
            raise InvalidToken("principal disabled")
        if identity.subject != principal.subject:
            raise InvalidToken("principal link changed")
        held = set(identity.roles) | set(principal.claim_roles)
        roles = tuple(r for r in principal.roles if r in held)
        if roles == principal.roles:
            return principal
        return dataclasses.replace(principal, roles=roles)

    def cached(self) -> dict[bytes, object]:
        """A copy of the verification cache (SHA-256 of a token -> what it verified to), so that
        an operator's debugging or a test can see that no token itself is ever held."""
        with self._lock:
            return dict(self._cache)

    def _evict(self, moment: float) -> None:
        live = {k: e for k, e in self._cache.items() if e.valid_until >= moment}
        if len(live) >= self._cache_entries:
            live = {}
        self._cache = live

    def _verify(self, raw: bytes, moment: float) -> tuple[Principal, float]:
        try:
            header = self._jws.get_unverified_header(raw)
        except PyJWTError as exc:
            raise InvalidToken(f"malformed: {exc}") from None
        for name in REFUSED_HEADERS:
            if name in header:
                raise InvalidToken(f"header {name!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("no kid in header")
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken(f"unknown kid {kid[:64]!r}")
        algorithm = header.get("alg")
        if algorithm != key.algorithm:
            raise InvalidToken(f"alg {str(algorithm)[:16]!r} is not allowed for key {kid}")
        try:
            decoded = self._jws.decode_complete(raw, key.jwk, algorithms=[key.algorithm])
        except InvalidSignatureError:
            raise InvalidToken(f"bad signature (key {kid})") from None
        except PyJWTError as exc:
            raise InvalidToken(f"malformed: {exc}") from None
        try:
            claims = json.loads(decoded["payload"])
        except (ValueError, RecursionError):
            raise InvalidToken("claims are not JSON") from None
        if not isinstance(claims, dict):
            raise InvalidToken("claims are not a JSON object")
        expires = self._check_claims(claims, key, moment)
        return self._principal(claims, key, expires), expires + self._leeway

    def _check_claims(self, claims: dict[str, Any], key: VerificationKey, moment: float) -> float:
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                raise InvalidToken(f"missing claim {name}")
        if claims["iss"] != key.issuer:
            raise InvalidToken("wrong issuer")
        audience = claims["aud"]
        audiences = audience if isinstance(audience, list) else [audience]
        if self._settings.audience not in audiences:
            raise InvalidToken("wrong audience")
        subject = claims["sub"]
        if not isinstance(subject, str) or not PRINCIPAL_NAME.match(subject):
            raise InvalidToken("claim sub is not a principal name")
        jti = claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
            raise InvalidToken("claim jti is not a short string")
        expires, issued = _number(claims, "exp"), _number(claims, "iat")
        if moment > expires + self._leeway:
            raise InvalidToken("expired")
        if issued > moment + self._leeway:
            raise InvalidToken("issued in the future (iat)")
        if "nbf" in claims and _number(claims, "nbf") > moment + self._leeway:
            raise InvalidToken("not valid yet (nbf)")
        if expires <= issued:
            raise InvalidToken("expires before it was issued")
        if expires - issued > self._max_lifetime:
            raise InvalidToken("lifetime is over SECURE_MAAS_MAX_TOKEN_TTL")
        if jti in self._state.revoked:
            raise InvalidToken("revoked")
        return expires

    def _principal(self, claims: dict[str, Any], key: VerificationKey, expires: float) -> Principal:
        subject: str = claims["sub"]
        directory = self._state.directory
        claim_roles: tuple[str, ...] = ()
        name: str | None = None
        if key.external:
            try:
                name = external_name(key.issuer, subject)
            except InvalidRule:
                raise InvalidToken("claim sub is too long for an external subject") from None
            identity = directory.resolve(name)
            claim_roles = self._external_roles(claims)
        else:
            if is_external(subject):
                raise InvalidToken("a local token for an external subject")
            identity = directory.resolve(subject)
        if identity is None:
            raise InvalidToken("unknown principal")
        if identity.disabled:
            raise InvalidToken("principal disabled")
        if key.external:
            roles = tuple(sorted({*identity.roles, *claim_roles}))
        else:
            narrowed = claims.get(ROLES_CLAIM)
            if narrowed is None:
                roles = identity.roles
            elif isinstance(narrowed, list) and all(isinstance(r, str) for r in narrowed):
                roles = tuple(r for r in identity.roles if r in narrowed)
            else:
                raise InvalidToken("claim roles is not a list of names")
        return Principal(
            subject=identity.subject,
            roles=roles,
            issuer=key.issuer,
            token_id=claims["jti"],
            expires_at=datetime.fromtimestamp(expires, UTC),
            external=key.external,
            external_subject=name,
            claim_roles=claim_roles,
        )

    def _external_roles(self, claims: dict[str, Any]) -> tuple[str, ...]:
        """The roles the configured claim names (none when no claim is configured)."""
        path = self._settings.external_roles_claim
        if path is None:
            return ()
        value = _claim_path(claims, path)
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list):
            return ()
        return tuple(sorted({r for r in value if isinstance(r, str) and ROLE_NAME.match(r)}))
