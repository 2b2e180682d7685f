"""Regression (issue 15.7a): rotating a post-quantum service key never silently downgrades it.

`keys rotate --kind service` without `--pq` used to replace a hybrid ML-KEM-768 + X25519
service key with a classical X25519 one, and `models rewrap` then moved every artifact to it,
dropping their post-quantum protection without a word. A rotation now keeps the family; only
`--classical` downgrades, with a warning, and the audit event of the rotation says so.
"""

from __future__ import annotations

import json

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
