"""Token verification against tokens minted by jwcrypto: interoperability, then every attack of
invariant 6, each refused with the one opaque `InvalidToken` and its own reason."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jwcrypto import jwk
from jwcrypto import jwt as jjwt
from sqlalchemy.engine import Engine

from secure_maas.auth import tokens
from secure_maas.auth.verify import InvalidToken, Verifier
from secure_maas.config import Settings
from secure_maas.db import create_engine, migrate
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import KeyKind, Keyring
from secure_maas.policy import directory
from tests.unit.token_support import b64, claims, keyring_jwk, segment, sign

NOW = datetime(2027, 5, 1, 12, 0, tzinfo=UTC)


@dataclass
class Env:
    settings: Settings
    engine: Engine
    keyring: Keyring
    key: jwk.JWK
    kid: str
    old_kid: str
    verifier: Verifier

    def mint(self, **overrides: object) -> str:
        header = {"alg": "EdDSA", "kid": self.kid, "typ": "JWT"}
        return sign(self.key, header, claims(NOW, **overrides))  # type: ignore[arg-type]

    def reason(self, token: str | bytes, now: datetime = NOW) -> str:
        with pytest.raises(InvalidToken) as caught:
            self.verifier.verify(token, now=now)
        assert str(caught.value) == "invalid token"  # opaque to callers
        return caught.value.reason


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root: Path = tmp_path_factory.mktemp("auth")
    settings = Settings(
        database_url=f"sqlite:///{root / 'db.sqlite'}",
        keys_dir=root / "keys",
        store_dir=root / "store",
        max_token_ttl=timedelta(hours=1),
    )
    engine = create_engine(settings.database_url)
    migrate.upgrade(engine)
    keyring, _ = Keyring.init(settings.keys_dir)
    old_kid = keyring.active(KeyKind.JWT).id
    keyring.rotate(KeyKind.JWT)
    kid = keyring.active(KeyKind.JWT).id
    with session_scope(session_factory(engine)) as session:
        directory.add_principal(session, "alice", actor="test", roles=["analyst", "auditor"])
        directory.add_principal(session, "carol", actor="test", roles=["analyst"], disabled=True)
    verifier = Verifier(engine, settings, interval=0.0)
    yield Env(settings, engine, keyring, keyring_jwk(keyring), kid, old_kid, verifier)
    engine.dispose()


# -- interoperability ---------------------------------------------------------------------


def test_a_jwcrypto_minted_eddsa_token_verifies(env: Env) -> None:
    principal = env.verifier.verify(env.mint(), now=NOW)
    assert principal.subject == "alice"
    assert principal.roles == ("analyst", "auditor")
    assert principal.issuer == "secure-maas" and not principal.external
    assert principal.token_id == "jti-0001"
    assert principal.expires_at == NOW + timedelta(seconds=600)


def test_a_token_signed_with_the_previous_key_still_verifies(env: Env) -> None:
    header = {"alg": "EdDSA", "kid": env.old_kid}
    token = sign(keyring_jwk(env.keyring, env.old_kid), header, claims(NOW))
    assert env.verifier.verify(token, now=NOW).subject == "alice"


def test_our_issued_tokens_verify_with_jwcrypto(env: Env) -> None:
    with session_scope(session_factory(env.engine)) as session:
        issued = tokens.issue(
            session,
            env.keyring,
            env.settings,
            subject="alice",
            ttl=timedelta(minutes=5),
            roles=["analyst"],
            actor="test",
            now=NOW,
        )
    public = jwk.JWK(**env.keyring.jwks()["keys"][0])
    parsed = jjwt.JWT(jwt=issued.token, key=public, algs=["EdDSA"], check_claims=False)
    body = json.loads(parsed.claims)
    assert body["sub"] == "alice" and body["roles"] == ["analyst"] and body["jti"] == issued.jti
    assert parsed.token.jose_header["kid"] == env.kid
    principal = env.verifier.verify(issued.token, now=NOW)
    assert principal.roles == ("analyst",)  # narrowed by the roles claim


def test_leeway_is_at_most_thirty_seconds(env: Env) -> None:
    token = env.mint(lifetime=60, jti="leeway")
    assert env.verifier.verify(token, now=NOW + timedelta(seconds=90)).subject == "alice"
    assert env.reason(token, now=NOW + timedelta(seconds=91)) == "expired"
    early = env.mint(iat=int(NOW.timestamp()) + 30, nbf=int(NOW.timestamp()) + 30, jti="early")
    assert env.verifier.verify(early, now=NOW).subject == "alice"
    with pytest.raises(ValueError, match="leeway"):
        Verifier(env.engine, env.settings, leeway=timedelta(seconds=31))


# -- attacks ------------------------------------------------------------------------------


def test_alg_none_is_refused(env: Env) -> None:
    token = f"{segment({'alg': 'none', 'kid': env.kid})}.{segment(claims(NOW))}."
    assert env.reason(token) == f"alg 'none' is not allowed for key {env.kid}"


def test_hs256_signed_with_the_public_key_is_refused(env: Env) -> None:
    public_pem = env.keyring.public_key(env.kid).pem()
    hmac_key = jwk.JWK(kty="oct", k=b64(public_pem))
    token = sign(hmac_key, {"alg": "HS256", "kid": env.kid}, claims(NOW))
    assert env.reason(token) == f"alg 'HS256' is not allowed for key {env.kid}"


def test_rs256_where_eddsa_is_expected_is_refused(env: Env) -> None:
    rsa = jwk.JWK.generate(kty="RSA", size=2048)
    token = sign(rsa, {"alg": "RS256", "kid": env.kid}, claims(NOW))
    assert env.reason(token) == f"alg 'RS256' is not allowed for key {env.kid}"


def test_a_kid_naming_another_of_our_keys_is_refused(env: Env) -> None:
    token = sign(env.key, {"alg": "EdDSA", "kid": env.old_kid}, claims(NOW))
    assert env.reason(token) == f"bad signature (key {env.old_kid})"


def test_an_attacker_key_under_our_kid_is_refused(env: Env) -> None:
    attacker = jwk.JWK.generate(kty="OKP", crv="Ed25519")
    token = sign(attacker, {"alg": "EdDSA", "kid": env.kid}, claims(NOW))
    assert env.reason(token) == f"bad signature (key {env.kid})"


def test_unknown_and_missing_kid_are_refused(env: Env) -> None:
    assert env.reason(sign(env.key, {"alg": "EdDSA", "kid": "jwt-0000"}, claims(NOW))) == (
        "unknown kid 'jwt-0000'"
    )
    assert env.reason(sign(env.key, {"alg": "EdDSA"}, claims(NOW))) == "no kid in header"


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c", "crit"])
def test_key_carrying_and_critical_headers_are_refused(env: Env, name: str) -> None:
    header: dict[str, object] = {"alg": "EdDSA", "kid": env.kid, name: "x"}
    if name == "crit":  # b64 is the one critical header jwcrypto will sign with
        header.update(crit=["b64"], b64=True)
    with pytest.raises(InvalidToken):
        env.verifier.verify(sign(env.key, header, claims(NOW)), now=NOW)


def test_expired_is_refused(env: Env) -> None:
    token = env.mint(lifetime=60)
    assert env.reason(token, now=NOW + timedelta(minutes=5)) == "expired"


def test_nbf_in_the_future_is_refused(env: Env) -> None:
    token = env.mint(nbf=int(NOW.timestamp()) + 120)
    assert env.reason(token) == "not valid yet (nbf)"


def test_iat_in_the_future_is_refused(env: Env) -> None:
    token = env.mint(iat=int(NOW.timestamp()) + 120)
    assert env.reason(token) == "issued in the future (iat)"


@pytest.mark.parametrize("name", ["exp", "iat", "sub", "iss", "aud", "jti"])
def test_each_required_claim_missing_is_refused(env: Env, name: str) -> None:
    body = claims(NOW)
    del body[name]
    token = sign(env.key, {"alg": "EdDSA", "kid": env.kid}, body)
    assert env.reason(token) == f"missing claim {name}"


def test_wrong_issuer_and_audience_are_refused(env: Env) -> None:
    assert env.reason(env.mint(issuer="https://evil.example")) == "wrong issuer"
    assert env.reason(env.mint(audience="other-service")) == "wrong audience"
    assert env.verifier.verify(env.mint(audience=["x", "secure-maas"]), now=NOW).subject == "alice"


def test_lifetime_over_the_cap_is_refused(env: Env) -> None:
    token = env.mint(lifetime=3601)
    assert env.reason(token) == "lifetime is over SECURE_MAAS_MAX_TOKEN_TTL"


def test_claims_of_the_wrong_type_are_refused(env: Env) -> None:
    assert env.reason(env.mint(exp="tomorrow")) == "claim exp is not a number"
    assert env.reason(env.mint(iat=True)) == "claim iat is not a number"
    assert env.reason(env.mint(subject="")) == "claim sub is not a principal name"
    assert env.reason(env.mint(jti=7)) == "claim jti is not a short string"
    assert env.reason(env.mint(roles="analyst")) == "claim roles is not a list of names"
    assert env.reason(env.mint(lifetime=-5)) == "expires before it was issued"


def test_revoked_jti_is_refused(env: Env) -> None:
    with session_scope(session_factory(env.engine)) as session:
        issued = tokens.issue(
            session,
            env.keyring,
            env.settings,
            subject="alice",
            ttl=timedelta(minutes=10),
            actor="test",
            now=NOW,
        )
    assert env.verifier.verify(issued.token, now=NOW).token_id == issued.jti
    with session_scope(session_factory(env.engine)) as session:
        tokens.revoke(session, issued.jti, actor="test")
    assert env.reason(issued.token) == "revoked"


def test_disabled_and_unknown_subjects_are_refused(env: Env) -> None:
    assert env.reason(env.mint(subject="carol")) == "principal disabled"
    assert env.reason(env.mint(subject="mallory")) == "unknown principal"


def test_payload_changed_after_signing_is_refused(env: Env) -> None:
    header, _payload, signature = env.mint().split(".")
    forged = segment(claims(NOW, subject="carol-admin"))
    assert env.reason(f"{header}.{forged}.{signature}") == f"bad signature (key {env.kid})"


def test_signature_stripped_is_refused(env: Env) -> None:
    header, payload, _signature = env.mint().split(".")
    assert env.reason(f"{header}.{payload}.") == f"bad signature (key {env.kid})"
    assert env.reason(f"{header}.{payload}").startswith("malformed")


def test_a_100_kb_token_is_refused_before_parsing(env: Env) -> None:
    token = env.mint(padding="A" * 100_000)
    assert env.reason(token) == "token is larger than 8192 bytes"
    assert env.reason(token.encode()) == "token is larger than 8192 bytes"


@pytest.mark.parametrize(
    "garbage", ["!!!.@@@.###", "not a token", "", "a.b.c.d", "....", "é.é.é", "eyJ.eyJ.eyJ"]
)
def test_non_base64_garbage_is_refused(env: Env, garbage: str) -> None:
    with pytest.raises(InvalidToken):
        env.verifier.verify(garbage, now=NOW)


def test_json_that_is_not_an_object_is_refused(env: Env) -> None:
    header = {"alg": "EdDSA", "kid": env.kid}
    assert env.reason(sign(env.key, header, b"[1, 2, 3]")) == "claims are not a JSON object"
    assert env.reason(sign(env.key, header, b"not json")) == "claims are not JSON"
    bad_header = f"{b64(b'[1]')}.{segment(claims(NOW))}.{b64(b'x' * 64)}"
    assert env.reason(bad_header).startswith("malformed")


def test_non_text_is_refused(env: Env) -> None:
    with pytest.raises(InvalidToken):
        env.verifier.verify(12345, now=NOW)  # type: ignore[arg-type]


# -- the cache ----------------------------------------------------------------------------


def test_the_cache_holds_digests_never_tokens(env: Env) -> None:
    token = env.mint(jti="cache-1")
    first = env.verifier.verify(token, now=NOW)
    assert env.verifier.verify(token, now=NOW) is first  # served from the cache
    digest = hashlib.sha256(token.encode()).digest()
    cache = env.verifier.cached()
    assert digest in cache
    assert all(isinstance(k, bytes) and len(k) == 32 for k in cache)
    assert token not in repr(cache) and token not in repr(first)


def test_a_cached_token_still_expires(env: Env) -> None:
    token = env.mint(lifetime=60, jti="cache-2")
    env.verifier.verify(token, now=NOW)
    assert env.reason(token, now=NOW + timedelta(seconds=91)) == "expired"


def test_a_cached_token_is_refused_once_its_principal_is_disabled(env: Env) -> None:
    with session_scope(session_factory(env.engine)) as session:
        directory.add_principal(session, "dave", actor="test")
    token = env.mint(subject="dave", jti="cache-3")
    assert env.verifier.verify(token, now=NOW).subject == "dave"
    with session_scope(session_factory(env.engine)) as session:
        directory.set_disabled(session, "dave", True)
    assert env.reason(token) == "principal disabled"


def test_removing_a_role_applies_to_cached_tokens(env: Env) -> None:
    with session_scope(session_factory(env.engine)) as session:
        directory.add_principal(session, "erin", actor="test", roles=["analyst"])
    token = env.mint(subject="erin", jti="cache-4")
    assert env.verifier.verify(token, now=NOW).roles == ("analyst",)
    with session_scope(session_factory(env.engine)) as session:
        directory.take_role(session, "erin", "analyst")
    assert env.verifier.verify(token, now=NOW).roles == ()


def test_a_retired_key_stops_verifying(tmp_path: Path, env: Env) -> None:
    token = sign(
        keyring_jwk(env.keyring, env.old_kid),
        {"alg": "EdDSA", "kid": env.old_kid},
        claims(NOW, jti="retire"),
    )
    assert env.verifier.verify(token, now=NOW).subject == "alice"
    env.keyring.retire(env.old_kid)
    fresh = Verifier(env.engine, env.settings, interval=0.0)
    assert env.reason(token) == f"unknown kid {env.old_kid!r}"
    with pytest.raises(InvalidToken):
        fresh.verify(token, now=NOW)
