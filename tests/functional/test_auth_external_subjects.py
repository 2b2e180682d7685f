"""External subjects never speak for local principals. Over real HTTP through gunicorn (2
workers x 4 threads), on SQLite and PostgreSQL, with `SECURE_MAAS_EXTERNAL_ISSUER`, `_JWKS` and
`_ROLES_CLAIM` set (OIDC makes `sub` unique per issuer only):

- an external `sub` is the principal `ext:<alias>:<sub>` (alias: the first 12 hex digits of the
  SHA-256 of the issuer), never a local principal: external bob and alice get none of local
  bob's or alice's grants, and the audit log records them under the namespaced name;
- a rule naming `user:ext:<alias>:<sub>` grants that external subject, and a local token can
  never be issued for a name in the `ext:` namespace;
- `secure-maas principal link LOCAL --external-subject SUB` makes SUB speak for LOCAL (exactly
  LOCAL's grants), recorded in the audit event, and `principal unlink` undoes it;
- roles come from the configured claim only, and the event records them.

Changes are made with the CLI; a request sent a second after the command returned must see
them (invariant 7), so no timing margin is involved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from jwcrypto import jwk

from secure_maas.audit import AuditRecord
from secure_maas.timeutil import utcnow
from tests.functional.cli import run_cli
from tests.functional.serving_support import (
    ROOT,
    Instance,
    Served,
    by_request,
    database_url,
    events,
    prepare,
    server,
)
from tests.system.support import GUNICORN
from tests.unit.token_support import claims, sign

IDP = "https://idp.example/realms/ml"
KID = "idp-ec"
ROLES_CLAIM = "realm_access.roles"
PROPAGATION_S = 1.0
PROBES = 6  # requests on fresh connections, so both workers answer some


def namespaced(sub: str) -> str:
    """The external principal name, computed here independently of the code under test."""
    return f"ext:{hashlib.sha256(IDP.encode()).hexdigest()[:12]}:{sub}"


@dataclass
class External(Instance):
    """The serving tests' instance, with an external identity provider configured."""

    signing: jwk.JWK = field(default_factory=lambda: jwk.JWK.generate(kty="EC", crv="P-256"))
    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}

    def token(self, sub: str, **extra: Any) -> str:
        body = claims(utcnow(), issuer=IDP, subject=sub, jti=secrets.token_hex(8), **extra)
        return sign(self.signing, {"alg": "ES256", "kid": KID, "typ": "JWT"}, body)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[External]:
    tmp = tmp_path_factory.mktemp(f"external-{request.param}")
    urls = database_url(request, tmp)
    made = prepare(tmp, next(urls))
    external = External(made.settings, made.engine, made.tokens)
    jwks = tmp / "idp-jwks.json"
    public = {**external.signing.export_public(as_dict=True), "kid": KID, "use": "sig"}
    jwks.write_text(json.dumps({"keys": [public]}))
    external.extra = {
        "SECURE_MAAS_EXTERNAL_ISSUER": IDP,
        "SECURE_MAAS_EXTERNAL_JWKS": str(jwks),
        "SECURE_MAAS_EXTERNAL_ROLES_CLAIM": ROLES_CLAIM,
    }
    external.settings = dataclasses.replace(
        made.settings, external_issuer=IDP, external_jwks=jwks, external_roles_claim=ROLES_CLAIM
    )
    yield external
    made.engine.dispose()
    next(urls, None)


@pytest.fixture(scope="module")
def served(instance: External) -> Iterator[Served]:
    with server(instance, *GUNICORN) as running:
        yield running


def get(url: str, path: str, token: str, request_id: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        url + path, headers={"Authorization": f"Bearer {token}", "X-Request-Id": request_id}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), json.loads(error.read())


def listed(url: str, token: str, request_id: str) -> list[str]:
    status, body = get(url, "/v1/models", token, request_id)
    assert status == 200, body
    return sorted(model["name"] for model in body["models"])


