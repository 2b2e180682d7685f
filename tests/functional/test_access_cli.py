"""The access-control admin commands as an operator runs them (real child processes), on SQLite
and PostgreSQL; every change is an audit event by the OS user, and no token reaches a file.

Token ids are hex (128 bits), so none looks like an option to `token revoke JTI`; a token
issued with an older id that begins with "-" (base64url ids did, one in 64) is revoked with
`token revoke -- JTI`, the usual end of options.
"""

from __future__ import annotations

import getpass
import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.auth import tokens
from secure_maas.auth.models import IssuedToken
from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import directory
from secure_maas.registry.models import Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore
from tests.functional.cli import run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"


def ok(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, (args, result.stderr)
    return result


def error(*args: str, env: dict[str, str], status: int = 1) -> str:
    result = run_cli(*args, env=env)
    assert result.returncode == status, (args, result)
    assert "Traceback" not in result.stderr
    return result.stderr


def register_model(settings: Settings, engine: Engine, name: str, epsilon: float | None) -> None:
    """A published version with the facts policy reads: explain takes ε from its signed
    header (the bytes are never decoded here)."""
    dp = None if epsilon is None else {"epsilon": epsilon, "delta": 1e-5}
    publish(
        engine,
        ArtifactStore(settings.store_dir),
        Keyring.open(settings.keys_dir),
        name=name,
        payload=b"not a model: explain never decodes it",
        signature={"inputs": [], "outputs": []},
        provenance=Provenance(Privacy.DP if dp else Privacy.IMPORTED, dp=dp),
        created_by="test",
    )


@pytest.fixture
def instance(cli_env: dict[str, str], settings: Settings) -> Engine:
    ok("init", env=cli_env)
    engine = create_engine(settings.database_url)
    register_model(settings, engine, "digits_dp", 2.0)
    register_model(settings, engine, "digits_plain", None)
    return engine


def test_principals_rules_explain_and_audit(instance: Engine, cli_env: dict[str, str]) -> None:
    env = cli_env
    assert ok("principal", "add", "alice", "--role", "analyst", env=env).stdout.startswith(
        "added principal alice (roles: analyst)"
    )
    ok("principal", "add", "carol", "--disabled", env=env)
    ok("principal", "role", "add", "carol", "auditor", env=env)
    listed = json.loads(ok("principal", "list", "--format", "json", env=env).stdout)
    assert [(p["name"], p["status"], p["roles"]) for p in listed] == [
        ("alice", "enabled", "analyst"),
        ("carol", "disabled", "auditor"),
    ]

    granted = ok(
        "policy", "grant", "--subject", "role:analyst", "--model", "digits*",
        "--action", "model:predict", "--action", "model:metadata",
        "--max-epsilon", "3", "--quota", "600/minute", "--max-rows", "1000", env=env,
    )  # fmt: skip
    assert granted.stdout.startswith("rule 1: allow role:analyst digits* ")
    ok("policy", "grant", "--deny", "--subject", "user:alice", "--model", "digits_secret",
       "--action", "model:predict", env=env)  # fmt: skip
    assert "deny rule takes no" in error(
        "policy", "grant", "--deny", "--subject", "*", "--action", "model:list",
        "--max-rows", "3", env=env, status=2,
    )  # fmt: skip
    rules = json.loads(
        ok("policy", "list", "--model", "digits_dp", "--format", "json", env=env).stdout
    )
    assert [r["id"] for r in rules] == [1]
    assert rules[0]["quota"] == {"per": "minute", "requests": 600}

    explained = ok(
        "policy", "explain", "--subject", "alice", "--model", "digits_dp:1",
        "--action", "model:predict", env=env,
    ).stdout  # fmt: skip
    assert explained.startswith("ALLOW: allowed by rule 1\n")
    assert "quotas that apply: 600 requests/minute" in explained
    assert "model digits_secret does not match digits_dp" in explained
    plain = json.loads(ok(
        "policy", "explain", "--subject", "alice", "--model", "digits_plain",
        "--action", "model:predict", "--format", "json", env=env,
    ).stdout)  # fmt: skip
    assert not plain["allowed"]
    assert plain["reason"] == "rule 1 does not apply: max_epsilon 3: the model has no DP guarantee"
    assert [r["matched"] for r in plain["rules"]] == [False, False]

    assert "removed rule 2" in ok(
        "policy", "revoke", "--deny", "--subject", "user:alice", "--model", "digits_secret",
        "--action", "model:predict", env=env,
    ).stdout  # fmt: skip
    assert "removed rule 1" in ok("policy", "revoke", "1", env=env).stdout

    events = json.loads(ok("audit", "list", "--format", "json", "--limit", "100", env=env).stdout)
    admin = [(e["action"], e["actor"], e["actor_kind"]) for e in events]
    user = getpass.getuser()
    assert admin == [
        ("principal:change", user, "os"),
        ("principal:change", user, "os"),
        ("principal:change", user, "os"),
        ("policy:grant", user, "os"),
        ("policy:grant", user, "os"),
        ("policy:revoke", user, "os"),
        ("policy:revoke", user, "os"),
    ]
    assert ok("audit", "verify", env=env).stdout.startswith("intact")


def test_tokens_issue_list_revoke(
    instance: Engine, cli_env: dict[str, str], settings: Settings
) -> None:
    env = cli_env
    ok("principal", "add", "alice", "--role", "analyst", env=env)
    issued = ok("token", "issue", "--subject", "alice", "--ttl", "15m", env=env)
    token = issued.stdout.strip()
    assert issued.stdout == token + "\n" and token.count(".") == 2
    assert "issued jti" in issued.stderr and token not in issued.stderr
    assert "does not hold role(s) auditor" in error(
        "token", "issue", "--subject", "alice", "--role", "auditor", env=env
    )

    listed = json.loads(ok("token", "list", "--active", "--format", "json", env=env).stdout)
    assert len(listed) == 1 and listed[0]["subject"] == "alice" and listed[0]["status"] == "active"
    jti = listed[0]["jti"]
    assert f"revoked {jti}" in ok("token", "revoke", jti, env=env).stdout
    assert "not both" in error("token", "revoke", jti, "--subject", "alice", env=env, status=2)
    ok("token", "issue", "--subject", "alice", env=env)
    assert (
        "revoked 1 active token(s) of alice"
        in ok("token", "revoke", "--subject", "alice", env=env).stdout
    )
    assert ok("token", "list", "--active", env=env).stdout.splitlines()[1:] == []

    dumped = ok("audit", "list", "--format", "json", env=env).stdout
    assert [e["action"] for e in json.loads(dumped)] == [
        "principal:change", "token:issue", "token:revoke", "token:issue", "token:revoke"
    ]  # fmt: skip
    assert jti in dumped and token not in dumped
    for path in settings.database_url.removeprefix("sqlite:///").split("?")[:1]:
        if Path(path).is_file():
            assert token.encode() not in Path(path).read_bytes()


def test_apply_export_diff_and_a_malformed_file(
    instance: Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = cli_env
    dry = ok("policy", "apply", str(EXAMPLES), "--dry-run", env=env).stdout
    assert "+ principal alice: roles analyst" in dry
    assert dry.splitlines()[-1].startswith("dry run, nothing changed: ")
    applied = ok("policy", "apply", str(EXAMPLES), env=env).stdout
    assert applied.splitlines()[-1].startswith("added ")
    again = ok("policy", "apply", str(EXAMPLES), env=env).stdout
    assert again == "no changes: the database matches the files\n"
    assert ok("policy", "diff", str(EXAMPLES), env=env).stdout == "no differences\n"
    exported = tmp_path / "export.yaml"
    ok("policy", "export", "-o", str(exported), env=env)
    assert ok("policy", "apply", str(exported), "--prune", env=env).stdout.startswith("no changes")

    broken = tmp_path / "broken.yaml"
    broken.write_text("principals:\n  dave:\n    roles: [analyst]\n    disabled: perhaps\n")
    message = error("policy", "apply", str(broken), env=env)
    assert f"{broken}:4: disabled must be true or false" in message
    assert "nothing changed" in message
    events = json.loads(ok("audit", "list", "--format", "json", env=env).stdout)
    assert [e["action"] for e in events].count("policy:apply") == 3  # no event for the refusal


# -- token ids and `token revoke` ------------------------------------------------------------

NOW = datetime(2027, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def session(migrated_engine: Engine) -> Iterator[Session]:
    with session_scope(session_factory(migrated_engine)) as session:
        yield session


def test_token_ids_never_look_like_an_option(session: Session, settings: Settings) -> None:
    keyring, _ = Keyring.init(settings.keys_dir)
    directory.add_principal(session, "alice", actor="ops", roles=["analyst"])
    ids = {
        tokens.issue(
            session, keyring, settings, subject="alice", ttl=timedelta(minutes=5), actor="ops",
            now=NOW,
        ).jti
        for _ in range(200)
    }  # fmt: skip
    assert len(ids) == 200
    assert all(re.fullmatch(r"[0-9a-f]{32}", jti) for jti in ids)


def test_an_old_id_that_begins_with_a_dash_is_revoked_after_double_dash(
    cli_env: dict[str, str], settings: Settings
) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=cli_env)

    assert cli("init").returncode == 0
    assert cli("principal", "add", "alice", "--role", "analyst").returncode == 0
    assert cli("token", "issue", "--subject", "alice").returncode == 0
    legacy = "-7HvzxKQz3sOcPMATb-5XNGW"  # a base64url id, as older releases issued them
    engine = create_engine(settings.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            session.execute(sa.update(IssuedToken).values(jti=legacy))
    finally:
        engine.dispose()
    refused = cli("token", "revoke", legacy)
    assert refused.returncode == 2 and "No such option" in refused.stderr
    done = cli("token", "revoke", "--", legacy)
    assert done.returncode == 0, done.stderr
    assert f"revoked {legacy}" in done.stdout
