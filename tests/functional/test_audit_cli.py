"""`secure-maas audit` end to end, as an auditor runs it, on both databases."""

from __future__ import annotations

import csv
import io
import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from secure_maas.audit import KeyringAuditKeys
from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.keys import KeyKind, Keyring
from tests.functional.audit_support import fill, sql
from tests.functional.cli import SCRIPT, run_cli


@pytest.fixture
def audited(cli_env: dict[str, str], settings: Settings) -> Iterator[Engine]:
    """An initialised instance whose log holds 12 events, an hour apart from 2026-11-01."""
    assert run_cli("init", env=cli_env).returncode == 0
    engine = create_engine(settings.database_url)
    fill(engine, 12, keys=KeyringAuditKeys(Keyring.open(settings.keys_dir)))
    yield engine
    engine.dispose()


def ok(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result


def test_list_filters_formats_and_pages(audited: Engine, cli_env: dict[str, str]) -> None:
    table = ok("audit", "list", "--limit", "5", env=cli_env)
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "SEQ",
        "TIME",
        "ACTOR",
        "ACTION",
        "MODEL",
        "DECISION",
        "STATUS",
        "REASON",
    ]
    assert lines[1].split()[:6] == [
        "1",
        "2026-11-01T00:00:00Z",
        "alice",
        "model:predict",
        "iris:1",
        "deny",
    ]
    assert len(lines) == 6 and "more: --after 5" in table.stderr

    page = json.loads(ok("audit", "list", "--after", "5", "--format", "json", env=cli_env).stdout)
    assert [e["seq"] for e in page] == list(range(6, 13))

    denied = json.loads(
        ok(
            "audit",
            *("list", "--decision", "deny", "--actor", "alice", "--format", "json"),
            env=cli_env,
        ).stdout
    )
    assert [e["seq"] for e in denied] == [1]  # i=0: alice, deny; i=12 is not in the log
    assert denied[0]["body_sha256"] and "body" not in denied[0]

    window = ok(
        "audit",
        *("list", "--since", "2026-11-01T03:00:00Z", "--until", "2026-11-01T06:00"),
        *("--model", "digits", "--format", "csv"),
        env=cli_env,
    )
    rows = list(csv.DictReader(io.StringIO(window.stdout)))
    assert [int(r["seq"]) for r in rows] == [4, 6]
    assert all(len(r["mac"]) == 64 for r in rows)

    recent = json.loads(
        ok("audit", "list", "--since", "1h", "--format", "json", env=cli_env).stdout
    )
    assert recent == []  # every event is from 2026-11-01


def test_show_stats_export_and_tail(
    audited: Engine, cli_env: dict[str, str], tmp_path: Path
) -> None:
    shown = ok("audit", "show", "2", env=cli_env).stdout
    assert "actor:         bob" in shown and "request_id:    req-00001" in shown
    as_json = json.loads(ok("audit", "show", "2", "--format", "json", env=cli_env).stdout)
    assert as_json["seq"] == 2 and as_json["latency_ms"] == 3.5
    missing = run_cli("audit", "show", "999", env=cli_env)
    assert missing.returncode == 1 and "no audit event with seq 999" in missing.stderr

    stats = json.loads(
        ok("audit", "stats", "--bucket", "6h", "--format", "json", env=cli_env).stdout
    )
    assert stats["total"] == 12
    assert {r["actor"]: r["count"] for r in stats["by_actor"]} == {
        "alice": 4,
        "bob": 4,
        "carol": 4,
    }
    assert {r["decision"]: r["count"] for r in stats["by_decision"]} == {"allow": 9, "deny": 3}
    assert [(b["start"], b["total"], b["deny"]) for b in stats["buckets"]] == [
        ("2026-11-01T00:00:00Z", 6, 2),
        ("2026-11-01T06:00:00Z", 6, 1),
    ]
    assert "total: 12 events" in ok("audit", "stats", env=cli_env).stdout

    jsonl = ok("audit", "export", "--format", "jsonl", env=cli_env).stdout.splitlines()
    assert [json.loads(line)["seq"] for line in jsonl] == list(range(1, 13))
    exported = tmp_path / "audit.csv"
    result = ok("audit", "export", "--format", "csv", "-o", str(exported), env=cli_env)
    assert "exported 12 events" in result.stderr
    assert len(list(csv.DictReader(exported.open()))) == 12

    tail = ok("audit", "tail", "-n", "2", env=cli_env).stdout.splitlines()
    assert [line.split()[1] for line in tail] == ["#11", "#12"]
    assert "user:bob model:predict model=iris:1 allow 200 reason=rule:1" in tail[0]


