"""Audit keys come in generations; a leaked old key cannot rewrite what followed it.

The forgery reproduced here: with a copy of the audit key rotated out, rewrite an event written
after the rotation, re-MAC the rest of the chain and the head with the old key id. Before the
fix `audit verify` accepted any known audit key at any position and said intact. Now the
keyring manifest (on the key host) records the old key's rotation point, and the key generation
never goes back along the chain, so verify names the first rewritten event. On both databases.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.audit import AuditUnavailable, AuditWriter, KeyringAuditKeys, StaticAuditKeys
from secure_maas.audit import parallel as parallel_verify
from secure_maas.audit.chain import compute_mac
from secure_maas.audit.encoding import canonical_v2
from secure_maas.audit.models import CANONICAL_COLUMNS, events_table, head_table
from secure_maas.audit.rotation import rotate_audit_key
from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.keys import KeyKind, Keyring
from tests.functional.audit_support import assert_bad, check, event, fill
from tests.functional.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _keys(folder: Path) -> KeyringAuditKeys:
    """The audit keys as a separate process reads them (its own `Keyring` object)."""
    return KeyringAuditKeys(Keyring.open(folder))


def _forge_from(engine: Engine, first: int, key_id: str, key: bytes) -> None:
    """Rewrite event `first` (actor mallory) and re-MAC it and every later event, and the head,
    with `key` under `key_id`: what a holder of that key and database write access can do."""
    columns = [events_table.c[name] for name in (*CANONICAL_COLUMNS, "mac")]
    with engine.begin() as connection:
        previous = connection.execute(
            sa.select(events_table.c.mac).where(events_table.c.seq == first - 1)
        ).scalar_one()
        rows = connection.execute(
            sa.select(*columns).where(events_table.c.seq >= first).order_by(events_table.c.seq)
        ).all()
        for row in rows:
            values = dict(zip((*CANONICAL_COLUMNS, "mac"), row, strict=True))
            raw_at = connection.execute(
                sa.select(sa.type_coerce(events_table.c.at, sa.String)).where(
                    events_table.c.seq == values["seq"]
                )
            ).scalar_one()
            if values["seq"] == first:
                values["actor"] = "mallory"
            values["key_id"] = key_id
            encoded = canonical_v2(
                [values["seq"], raw_at, *[values[n] for n in CANONICAL_COLUMNS[2:]]]
            )
            mac = compute_mac(key, encoded, bytes(previous))
            connection.execute(
                sa.update(events_table)
                .where(events_table.c.seq == values["seq"])
                .values(actor=values["actor"], key_id=key_id, mac=mac)
            )
            previous = mac
        connection.execute(sa.update(head_table).values(mac=previous, key_id=key_id))


@pytest.fixture
def rotated(migrated_engine: Engine, tmp_path: Path) -> tuple[Path, str, str]:
    """Events 1-5 under the first audit key, the rotation (keys:rotate, event 6, still under
    the old key; the new key's opening checkpoint, event 7), events 8-10 under the new key."""
    folder = tmp_path / "keys"
    Keyring.init(folder)
    old = Keyring.open(folder).active(KeyKind.AUDIT).id
    fill(migrated_engine, 5, keys=_keys(folder))
    done = rotate_audit_key(migrated_engine, Keyring.open(folder), actor="admin")
    assert (done.event.seq, done.event.key_id, done.event.action) == (6, old, "keys:rotate")
    assert (done.opening.seq, done.opening.key_id) == (7, done.key.id)
    assert done.opening.details["last_seq"] == done.last_seq == 6
    fill(migrated_engine, 3, keys=_keys(folder), start=5)
    return folder, old, done.key.id


def test_the_rotation_point_is_recorded_in_the_manifest(rotated: tuple[Path, str, str]) -> None:
    folder, old, new = rotated
    manifest = json.loads((folder / "keyring.json").read_text())
    by_id = {key["id"]: key for key in manifest["keys"]}
    assert by_id[old]["status"] == "previous" and by_id[old]["last_seq"] == 6
    assert by_id[new]["status"] == "active" and "last_seq" not in by_id[new]
    keys = _keys(folder)
    assert keys.generation(old) is not None and keys.generation(new) is not None
    assert keys.generation(old).generation < keys.generation(new).generation  # type: ignore[union-attr]


def test_an_old_key_cannot_rewrite_an_event_after_the_rotation(
    migrated_engine: Engine, rotated: tuple[Path, str, str]
) -> None:
    folder, old, _new = rotated
    report = check(migrated_engine, _keys(folder))
    assert report.intact, report.problem
    assert report.last_seq == 10
    leaked = Keyring.open(folder).secret_key(old).material  # the attacker's copy
    _forge_from(migrated_engine, 9, old, leaked)
    assert_bad(
        check(migrated_engine, _keys(folder)), 9, f"MAC key {old} was rotated out after seq 6"
    )


def test_an_old_key_cannot_rewrite_the_rotation_itself(
    migrated_engine: Engine, rotated: tuple[Path, str, str]
) -> None:
    # From the rotation event on, every event under the old key: the generation never goes
    # back here, only the rotation point in the manifest catches it.
    folder, old, new = rotated
    keyring = Keyring.open(folder)
    leaked = keyring.secret_key(old).material
    _forge_from(migrated_engine, 7, old, leaked)
    assert_bad(check(migrated_engine, _keys(folder)), 7, "rotated out after seq 6")
    # What verification said before: any known key at any position, so "intact".
    unbounded = StaticAuditKeys({old: leaked, new: keyring.secret_key(new).material}, new)
    assert check(migrated_engine, unbounded).intact


def test_the_generation_never_goes_back(migrated_engine: Engine) -> None:
    # Keys without a recorded rotation point (rotated by an older release): an event under
    # the older key after one under the newer key is refused all the same.
    both = StaticAuditKeys({"k1": b"1" * 32, "k2": b"2" * 32}, "k2")
    fill(migrated_engine, 3, keys=StaticAuditKeys({"k1": b"1" * 32}, "k1"))
    fill(migrated_engine, 3, keys=both, start=3)
    assert check(migrated_engine, both).intact
    _forge_from(migrated_engine, 5, "k1", b"1" * 32)
    assert_bad(check(migrated_engine, both), 5, "keys never go back along the chain")


def test_parallel_verification_names_the_same_event(
    migrated_engine: Engine, rotated: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel_verify, "MIN_EVENTS", 5)
    folder, old, _new = rotated
    fill(migrated_engine, 20, keys=_keys(folder), start=10)
    assert check(migrated_engine, _keys(folder), jobs=3).intact
    _forge_from(migrated_engine, 8, old, Keyring.open(folder).secret_key(old).material)
    assert_bad(check(migrated_engine, _keys(folder), jobs=3), 8, "rotated out after seq 6")


def test_a_writer_created_before_the_rotation_writes_with_the_new_key(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "keys"
    Keyring.init(folder)
    old = Keyring.open(folder).active(KeyKind.AUDIT).id
    with AuditWriter(migrated_engine, _keys(folder)) as writer:  # a long-running worker
        before = [writer.append(event(i)) for i in range(3)]
        # Another process rotates (its own keyring object, as `keys rotate` would).
        done = rotate_audit_key(migrated_engine, Keyring.open(folder), actor="a")
        after = [writer.append(event(i)) for i in range(3, 6)]
    assert [r.key_id for r in before] == [old] * 3
    assert (done.event.seq, done.opening.seq) == (4, 5)
    assert [r.seq for r in after] == [6, 7, 8]
    assert [r.key_id for r in after] == [done.key.id] * 3
    report = check(migrated_engine, _keys(folder))
    assert report.intact, report.problem


def test_an_instance_with_a_stale_keyring_copy_fails_closed_until_it_gets_the_new_key(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    host, copy = tmp_path / "keys", tmp_path / "other-instance-keys"
    Keyring.init(host)
    shutil.copytree(host, copy)
    with AuditWriter(migrated_engine, _keys(copy)) as writer:
        writer.append(event(0))
        created = rotate_audit_key(migrated_engine, Keyring.open(host), actor="admin").key
        # The head now carries a key this instance's copy lacks: it must not write with the
        # old one (every event after the rotation point would be refused by verify).
        with pytest.raises(AuditUnavailable, match="copy the keyring"):
            writer.append(event(1))
        for name in ("keyring.json", f"{created.id}.key"):
            shutil.copy2(host / name, copy / name)
        assert writer.append(event(2)).key_id == created.id
    report = check(migrated_engine, _keys(host))
    assert report.intact, report.problem


def test_keys_rotate_kind_audit_from_the_cli_contains_a_leaked_key(
    cli_env: dict[str, str], settings: Settings
) -> None:
    assert run_cli("init", env=cli_env).returncode == 0
    engine = create_engine(settings.database_url)
    try:
        fill(engine, 4, keys=_keys(settings.keys_dir))
        old = Keyring.open(settings.keys_dir).active(KeyKind.AUDIT).id
        rotated = run_cli("keys", "rotate", "--kind", "audit", env=cli_env)
        assert rotated.returncode == 0, rotated.stderr
        assert f"{old} kept to verify events up to seq" in rotated.stdout
        last_seq = Keyring.open(settings.keys_dir).get(old).last_seq
        assert last_seq is not None
        fill(engine, 3, keys=_keys(settings.keys_dir), start=4)
        intact = run_cli("audit", "verify", env=cli_env)
        assert intact.returncode == 0
        assert f"{old} (generation 1, up to seq {last_seq})" in intact.stdout
        report = json.loads(run_cli("audit", "verify", "--format", "json", env=cli_env).stdout)
        assert report["keys"][0] == {"id": old, "generation": 1, "last_seq": last_seq}
        assert report["keys"][1]["generation"] == 2 and report["keys"][1]["last_seq"] is None
        leaked = Keyring.open(settings.keys_dir).secret_key(old).material
        _forge_from(engine, last_seq + 2, old, leaked)
        result = run_cli("audit", "verify", env=cli_env)
        assert result.returncode == 1
        assert f"TAMPERED: event {last_seq + 2}: MAC key {old} was rotated out" in result.stdout
        events = json.loads(run_cli("audit", "list", "--format", "json", env=cli_env).stdout)
        assert [e["action"] for e in events].count("keys:rotate") == 1
    finally:
        engine.dispose()


def test_a_rotation_also_bounds_keys_rotated_before_rotation_points_existed(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "keys"
    Keyring.init(folder)
    first = Keyring.open(folder).active(KeyKind.AUDIT).id
    fill(migrated_engine, 3, keys=_keys(folder))
    Keyring.open(folder).rotate(KeyKind.AUDIT)  # as an older release did: no rotation point
    fill(migrated_engine, 3, keys=_keys(folder), start=3)
    assert Keyring.open(folder).get(first).last_seq is None
    rotate_audit_key(migrated_engine, Keyring.open(folder), actor="admin")  # events 7 and 8
    fill(migrated_engine, 3, keys=_keys(folder), start=6)
    keyring = Keyring.open(folder)
    assert [r.last_seq for r in keyring.records if r.kind is KeyKind.AUDIT] == [7, 7, None]
    assert check(migrated_engine, _keys(folder)).intact
    _forge_from(migrated_engine, 8, first, keyring.secret_key(first).material)
    assert_bad(check(migrated_engine, _keys(folder)), 8, f"MAC key {first} was rotated out")


def test_every_writer_process_switches_at_the_rotation_point(
    migrated_engine: Engine, database_url: str, tmp_path: Path
) -> None:
    # Two writer processes (as two workers or instances sharing the key host's keyring), four
    # threads each, appending without pause while another process rotates the audit key.
    folder = tmp_path / "keys"
    Keyring.init(folder)
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.functional.audit_child",
                database_url,
                "0",
                "4",
                str(folder),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline() == "ready\n", child.stderr and child.stderr.read()
            child.stdin.write("go\n")
            child.stdin.close()
        for child in children:
            _read_past(child, 10)
        done = rotate_audit_key(migrated_engine, Keyring.open(folder), actor="admin")
        for child in children:  # each writes on, well past the rotation point
            _read_past(child, done.opening.seq + 20)
    finally:
        for child in children:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    report = check(migrated_engine, _keys(folder))
    assert report.intact, report.problem
    with migrated_engine.connect() as connection:
        keys_after = connection.execute(
            sa.select(events_table.c.key_id).where(events_table.c.seq > done.last_seq).distinct()
        ).scalars()
        assert set(keys_after) == {done.key.id}
        keys_before = connection.execute(
            sa.select(events_table.c.key_id).where(events_table.c.seq <= done.last_seq).distinct()
        ).scalars()
        assert set(keys_before) == {done.previous.id}


def _read_past(child: subprocess.Popen[str], seq: int) -> None:
    """Read the acknowledged seqs `child` prints until one is above `seq` (bounded)."""
    assert child.stdout is not None
    for _ in range(100_000):
        line = child.stdout.readline()
        assert line, child.stderr and child.stderr.read()
        if int(line) > seq:
            return
    raise AssertionError(f"no event past {seq} acknowledged")
