"""policies/ as code on SQLite and PostgreSQL: apply is idempotent, a dry run changes nothing,
prune removes what the files dropped, export round-trips, a malformed set changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from secure_maas.actions import Action
from secure_maas.db.session import session_factory, session_scope
from secure_maas.db.state import StateVersion
from secure_maas.policy import Rule, directory, grants, sync
from secure_maas.policy.files import PolicyFileError

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"


def snapshot(engine: Engine) -> dict[str, object]:
    """Every row of the access tables and the counters, for "nothing changed" checks."""
    tables = ["principals", "roles", "principal_roles", "access_rules"]
    with engine.connect() as connection:
        found: dict[str, object] = {
            t: sorted(map(tuple, connection.execute(sa.text(f"SELECT * FROM {t}"))), key=repr)
            for t in tables
        }
        found["counters"] = sorted(
            map(tuple, connection.execute(sa.select(StateVersion.scope, StateVersion.version)))
        )
    return found


def apply(engine: Engine, *paths: Path, **options: bool) -> sync.PolicyDiff:
    with session_scope(session_factory(engine)) as session:
        return sync.apply(session, list(paths), actor="test", **options)


def export(engine: Engine) -> str:
    with session_scope(session_factory(engine)) as session:
        return sync.export(session)


def test_apply_is_idempotent_and_export_round_trips(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    first = apply(migrated_engine, EXAMPLES)
    assert first.applied
    assert "+ principal carol: roles analyst, disabled" in first.lines()
    assert sum(c.kind == "rule" for c in first.changes) == 4
    assert first.summary() == f"added {len(first.changes)}, changed 0, removed 0"
    assert apply(migrated_engine, EXAMPLES).empty

    text = export(migrated_engine)
    exported = tmp_path / "exported.yaml"
    exported.write_text(text)
    before = snapshot(migrated_engine)
    assert apply(migrated_engine, exported, prune=True).empty
    assert snapshot(migrated_engine) == before
    assert export(migrated_engine) == text
    with session_scope(session_factory(migrated_engine)) as session:
        assert sync.diff(session, [EXAMPLES]).empty


def test_dry_run_changes_nothing(migrated_engine: Engine) -> None:
    before = snapshot(migrated_engine)
    planned = apply(migrated_engine, EXAMPLES, dry_run=True)
    assert not planned.empty and not planned.applied
    assert planned.summary().startswith("dry run, nothing changed:")
    assert snapshot(migrated_engine) == before
    assert apply(migrated_engine, EXAMPLES).lines() == planned.lines()


def test_extras_are_kept_unless_pruned(migrated_engine: Engine) -> None:
    apply(migrated_engine, EXAMPLES)
    with session_scope(session_factory(migrated_engine)) as session:
        directory.add_principal(session, "mallory", actor="ops", roles=["intruder"])
        extra, _ = grants.grant(
            session, Rule("allow", "user:mallory", (Action.MODEL_PREDICT,)), actor="ops"
        )
    kept = apply(migrated_engine, EXAMPLES)
    assert kept.empty
    assert sorted(str(c) for c in kept.kept) == sorted(
        [
            f"- rule {extra.id} allow user:mallory * [model:predict]",
            "- principal mallory",
            "- role intruder",
        ]
    )
    with session_scope(session_factory(migrated_engine)) as session:
        assert len(sync.diff(session, [EXAMPLES]).changes) == 3
    pruned = apply(migrated_engine, EXAMPLES, prune=True)
    assert len(pruned.changes) == 3 and not pruned.kept
    with session_scope(session_factory(migrated_engine)) as session:
        assert directory.find_principal(session, "mallory") is None
        assert directory.find_role(session, "intruder") is None
        assert extra.id not in [r.id for r in grants.load_rules(session)]
    assert apply(migrated_engine, EXAMPLES, prune=True).empty


def test_changed_conditions_update_in_place_and_principals_follow_the_files(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(EXAMPLES, folder)
    apply(migrated_engine, folder)
    with session_scope(session_factory(migrated_engine)) as session:
        ids = {r.model: r.id for r in grants.load_rules(session) if r.subject == "role:analyst"}
        directory.set_disabled(session, "alice", True)  # drift made by hand
    policy = folder / "access.yaml"
    data = yaml.safe_load(policy.read_text())
    digits = next(r for r in data["rules"] if r.get("model") == "digits*")
    digits["max_rows"] = 500
    data["principals"]["bob"]["roles"] = ["auditor", "analyst"]
    policy.write_text(yaml.safe_dump(data))
    lines = apply(migrated_engine, folder).lines()
    assert any(
        line.startswith(f"~ rule {ids['digits*']}: ")
        and line.endswith("-max_rows=1000 +max_rows=500")
        for line in lines
    ), lines
    assert "~ principal alice: disabled True -> False" in lines
    assert "~ principal bob: roles auditor -> analyst,auditor" in lines
    with session_scope(session_factory(migrated_engine)) as session:
        after = {r.model: r for r in grants.load_rules(session) if r.subject == "role:analyst"}
        assert after["digits*"].id == ids["digits*"] and after["digits*"].max_rows == 500
        assert directory.get_principal(session, "bob").role_names == ("analyst", "auditor")


def test_a_malformed_set_is_refused_whole_and_changes_nothing(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(EXAMPLES, folder)
    (folder / "zz-broken.yaml").write_text(
        "rules:\n  - effect: allow\n    subject: role:analyst\n    actions: [model:predcit]\n"
    )
    before = snapshot(migrated_engine)
    with pytest.raises(PolicyFileError) as caught:
        apply(migrated_engine, folder)
    assert caught.value.problems == [
        f"{folder / 'zz-broken.yaml'}:4: unknown action 'model:predcit' "
        f"(one of {', '.join(Action)})"  # every action, in their declared order
    ]
    assert snapshot(migrated_engine) == before