def test_tail_follows_new_events(
    audited: Engine, cli_env: dict[str, str], settings: Settings
) -> None:
    follower = subprocess.Popen(
        [str(SCRIPT), "audit", "tail", "-n", "1", "-f", "--interval", "0.1"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert " #12 " in follower.stdout.readline()
        fill(audited, 2, keys=KeyringAuditKeys(Keyring.open(settings.keys_dir)), start=20)
        assert " #13 " in follower.stdout.readline()
        assert " #14 " in follower.stdout.readline()
    finally:
        follower.terminate()
        follower.communicate(timeout=30)


def test_verify_passes_then_names_the_tampered_event(
    audited: Engine, cli_env: dict[str, str]
) -> None:
    good = ok("audit", "verify", env=cli_env)
    assert good.stdout.startswith("intact: 12 events (seq 1..12), 0 checkpoints")
    head_line = good.stdout.splitlines()[-1]
    assert head_line.startswith("head: 12:")

    sql(audited, "UPDATE audit_events SET decision = 'allow' WHERE seq = 5")
    bad = run_cli("audit", "verify", env=cli_env)
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[0].startswith("TAMPERED: event 5: MAC does not match")
    report = json.loads(run_cli("audit", "verify", "--format", "json", env=cli_env).stdout)
    assert report["intact"] is False and report["bad_seq"] == 5 and report["checked"] == 4


def test_verify_with_an_expected_head_detects_a_hidden_truncation(
    audited: Engine, cli_env: dict[str, str]
) -> None:
    saved = ok("audit", "verify", env=cli_env).stdout.splitlines()[-1].removeprefix("head: ")
    with audited.connect() as connection:
        mac9 = connection.execute(sa.text("SELECT mac FROM audit_events WHERE seq = 9")).scalar()
    sql(audited, "DELETE FROM audit_events WHERE seq > 9")
    sql(audited, "UPDATE audit_head SET seq = 9, mac = :mac", mac=mac9)
    ok("audit", "verify", env=cli_env)
    caught = run_cli("audit", "verify", "--expect-head", saved, env=cli_env)
    assert caught.returncode == 1
    assert "TAMPERED: event 10: missing" in caught.stdout
    bad_arg = run_cli("audit", "verify", "--expect-head", "12:zz", env=cli_env)
    assert bad_arg.returncode == 2 and "SEQ:MACHEX" in bad_arg.stderr


def test_prune_and_checkpoint_keep_the_log_verifiable(
    audited: Engine, cli_env: dict[str, str]
) -> None:
    dry = ok("audit", "prune", "--before", "2026-11-01T05:00:00Z", "--dry-run", env=cli_env)
    assert "5 (seq 1..5)" in dry.stdout
    done = ok("audit", "prune", "--before", "2026-11-01T05:00:00Z", "--yes", env=cli_env)
    assert "removed 5 events; prune recorded as event 13; chain now anchored at 5" in done.stdout
    verified = ok("audit", "verify", "--checkpoint", env=cli_env)
    assert "intact: 8 events (seq 6..13)" in verified.stdout
    assert "anchor: 5 (pruned)" in verified.stdout
    assert "checkpoint: event 14" in verified.stdout
    pruned = json.loads(
        ok("audit", "list", "--action", "audit:prune", "--format", "json", env=cli_env).stdout
    )
    assert pruned[0]["detail"]["pruned_count"] == 5 and pruned[0]["actor_kind"] == "os"
    new_head = verified.stdout.splitlines()[-1].removeprefix("head: ")
    ok("audit", "verify", "--expect-head", new_head, env=cli_env)

    sql(audited, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 7")
    assert "TAMPERED: event 7" in run_cli("audit", "verify", env=cli_env).stdout


def _read_only_url(url: str, admin: Engine, role: str) -> str:
    parsed = make_url(url)
    schema = parsed.query["options"]
    assert isinstance(schema, str)
    schema = schema.removeprefix("-csearch_path=")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        connection.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        connection.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
    return parsed.set(username=role).render_as_string(hide_password=False)


def test_an_auditor_needs_only_read_access_and_the_audit_key(
    audited: Engine,
    cli_env: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    keyring = Keyring.open(settings.keys_dir)
    auditor_keys = tmp_path / "auditor-keys"
    auditor_keys.mkdir(mode=0o700)
    shutil.copy2(settings.keys_dir / "keyring.json", auditor_keys)
    for record in keyring.usable(KeyKind.AUDIT):
        shutil.copy2(settings.keys_dir / f"{record.id}.key", auditor_keys)

    role = None
    if settings.database_url.startswith("sqlite"):
        path = make_url(settings.database_url).database
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
    else:
        role = f"smaas_ro_{secrets.token_hex(4)}"
        admin: Engine = request.getfixturevalue("pg_admin")
        url = _read_only_url(settings.database_url, admin, role)
    env = {**cli_env, "SECURE_MAAS_DATABASE_URL": url, "SECURE_MAAS_KEYS_DIR": str(auditor_keys)}
    try:
        assert "intact: 12 events" in ok("audit", "verify", "--jobs", "2", env=env).stdout
        for command in (
            ["list", "--format", "json"],
            ["show", "3"],
            ["stats"],
            ["export", "--format", "csv"],
            ["tail"],
        ):
            ok("audit", *command, env=env)
        refused = run_cli("audit", "prune", "--before", "2026-11-02", "--yes", env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "audit log write failed" in refused.stderr
    finally:
        if role is not None:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
                connection.execute(sa.text(f'DROP ROLE "{role}"'))
