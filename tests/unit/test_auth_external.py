"""Tokens from a configured external identity provider: ES256 and RS256 keys from its JWKS
file, its issuer only, roles from a configured claim, and no widening of the allow-list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jwcrypto import jwk
from sqlalchemy.engine import Engine

from secure_maas.auth.keyset import KeySetError, parse_jwks
from secure_maas.auth.verify import InvalidToken, Verifier
from secure_maas.config import Settings
from secure_maas.db import create_engine, migrate
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import KeyKind, Keyring
from secure_maas.policy import directory
from tests.unit.token_support import claims, keyring_jwk, segment, sign

NOW = datetime(2027, 5, 1, 12, 0, tzinfo=UTC)
IDP = "https://idp.example/realms/ml"


@dataclass
class Idp:
    settings: Settings
    engine: Engine
    keyring: Keyring
    ec: jwk.JWK
    rsa: jwk.JWK
    jwks_path: Path
    verifier: Verifier

    def token(self, key: str = "ec", alg: str | None = None, **overrides: object) -> str:
        signing = {"ec": self.ec, "rsa": self.rsa}[key]
        algorithm = alg or {"ec": "ES256", "rsa": "RS256"}[key]
        header = {"alg": algorithm, "kid": f"idp-{key}"}
        options: dict[str, object] = {"issuer": IDP, "subject": "ext-user", **overrides}
        body = claims(NOW, **options)  # type: ignore[arg-type]
        if algorithm == "none":
            return f"{segment(header)}.{segment(body)}."
        return sign(signing, header, body)

    def reason(self, token: str) -> str:
        with pytest.raises(InvalidToken) as caught:
            self.verifier.verify(token, now=NOW)
        return caught.value.reason


def public(key: jwk.JWK, kid: str, **extra: str) -> dict[str, str]:
    return {**key.export_public(as_dict=True), "kid": kid, "use": "sig", **extra}


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    root = tmp_path_factory.mktemp("idp")
    ec = jwk.JWK.generate(kty="EC", crv="P-256")
    rsa = jwk.JWK.generate(kty="RSA", size=2048)
    weak = jwk.JWK.generate(kty="RSA", size=1024)
    secret = jwk.JWK.generate(kty="oct", size=256)
    jwks = {
        "keys": [
            public(ec, "idp-ec"),
            public(rsa, "idp-rsa", alg="RS256"),
            public(weak, "idp-weak"),
            {**secret.export(as_dict=True), "kid": "idp-hmac"},
            public(jwk.JWK.generate(kty="EC", crv="P-256"), "idp-enc", use="enc"),
        ]
    }
    jwks_path = root / "idp-jwks.json"
    jwks_path.write_text(json.dumps(jwks))
    settings = Settings(
        database_url=f"sqlite:///{root / 'db.sqlite'}",
        keys_dir=root / "keys",
        store_dir=root / "store",
        external_issuer=IDP,
        external_jwks=jwks_path,
        external_roles_claim="realm_access.roles",
    )
    engine = create_engine(settings.database_url)
    migrate.upgrade(engine)
    keyring, _ = Keyring.init(settings.keys_dir)
    with session_scope(session_factory(engine)) as session:
        directory.add_principal(session, "ext-known", actor="test", roles=["auditor"])
        directory.add_principal(session, "ext-banned", actor="test", disabled=True)
    verifier = Verifier(engine, settings, interval=0.0)
    yield Idp(settings, engine, keyring, ec, rsa, jwks_path, verifier)
    engine.dispose()


def test_es256_and_rs256_tokens_of_the_idp_verify(idp: Idp) -> None:
    for key in ("ec", "rsa"):
        principal = idp.verifier.verify(idp.token(key), now=NOW)
        assert principal.subject == "ext-user"
        assert principal.external and principal.issuer == IDP
        assert principal.roles == ()


def test_roles_come_from_the_configured_claim_and_the_principal_row(idp: Idp) -> None:
    token = idp.token(realm_access={"roles": ["analyst", "bad role!", 3]}, subject="ext-known")
    principal = idp.verifier.verify(token, now=NOW)
    assert principal.roles == ("analyst", "auditor")


def test_a_disabled_row_refuses_the_external_subject(idp: Idp) -> None:
    assert idp.reason(idp.token(subject="ext-banned")) == "principal disabled"


def test_the_idp_keys_verify_only_the_idp_issuer_and_ours_only_ours(idp: Idp) -> None:
    assert idp.reason(idp.token(issuer="secure-maas")) == "wrong issuer"
    kid = idp.keyring.active(KeyKind.JWT).id
    ours = sign(keyring_jwk(idp.keyring), {"alg": "EdDSA", "kid": kid}, claims(NOW, issuer=IDP))
    assert idp.reason(ours) == "wrong issuer"


def test_alg_must_be_the_keys_own(idp: Idp) -> None:
    assert idp.reason(idp.token("rsa", alg="RS512")) == "alg 'RS512' is not allowed for key idp-rsa"
    assert idp.reason(idp.token("ec", alg="none")) == "alg 'none' is not allowed for key idp-ec"


@pytest.mark.parametrize("kid", ["idp-weak", "idp-hmac", "idp-enc"])
def test_weak_symmetric_and_encryption_keys_are_never_loaded(idp: Idp, kid: str) -> None:
    header = {"alg": "HS256" if kid == "idp-hmac" else "RS256", "kid": kid}
    token = sign(idp.rsa, {**header, "alg": "RS256"}, claims(NOW, issuer=IDP))
    assert idp.reason(token) == f"unknown kid {kid!r}"


def test_the_jwks_file_is_reloaded_when_it_changes(idp: Idp) -> None:
    original = idp.jwks_path.read_text()
    fresh = jwk.JWK.generate(kty="EC", crv="P-256")
    document = json.loads(original)
    document["keys"].append(public(fresh, "idp-new"))
    idp.jwks_path.write_text(json.dumps(document))
    token = sign(fresh, {"alg": "ES256", "kid": "idp-new"}, claims(NOW, issuer=IDP))
    try:
        assert idp.verifier.verify(token, now=NOW).subject == "alice"
    finally:
        idp.jwks_path.write_text(original)
    assert idp.reason(token) == "unknown kid 'idp-new'"


def test_jwks_documents_are_checked() -> None:
    with pytest.raises(KeySetError, match="not JSON"):
        parse_jwks(b"{", issuer=IDP, name="x")
    with pytest.raises(KeySetError, match="not a JWKS document"):
        parse_jwks(b"[]", issuer=IDP, name="x")
    key = public(jwk.JWK.generate(kty="EC", crv="P-256"), "dup")
    with pytest.raises(KeySetError, match="appears twice"):
        parse_jwks(json.dumps({"keys": [key, key]}).encode(), issuer=IDP, name="x")
    mislabelled = {**key, "alg": "RS256"}
    assert parse_jwks(json.dumps({"keys": [mislabelled]}).encode(), issuer=IDP, name="x") == {}


def test_lifetime_cap_applies_to_external_tokens_too(idp: Idp) -> None:
    cap = int(idp.settings.max_token_ttl / timedelta(seconds=1))
    assert idp.reason(idp.token(lifetime=cap + 1)) == "lifetime is over SECURE_MAAS_MAX_TOKEN_TTL"
