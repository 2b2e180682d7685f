"""Reading policies/: the example set loads; every malformed file is refused with file:line.

`load` lets no other exception out than `PolicyFileError` (not PyYAML's, not a rule check's,
not a `RecursionError`), and walks each node of a document once, however many aliases name it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from secure_maas.actions import Action
from secure_maas.policy.errors import InvalidRule
from secure_maas.policy.files import PolicyFileError, load
from secure_maas.policy.rules import Quota, Rule

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


# -- what tests/system/test_fuzz.py found: each is a `file:line: reason` problem -------------

RULE = "roles: {a: {}}\nrules:\n  - {effect: allow, subject: role:a, actions: [model:predict], "


def refused(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(PolicyFileError) as error:
        load([path])
    for problem in error.value.problems:
        assert problem.startswith(f"{path}:")
    return [problem.removeprefix(f"{path}:") for problem in error.value.problems]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("version: 1\nroles: !!int abc\n", "2: not valid YAML: cannot read tag:yaml.org,2002:int"),
        ("version: !!bool maybe\n", "1: not valid YAML: cannot read tag:yaml.org,2002:bool"),
        ("roles:\n  a: {description: !!timestamp nope}\n", "2: not valid YAML: cannot read"),
        ("version: !!float x\n", "1: not valid YAML: cannot read tag:yaml.org,2002:float"),
        ("[" * 5000 + "]" * 5000 + "\n", "1: not valid YAML: nested too deeply"),
        (RULE + "quota: {per: day, requests: 1, 1: 2, x: 3}}\n",
         "3: unknown quota field 1 (per, requests, rows)"),
        (RULE + "valid_from: 0001-01-01 00:00:00+05:00}\n",
         "3: valid_from 0001-01-01T00:00:00+05:00 is out of range"),
        (RULE + "valid_from: '0001-01-01T00:00:00+05:00'}\n", "3: valid_from 0001-01-01"),
        (RULE + "valid_until: '9999-12-31T23:59:59-05:00'}\n",
         "3: valid_until 9999-12-31T23:59:59-05:00 is out of range"),
    ],
)  # fmt: skip
def test_each_finding_is_a_problem_with_its_line(tmp_path: Path, text: str, want: str) -> None:
    problems = refused(tmp_path, text)
    assert any(problem.startswith(want) for problem in problems), problems


def test_nested_aliases_are_walked_once(tmp_path: Path) -> None:
    """Seven lines whose aliases expand to 10**7 nodes are read in well under 2 s: each node is
    walked once (walking the expansion takes 21 s, and ten times as long per extra line)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    started = time.monotonic()
    problems = refused(tmp_path, "\n".join(lines) + "\n")
    assert time.monotonic() - started < 2.0
    assert problems[0].startswith("1: unknown top-level field 'a0'")


def test_aliases_still_work_and_keep_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "roles:\n  a: &role {description: same}\n  b: *role\nprincipals:\n  p: {roles: [a, b]}\n"
    )
    document = load([path])
    assert document.roles["b"].description == "same" and document.roles["b"].place.line == 3
    assert refused(tmp_path, "roles:\n  a: &r {x: 1}\n  b: *r\n")[0].startswith("2: unknown role")


def test_the_rule_checks_raise_invalid_rule() -> None:
    with pytest.raises(InvalidRule, match="unknown quota field 1"):
        Quota.from_mapping({"per": "day", "requests": 1, 1: 2, "x": 3})  # type: ignore[dict-item]
    with pytest.raises(InvalidRule, match="out of range") as error:
        Rule("allow", "*", ("model:list",), valid_from="0001-01-01T00:00:00+05:00")  # type: ignore[arg-type]
    assert error.value.field == "valid_from"