def cli(instance: External, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    done = run_cli(*args, env=instance.env(), cwd=ROOT)
    assert done.returncode == status, (done.stdout, done.stderr)
    return done


def changed(instance: External, *args: str) -> str:
    """Run an admin command; return once every worker must see its change (invariant 7)."""
    output = cli(instance, *args).stdout
    time.sleep(PROPAGATION_S)
    return output


def event(instance: External, request_id: str) -> AuditRecord:
    found = by_request(instance.engine, {request_id})[request_id]
    assert len(found) == 1, found
    return found[0]


def probes(prefix: str) -> list[str]:
    return [f"{prefix}-{n}" for n in range(PROBES)]


def test_an_external_subject_is_never_a_local_principal(instance: External, served: Served) -> None:
    bob, alice = instance.token("bob"), instance.token("alice")
    assert get(served.url, "/admin/audit?limit=1", instance.tokens["bob"], "local-bob")[0] == 200
    assert listed(served.url, instance.tokens["alice"], "local-alice") == [
        "digits", "listed", "multi"
    ]  # fmt: skip

    for rid in probes("ext-bob"):
        assert get(served.url, "/admin/audit?limit=1", bob, rid)[0] == 403
        recorded = event(instance, rid)
        assert (recorded.actor, recorded.decision) == (namespaced("bob"), "deny")
    for rid in probes("ext-alice"):
        assert listed(served.url, alice, rid) == []
        assert event(instance, rid).actor == namespaced("alice")
    assert get(served.url, "/v1/models/digits/metadata", alice, "ext-alice-meta")[0] == 404


def test_a_rule_naming_the_namespaced_subject_grants_it(instance: External, served: Served) -> None:
    frank = instance.token("frank")
    assert listed(served.url, frank, "frank-before") == []
    name = namespaced("frank")
    changed(instance, "policy", "grant", "--subject", f"user:{name}", "--model", "listed",
            "--action", "model:list")  # fmt: skip
    for rid in probes("frank-after"):
        assert listed(served.url, frank, rid) == ["listed"]
        assert event(instance, rid).actor == name

    # The namespace belongs to external tokens: a local token is never issued for it.
    cli(instance, "principal", "add", name, "--description", "external frank's row")
    refused = cli(instance, "token", "issue", "--subject", name, status=1)
    assert "external" in refused.stderr and refused.stdout == ""
    assert "ext:" in cli(instance, "principal", "add", "ext:bob", status=1).stderr

    changed(instance, "principal", "disable", name)  # its row can still refuse it
    for rid in probes("frank-disabled"):
        assert get(served.url, "/v1/models", frank, rid)[0] == 401
        assert event(instance, rid).reason == "principal disabled"


def test_a_link_makes_an_external_subject_speak_for_a_local_principal(
    instance: External, served: Served
) -> None:
    zed = instance.token("zed")
    assert listed(served.url, zed, "zed-before") == []
    said = changed(instance, "principal", "link", "alice", "--external-subject", "zed")
    assert namespaced("zed") in said and "alice" in said
    for rid in probes("zed-linked"):
        assert listed(served.url, zed, rid) == ["digits", "listed", "multi"]  # alice's
        recorded = event(instance, rid)
        assert recorded.actor == "alice"
        assert recorded.details["external_subject"] == namespaced("zed")
        assert recorded.details["issuer"] == IDP
    for rid in probes("zed-not-bob"):
        assert get(served.url, "/admin/audit?limit=1", zed, rid)[0] == 403  # not bob's
    shown = cli(instance, "principal", "show", "alice", "--format", "json").stdout
    assert json.loads(shown)[0]["external_subjects"] == [namespaced("zed")]

    changed(instance, "principal", "unlink", "--external-subject", "zed")
    for rid in probes("zed-unlinked"):
        assert listed(served.url, zed, rid) == []
        assert event(instance, rid).actor == namespaced("zed")
    admin = events(instance.engine, action="principal:change")
    assert [e.reason_code for e in admin if "zed" in (e.reason or "")] == ["link", "unlink"]


def test_roles_come_from_the_configured_claim_and_are_recorded(
    instance: External, served: Served
) -> None:
    with_claim = instance.token("gina", realm_access={"roles": ["auditor"]})
    elsewhere = instance.token("gina", roles=["auditor"], groups=["auditor"])
    for rid in probes("gina-claim"):
        assert get(served.url, "/admin/audit?limit=1", with_claim, rid)[0] == 200
        recorded = event(instance, rid)
        assert recorded.actor == namespaced("gina")
        assert recorded.details["claim_roles"] == "auditor"
    for rid in probes("gina-elsewhere"):
        assert get(served.url, "/admin/audit?limit=1", elsewhere, rid)[0] == 403
        assert "claim_roles" not in event(instance, rid).details
