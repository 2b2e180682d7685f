"""Reading policies/: the example set loads; every malformed file is refused with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_maas.actions import Action
from secure_maas.policy.files import PolicyFileError, load

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
version: 1
roles:
  analyst:
    description: analysts
  auditor:
principals:
  alice:
    roles: [analyst]
  bob: {}
rules:
  - effect: allow
    subject: role:analyst
    model: digits*
    actions: model:predict
    quota: {per: minute, requests: 60}
  - effect: deny
    subject: "*"
    label: canary
    actions: [model:predict, model:list]
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_example_set_loads() -> None:
    document = load([ROOT / "policies"])
    assert set(document.roles) == {"analyst", "auditor"}
    assert document.principals["carol"].disabled
    assert document.principals["alice"].roles == ("analyst",)
    rules = [rule for rule, _place in document.rules.values()]
    analyst = [r for r in rules if r.subject == "role:analyst" and r.effect == "allow"]
    assert {r.model for r in analyst} == {"digits*", "breast_cancer*"}
    assert all(r.max_epsilon == 3 and r.max_rows == 1000 for r in analyst)
    assert any(r.effect == "deny" for r in rules)


def test_a_good_file_reads_with_defaults(tmp_path: Path) -> None:
    document = load([write(tmp_path, GOOD)])
    assert document.roles["auditor"].description is None
    assert document.principals["bob"].roles == ()
    (allow, place), (deny, _) = document.rules.values()
    assert allow.actions == (Action.MODEL_PREDICT,) and allow.quotas[0].requests == 60
    assert str(place) == f"{tmp_path / 'policy.yaml'}:11"
    assert deny.model == "*" and deny.label == "canary"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("roles: [analyst\n", 2, "not valid YAML"),
        ("rules:\n  - effect: allow\n    subject: *\n", 3, "not valid YAML"),
        ("- just\n- a list\n", 1, "a policy file must be a mapping"),
        ("version: 2\n", 1, "unsupported schema version"),
        ("rolez: {}\n", 1, "unknown top-level field 'rolez'"),
        ("roles:\n  a:\n  a:\n", 3, "duplicate key 'a' (first at line 2)"),
        ("roles:\n  bad name: {}\n", 2, "invalid role name"),
        ("roles:\n  a:\n    colour: red\n", 3, "unknown role field 'colour'"),
        ("principals:\n  alice:\n    roles: [ghost]\n", 3, "role 'ghost' is not declared"),
        ("principals:\n  alice:\n    roles: analyst\n", 3, "roles must be a list"),
        ("principals:\n  alice:\n    disabled: maybe\n", 3, "disabled must be true or false"),
        ("rules: {}\n", 1, "rules must be a list"),
        ("rules:\n  - effect: allow\n    subject: '*'\n", 2, "a rule needs actions"),
        (
            "rules:\n  - effect: allow\n    subject: '*'\n    actions: [model:predcit]\n",
            4,
            "unknown action 'model:predcit'",
        ),
        (
            "rules:\n  - effect: allow\n    subject: role:nobody\n    actions: [model:list]\n",
            3,
            "role 'nobody' is not declared",
        ),
        (
            "rules:\n  - effect: allow\n    subject: '*'\n    actions: [model:list]\n"
            "    quota: {per: fortnight, requests: 1}\n",
            5,
            "not one of minute, hour, day",
        ),
        (
            "rules:\n  - effect: allow\n    subject: '*'\n    actions: [model:list]\n"
            "    valid_from: 2027-01-01\n",
            5,
            "UTC offset",
        ),
        (
            "rules:\n  - effect: allow\n    subject: '*'\n    actions: [model:list]\n"
            "    max_epsilon: lots\n",
            5,
            "max_epsilon must be a number",
        ),
        (
            "rules:\n  - {effect: allow, subject: '*', actions: [model:list]}\n"
            "  - {effect: allow, subject: '*', actions: [model:list], max_rows: 3}\n",
            3,
            "same effect, subject, model and actions as the rule at",
        ),
        (
            "rules:\n  - effect: allow\n    subject: '*'\n    actions: [model:list]\n    x: 1\n",
            5,
            "unknown rule field 'x'",
        ),
    ],
)
def test_malformed_files_are_refused_with_file_line_and_reason(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyFileError) as caught:
        load([path])
    assert len(caught.value.problems) >= 1
    assert any(p.startswith(f"{path}:{line}: ") and message in p for p in caught.value.problems), (
        caught.value.problems
    )
    assert "nothing changed" in str(caught.value)


def test_every_problem_of_every_file_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "roles:\n  analyst: {}\n", "a.yaml")
    write(tmp_path, "roles:\n  analyst: {}\nprincipals:\n  x:\n    roles: [nope]\n", "b.yaml")
    write(tmp_path, "rules: 3\n", "c.yml")
    (tmp_path / "notes.txt").write_text("not a policy")
    with pytest.raises(PolicyFileError) as caught:
        load([tmp_path])
    problems = caught.value.problems
    assert len(problems) == 3
    assert any("b.yaml:2: role 'analyst' is also declared at" in p for p in problems)
    assert any("b.yaml:5: role 'nope' is not declared" in p for p in problems)
    assert any("c.yml:1: rules must be a list" in p for p in problems)


def test_an_empty_folder_or_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="no \\*.yaml policy files"):
        load([tmp_path])
    with pytest.raises(PolicyFileError, match="no such file"):
        load([tmp_path / "missing.yaml"])


def test_yaml_tags_are_not_constructed(tmp_path: Path) -> None:
    path = write(tmp_path, "roles: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(PolicyFileError, match="not valid YAML"):
        load([path])
