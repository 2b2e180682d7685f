"""Tokens from a configured external identity provider: ES256 and RS256 keys from its JWKS
file, its issuer only, roles from a configured claim, no widening of the allow-list, and
subjects namespaced by issuer (`ext:<alias>:<sub>`): never a local principal unless linked."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jwcrypto import jwk
from sqlalchemy.engine import Engine

from secure_maas.actions import Action
from secure_maas.auth import tokens
from secure_maas.auth.external import external_name, issuer_alias
from secure_maas.auth.keyset import KeySetError, parse_jwks
from secure_maas.auth.verify import InvalidToken, Verifier
from secure_maas.config import Settings
from secure_maas.db import create_engine, migrate
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import KeyKind, Keyring
from secure_maas.policy import Caller, CompiledPolicy, ModelFacts, RequestFacts, Rule, directory
from secure_maas.policy.errors import Conflict, InvalidRule, NotFound
from secure_maas.policy.rules import check_principal_name
from tests.unit.token_support import claims, keyring_jwk, segment, sign

NOW = datetime(2027, 5, 1, 12, 0, tzinfo=UTC)
IDP = "https://idp.example/realms/ml"
ALIAS = hashlib.sha256(IDP.encode()).hexdigest()[:12]


def ext(sub: str) -> str:
    return f"ext:{ALIAS}:{sub}"


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
        directory.add_principal(session, ext("ext-known"), actor="test", roles=["auditor"])
        directory.add_principal(session, ext("ext-banned"), actor="test", disabled=True)
        directory.add_principal(session, "bob", actor="test", roles=["admin"])
        directory.add_principal(session, "carol", actor="test", roles=["analyst"])
        directory.add_principal(session, "dora", actor="test", disabled=True)
        directory.add_principal(session, ext("linked-banned"), actor="test", disabled=True)
        directory.link(session, "carol", ext("carol-sso"), actor="test")
        directory.link(session, "dora", ext("dora-sso"), actor="test")
        directory.link(session, "carol", ext("linked-banned"), actor="test")
    verifier = Verifier(engine, settings, interval=0.0)
    yield Idp(settings, engine, keyring, ec, rsa, jwks_path, verifier)
    engine.dispose()


def test_es256_and_rs256_tokens_of_the_idp_verify(idp: Idp) -> None:
    for key in ("ec", "rsa"):
        principal = idp.verifier.verify(idp.token(key), now=NOW)
        assert principal.subject == principal.external_subject == ext("ext-user")
        assert principal.external and principal.issuer == IDP
        assert principal.roles == () and principal.names == (ext("ext-user"),)


def test_roles_come_from_the_configured_claim_and_the_principal_row(idp: Idp) -> None:
    token = idp.token(realm_access={"roles": ["analyst", "bad role!", 3]}, subject="ext-known")
    principal = idp.verifier.verify(token, now=NOW)
    assert principal.roles == ("analyst", "auditor")
    assert principal.claim_roles == ("analyst",)
    assert principal.audit_detail() == {
        "issuer": IDP, "external_subject": ext("ext-known"), "claim_roles": "analyst"
    }  # fmt: skip


def test_roles_claims_apply_only_as_configured(idp: Idp) -> None:
    elsewhere = idp.token(subject="ext-user", roles=["auditor"], groups=["auditor"])
    assert idp.verifier.verify(elsewhere, now=NOW).roles == ()
    unset = dataclasses.replace(idp.settings, external_roles_claim=None)
    verifier = Verifier(idp.engine, unset, interval=0.0)
    claimed = idp.token(subject="ext-user", realm_access={"roles": ["auditor"]})
    principal = verifier.verify(claimed, now=NOW)
    assert principal.roles == principal.claim_roles == ()
    assert "claim_roles" not in (principal.audit_detail() or {})


def test_an_external_sub_never_speaks_for_the_local_principal_of_that_name(idp: Idp) -> None:
    principal = idp.verifier.verify(idp.token(subject="bob"), now=NOW)
    assert principal.subject == ext("bob") and principal.roles == ()
    assert principal.names == (ext("bob"),)
    assert idp.verifier.verify(idp.token(subject="dora"), now=NOW).subject == ext("dora")


def test_a_linked_external_subject_speaks_for_its_local_principal(idp: Idp) -> None:
    principal = idp.verifier.verify(idp.token(subject="carol-sso"), now=NOW)
    assert principal.subject == "carol" and principal.roles == ("analyst",)
    assert principal.names == ("carol", ext("carol-sso"))
    assert principal.audit_detail() == {
        "issuer": IDP, "external_subject": ext("carol-sso"), "linked_to": "carol"
    }  # fmt: skip
    assert idp.reason(idp.token(subject="dora-sso")) == "principal disabled"
    assert idp.reason(idp.token(subject="linked-banned")) == "principal disabled"


def test_rules_for_either_name_of_a_linked_subject_apply(idp: Idp) -> None:
    principal = idp.verifier.verify(idp.token(subject="carol-sso"), now=NOW)
    facts, digits = RequestFacts(1, NOW), ModelFacts("digits")
    for subject in ("user:carol", f"user:{ext('carol-sso')}", "role:analyst"):
        allow = CompiledPolicy([Rule("allow", subject, ["model:predict"]).with_id(1)])
        assert allow.decide(principal, Action.MODEL_PREDICT, digits, facts).allowed
    deny = Rule("deny", f"user:{ext('carol-sso')}", ["model:predict"]).with_id(2)
    both = CompiledPolicy([Rule("allow", "user:carol", ["model:predict"]).with_id(1), deny])
    assert not both.decide(principal, Action.MODEL_PREDICT, digits, facts).allowed
    assert both.decide(Caller("carol"), Action.MODEL_PREDICT, digits, facts).allowed


def test_a_local_token_never_names_an_external_subject(idp: Idp) -> None:
    kid = idp.keyring.active(KeyKind.JWT).id
    body = claims(NOW, subject=ext("ext-known"))
    token = sign(keyring_jwk(idp.keyring), {"alg": "EdDSA", "kid": kid}, body)
    assert idp.reason(token) == "a local token for an external subject"
    factory = session_factory(idp.engine)
    with session_scope(factory) as session, pytest.raises(tokens.TokenError, match="external"):
        tokens.issue(
            session, idp.keyring, idp.settings, subject=ext("ext-known"),
            ttl=timedelta(minutes=5), actor="test",
        )  # fmt: skip


def test_an_external_sub_too_long_to_namespace_is_refused(idp: Idp) -> None:
    longest = "x" * (128 - len(ext("")))
    assert idp.verifier.verify(idp.token(subject=longest), now=NOW).subject == ext(longest)
    assert idp.reason(idp.token(subject=longest + "x")) == (
        "claim sub is too long for an external subject"
    )


def test_external_names_and_links_are_checked() -> None:
    assert issuer_alias(IDP) == ALIAS
    assert external_name(IDP, "a|b@c:d") == ext("a|b@c:d")
    assert issuer_alias("https://idp.example/realms/other") != ALIAS
    for bad in ("", "-x", "a b", "x" * 200, "a\nb"):
        with pytest.raises(InvalidRule):
            external_name(IDP, bad)
    for reserved in ("ext:bob", "ext:UPPER:bob", "ext::bob", "ext:abc:"):
        with pytest.raises(InvalidRule, match="ext:"):
            check_principal_name(reserved)
    assert check_principal_name(ext("bob")) == ext("bob")


def test_links_go_to_one_local_principal_and_are_removable(idp: Idp) -> None:
    with session_scope(session_factory(idp.engine)) as session:
        assert not directory.link(session, "carol", ext("carol-sso"), actor="test")
        with pytest.raises(Conflict, match="linked to carol"):
            directory.link(session, "bob", ext("carol-sso"), actor="test")
        with pytest.raises(InvalidRule, match="external subject"):
            directory.link(session, ext("ext-known"), ext("x"), actor="test")
        with pytest.raises(InvalidRule, match="not an external subject"):
            directory.link(session, "bob", "carol", actor="test")
        with pytest.raises(NotFound):
            directory.link(session, "nobody", ext("x"), actor="test")
        assert directory.link(session, "bob", ext("bob-sso"), actor="test")
        assert [x.external_subject for x in directory.list_links(session, "bob")] == [
            ext("bob-sso")
        ]
    principal = idp.verifier.verify(idp.token(subject="bob-sso"), now=NOW)
    assert (principal.subject, principal.roles) == ("bob", ("admin",))
    with session_scope(session_factory(idp.engine)) as session:
        assert directory.unlink(session, ext("bob-sso")) == "bob"
        with pytest.raises(NotFound):
            directory.unlink(session, ext("bob-sso"))
    assert idp.verifier.verify(idp.token(subject="bob-sso"), now=NOW).subject == ext("bob-sso")


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
        assert idp.verifier.verify(token, now=NOW).subject == ext("alice")
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
