"""The CLI end to end: what an operator types on a fresh machine, and what goes wrong."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secure_maas.config import Settings
from secure_maas.db import migrate
from secure_maas.keys import KeyKind, Keyring
from tests.functional.cli import run_cli
from tests.unit.test_keys_files import link_outside, private_path


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_init_then_keys_list_shows_four_kinds(cli_env: dict[str, str], settings: Settings) -> None:
    first = run_cli("init", env=cli_env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created ") == 4
    head = migrate.head()
    assert f"-> {head}" in first.stdout

    listed = run_cli("keys", "list", "--format", "json", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)
    assert {k["kind"] for k in keys} == {kind.value for kind in KeyKind}
    for key in keys:
        assert key["id"] and key["fingerprint"].startswith("SHA256:")
        assert key["status"] == "active"
    for path in settings.keys_dir.iterdir():
        if path.suffix == ".key":
            assert path.read_text() not in listed.stdout

    before = {p.name: p.read_bytes() for p in settings.keys_dir.iterdir()}
    second = run_cli("init", env=cli_env)
    assert second.returncode == 0, second.stderr
    assert "already initialised; nothing changed" in second.stdout
    assert f"already at {head}" in second.stdout
    assert {p.name: p.read_bytes() for p in settings.keys_dir.iterdir()} == before

    check = run_cli("db", "check", env=cli_env)
    assert check.returncode == 0, check.stderr
    assert "schema ok" in check.stdout
    current = run_cli("db", "current", env=cli_env)
    assert f"current: {head}  head: {head}  (up to date)" in current.stdout


def test_private_key_with_mode_644_is_refused_with_the_fix(
    cli_env: dict[str, str], settings: Settings
) -> None:
    assert run_cli("keys", "init", env=cli_env).returncode == 0
    jwt_key = next(settings.keys_dir.glob("jwt-*.key"))
    os.chmod(jwt_key, 0o644)
    for command in (["keys", "check"], ["init"]):
        line = one_line_error(run_cli(*command, env=cli_env))
        assert f"fix with: chmod 600 {jwt_key}" in line


def test_cli_refuses_a_symlinked_key_with_the_fix_and_no_traceback(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert run_cli("keys", "init", env=cli_env).returncode == 0
    keyring = Keyring.open(Path(cli_env["SECURE_MAAS_KEYS_DIR"]))
    path = private_path(keyring, KeyKind.PUBLISHER)
    link_outside(keyring, path, tmp_path)
    refused = run_cli("keys", "check", env=cli_env)
    assert refused.returncode == 1
    assert "symbolic link" in refused.stderr and "cp --remove-destination" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_db_upgrade_and_rotation_through_the_cli(cli_env: dict[str, str]) -> None:
    upgraded = run_cli("db", "upgrade", env=cli_env)
    assert upgraded.returncode == 0 and f"upgraded empty -> {migrate.head()}" in upgraded.stdout
    again = run_cli("db", "upgrade", env=cli_env)
    assert "nothing to do" in again.stdout
    assert run_cli("keys", "init", env=cli_env).returncode == 0
    rotated = run_cli("keys", "rotate", "--kind", "jwt", env=cli_env)
    assert rotated.returncode == 0 and "kept as previous" in rotated.stdout
    jwks = json.loads(run_cli("keys", "jwks", env=cli_env).stdout)
    assert len(jwks["keys"]) == 2
    previous = [
        k
        for k in json.loads(run_cli("keys", "list", "--format", "json", env=cli_env).stdout)
        if k["status"] == "previous"
    ]
    retired = run_cli("keys", "retire", previous[0]["id"], env=cli_env)
    assert retired.returncode == 0, retired.stderr
    assert len(json.loads(run_cli("keys", "jwks", env=cli_env).stdout)["keys"]) == 1
    events = json.loads(run_cli("audit", "list", "--format", "json", env=cli_env).stdout)
    assert [e["action"] for e in events] == ["keys:rotate", "keys:retire"]
    assert all(e["actor_kind"] == "os" for e in events)
    assert run_cli("audit", "verify", env=cli_env).returncode == 0


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MAAS_")}
    env["SECURE_MAAS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env["SECURE_MAAS_KEYS_DIR"] = str(tmp_path / "keys")
    return env


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SECURE_MAAS_MAX_TOKEN_TTL", "forever", "SECURE_MAAS_MAX_TOKEN_TTL: 'forever' is not a"),
        ("SECURE_MAAS_DATABASE_URL", "mysql://x/y", "SECURE_MAAS_DATABASE_URL: unsupported"),
        ("SECURE_MAAS_LOG_LEVEL", "chatty", "SECURE_MAAS_LOG_LEVEL: 'chatty' is not one of"),
        ("SECURE_MAAS_KEYDIR", "x", "unknown setting SECURE_MAAS_KEYDIR"),
    ],
)
def test_bad_configuration_is_one_clear_line(
    base_env: dict[str, str], variable: str, value: str, expected: str
) -> None:
    line = one_line_error(run_cli("init", env={**base_env, variable: value}))
    assert expected in line


def test_unreachable_database_is_a_clear_error(base_env: dict[str, str], tmp_path: Path) -> None:
    env = {**base_env, "SECURE_MAAS_DATABASE_URL": "postgresql://maas:pw@127.0.0.1:1/maas"}
    line = one_line_error(run_cli("init", env=env))
    assert "cannot reach database postgresql+psycopg://maas:***@127.0.0.1:1/maas" in line
    assert not (tmp_path / "keys").exists()  # nothing written before the database answered
    assert "cannot reach database" in one_line_error(run_cli("db", "current", env=env))


def test_keys_folder_that_is_a_file(base_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("not a folder")
    assert "is a file, not a folder" in one_line_error(run_cli("init", env=base_env))
    assert "is not a folder" in one_line_error(run_cli("keys", "list", env=base_env))


def test_corrupted_key_file_is_named(base_env: dict[str, str], tmp_path: Path) -> None:
    assert run_cli("init", env=base_env).returncode == 0
    service_key = next((tmp_path / "keys").glob("svc-*.key"))
    service_key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    line = one_line_error(run_cli("keys", "check", env=base_env))
    assert f"{service_key} is not a readable x25519 private key" in line


def test_unknown_key_id_and_usage_errors(base_env: dict[str, str]) -> None:
    assert run_cli("keys", "init", env=base_env).returncode == 0
    assert "no key with id" in one_line_error(run_cli("keys", "retire", "nope", env=base_env))
    usage = run_cli("keys", "rotate", "--kind", "bogus", env=base_env)
    assert usage.returncode == 2 and "Invalid value for '--kind'" in usage.stderr


def test_debug_shows_the_traceback(base_env: dict[str, str]) -> None:
    result = run_cli("--debug", "keys", "retire", "nope", env=base_env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KeyringError" in result.stderr


def test_config_show_masks_secrets(base_env: dict[str, str]) -> None:
    env = {**base_env, "SECURE_MAAS_DATABASE_URL": "postgresql://maas:hunter2@db/maas"}
    result = run_cli("config", "show", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    shown = {row["variable"]: row["value"] for row in json.loads(result.stdout)}
    assert shown["SECURE_MAAS_DATABASE_URL"] == "postgresql+psycopg://maas:***@db/maas"
    assert "hunter2" not in result.stdout


def test_python_dash_m_runs_the_same_cli(base_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "secure_maas", "--version"],
        env=base_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("secure-maas, version ")


def test_demo_sets_up_from_nothing_and_is_repeatable(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = run_cli("demo", "--no-serve", "--quick", env=env)
    assert first.returncode == 0, first.stderr
    assert "created audit key" in first.stdout
    assert "published digits-mlp:1" in first.stdout or "digits-mlp:1" in first.stdout
    assert "Authorization: Bearer ey" in first.stdout  # a working curl with a real token
    assert "/console/ and sign in as the auditor" in first.stdout  # and the console's address
    models = json.loads(run_cli("models", "list", "--format", "json", env=env).stdout)
    assert {(m["name"], m["privacy"]) for m in models} == {
        ("digits-mlp", "dp"),
        ("breast_cancer-mlp", "dp"),
    }
    assert all(m["epsilon"] is not None and m["epsilon"] <= 3.0 + 1e-9 for m in models)
    second = run_cli("demo", "--no-serve", "--quick", env=env)
    assert second.returncode == 0, second.stderr
    assert "nothing changed" in second.stdout and "already trained: digits-mlp" in second.stdout
    models_after = json.loads(run_cli("models", "list", "--format", "json", env=env).stdout)
    assert len(models_after) == 2  # nothing trained twice
    assert run_cli("audit", "verify", env=env).returncode == 0
