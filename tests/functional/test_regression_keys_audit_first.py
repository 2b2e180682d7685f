"""Regression (issue 8, process faults): a key change is never in effect unrecorded.

`keys rotate`, `keys retire` and `keys trust` used to change the keyring first and write their
audit event after it, so a SIGKILL in between (or the database failing at that moment) left a
rotation in effect with no `keys:rotate` event. The event is now committed before the manifest
takes the change: with the audit log unwritable, each command fails and the keyring is exactly
as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.functional.cli import run_cli


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
