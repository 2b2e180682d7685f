"""`secure-maas keys` as an operator runs it (real child processes), on SQLite and PostgreSQL.

- A key change is never in effect unrecorded: `keys rotate`, `keys retire` and `keys trust`
  commit their audit event before the manifest takes the change, so with the audit log
  unwritable each command fails and the keyring is exactly as it was.
- Rotating a post-quantum service key never silently downgrades it: a rotation keeps the
  family (hybrid ML-KEM-768 + X25519 stays hybrid, so `models rewrap` keeps the artifacts'
  post-quantum protection); only `--classical` downgrades, with a warning, and the audit event
  of the rotation says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.functional.cli import run_cli


def active_service(env: dict[str, str]) -> dict[str, str]:
    listed = run_cli("keys", "list", "--kind", "service", "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    return next(k for k in json.loads(listed.stdout) if k["status"] == "active")


def rotations(env: dict[str, str]) -> list[dict[str, object]]:
    events = json.loads(run_cli("audit", "list", "--format", "json", env=env).stdout)
    return [e for e in events if e["action"] == "keys:rotate"]


def test_rotation_keeps_the_post_quantum_family_unless_told(cli_env: dict[str, str]) -> None:
    assert run_cli("init", env=cli_env).returncode == 0
    assert run_cli("keys", "rotate", "--kind", "service", "--pq", env=cli_env).returncode == 0
    hybrid = active_service(cli_env)
    assert hybrid["algorithm"] == "mlkem768-x25519"

    kept = run_cli("keys", "rotate", "--kind", "service", env=cli_env)
    assert kept.returncode == 0, kept.stderr
    assert "warning" not in kept.stderr
    assert active_service(cli_env)["algorithm"] == "mlkem768-x25519"

    downgraded = run_cli("keys", "rotate", "--kind", "service", "--classical", env=cli_env)
    assert downgraded.returncode == 0, downgraded.stderr
    assert "warning:" in downgraded.stderr and "post-quantum" in downgraded.stderr
    assert "--pq" in downgraded.stderr  # names how to keep it
    classic = active_service(cli_env)
    assert classic["algorithm"] == "x25519"

    events = rotations(cli_env)
    assert len(events) == 3
    last = next(e for e in events if classic["id"] in str(e["reason"]))
    assert "post-quantum protection dropped" in str(last["reason"])
    assert sum("post-quantum protection dropped" in str(e["reason"]) for e in events) == 1
    assert run_cli("audit", "verify", env=cli_env).returncode == 0

    # Classical stays classical; --classical on a classical key is no downgrade and no warning.
    again = run_cli("keys", "rotate", "--kind", "service", "--classical", env=cli_env)
    assert again.returncode == 0 and "warning" not in again.stderr
    assert active_service(cli_env)["algorithm"] == "x25519"


def test_family_flags_are_for_service_keys_only(cli_env: dict[str, str]) -> None:
    assert run_cli("init", env=cli_env).returncode == 0
    before = rotations(cli_env)
    for command in (
        ("keys", "rotate", "--kind", "jwt", "--classical"),
        ("keys", "rotate", "--kind", "audit", "--pq"),
        ("keys", "rotate", "--kind", "service", "--pq", "--classical"),
    ):
        refused = run_cli(*command, env=cli_env)
        assert refused.returncode == 2, command
        assert "Traceback" not in refused.stderr
    assert rotations(cli_env) == before


def manifest(keys_dir: Path) -> tuple[bytes, bytes]:
    return (keys_dir / "keyring.json").read_bytes(), (keys_dir / "jwks.json").read_bytes()


def test_key_changes_fail_closed_when_the_audit_log_cannot_be_written(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert run_cli("init", env=cli_env).returncode == 0
    keys_dir = Path(cli_env["SECURE_MAAS_KEYS_DIR"])
    assert run_cli("keys", "rotate", "--kind", "jwt", env=cli_env).returncode == 0
    previous = next(
        k["id"]
        for k in json.loads(run_cli("keys", "list", "--format", "json", env=cli_env).stdout)
        if k["status"] == "previous"
    )
    other = tmp_path / "other-keys"
    assert (
        run_cli("keys", "init", env={**cli_env, "SECURE_MAAS_KEYS_DIR": str(other)}).returncode == 0
    )
    publisher = next(other.glob("pub-*.pub"))  # another team's publisher key

    # A database with no schema: the audit head cannot be read, nothing can be recorded.
    broken = {**cli_env, "SECURE_MAAS_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    before = manifest(keys_dir)
    for command in (
        ("keys", "rotate", "--kind", "jwt"),
        ("keys", "rotate", "--kind", "audit"),
        ("keys", "retire", previous),
        ("keys", "trust", str(publisher), "--label", "radiology"),
    ):
        failed = run_cli(*command, env=broken)
        assert failed.returncode != 0, command
        assert "Traceback" not in failed.stderr
        assert manifest(keys_dir) == before, f"{command} took effect unrecorded"

    # With the log back, the same commands work and each is recorded once.
    events = json.loads(run_cli("audit", "list", "--format", "json", env=cli_env).stdout)
    assert [e["action"] for e in events] == ["keys:rotate"]
    assert run_cli("keys", "retire", previous, env=cli_env).returncode == 0
    events = json.loads(run_cli("audit", "list", "--format", "json", env=cli_env).stdout)
    assert [e["action"] for e in events] == ["keys:rotate", "keys:retire"]
    assert run_cli("audit", "verify", env=cli_env).returncode == 0
