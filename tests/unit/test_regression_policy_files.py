"""Regressions found by fuzzing policy files (issue 8, tests/system/test_fuzz.py): `load` let
other exceptions than `PolicyFileError` out (ValueError, KeyError, AttributeError from PyYAML's
tagged scalars, RecursionError, TypeError, OverflowError from the rule checks) and spent
exponential time on a few lines of nested aliases. Each is now a `file:line: reason` problem."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from secure_maas.policy.errors import InvalidRule
from secure_maas.policy.files import PolicyFileError, load
from secure_maas.policy.rules import Quota, Rule

RULE = "roles: {a: {}}\nrules:\n  - {effect: allow, subject: role:a, actions: [model:predict], "


def refused(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
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
    """Seven lines whose aliases expand to 10**7 nodes: took 21 s (and ten times as long per
    extra line) before each node was walked once."""
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
