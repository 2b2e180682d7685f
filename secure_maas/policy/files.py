"""Reading `policies/`: YAML files of roles, principals and rules (schema in policies/README.md).

Values come from `yaml.SafeLoader`; line numbers from `yaml.compose` of the same text (which
builds nodes, never objects). Every problem in every file is collected and reported together as
`file:line: reason`, and the whole set is refused if there is any: a half-read policy must never
be applied. Duplicate keys, unknown fields, roles used but not declared and rules given twice are
errors, because each is usually a typo that would otherwise silently change what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from secure_maas.policy.errors import InvalidRule, PolicyError
from secure_maas.policy.rules import (
    Quota,
    Rule,
    check_description,
    check_principal_name,
    check_role_name,
    parse_actions,
)

SCHEMA_VERSION = 1
MAX_FILE_BYTES = 1 << 20
SUFFIXES = (".yaml", ".yml")
TOP_FIELDS = ("version", "roles", "principals", "rules")
ROLE_FIELDS = ("description",)
PRINCIPAL_FIELDS = ("roles", "disabled", "description")
RULE_FIELDS = (
    "effect",
    "subject",
    "model",
    "version",
    "label",
    "actions",
    "valid_from",
    "valid_until",
    "max_rows",
    "max_epsilon",
    "quota",
    "finite_inputs",
    "description",
)

_Path = tuple[str | int, ...]


class PolicyFileError(PolicyError):
    """One or more policy files are malformed; `problems` holds each as `file:line: reason`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = "policy files refused, nothing changed" + (
            f" ({count} problems)" if count > 1 else ""
        )
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class Place:
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class RoleSpec:
    name: str
    description: str | None
    place: Place


@dataclass(frozen=True)
class PrincipalSpec:
    name: str
    roles: tuple[str, ...]
    disabled: bool
    description: str | None
    place: Place


@dataclass
class PolicyDocument:
    """Everything the files describe, merged; what `apply` makes the database match."""

    roles: dict[str, RoleSpec] = field(default_factory=dict)
    principals: dict[str, PrincipalSpec] = field(default_factory=dict)
    rules: dict[str, tuple[Rule, Place]] = field(default_factory=dict)


def policy_files(paths: Iterable[Path]) -> list[Path]:
    """The files named, and the *.yaml / *.yml files under the folders named (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise PolicyFileError([f"{path}: no such file or folder"])
    return found


class _Reader:
    """Collects problems while turning one file's data into specs."""

    def __init__(self, file: Path, lines: dict[_Path, int], problems: list[str]) -> None:
        self.file = file
        self.lines = lines
        self.problems = problems

    def place(self, path: _Path) -> Place:
        while path and path not in self.lines:
            path = path[:-1]
        return Place(self.file, self.lines.get(path, 1))

    def problem(self, path: _Path, message: str) -> None:
        self.problems.append(f"{self.place(path)}: {message}")

    def mapping(self, value: Any, path: _Path, what: str) -> Mapping[Any, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"{what} must be a mapping")
            return None
        return value

    def fields(self, data: Mapping[Any, Any], path: _Path, known: Sequence[str], what: str) -> bool:
        unknown = [k for k in data if k not in known]
        for key in unknown:
            self.problem(
                (*path, str(key)), f"unknown {what} field {key!r} (known: {', '.join(known)})"
            )
        return not unknown


def _locate(
    node: yaml.Node,
    path: _Path,
    lines: dict[_Path, int],
    problems: list[str],
    file: Path,
    walked: set[int] | None = None,
) -> None:
    """Record the line of every mapping key and sequence item; report duplicate keys.

    An alias shares its anchor's node: each node is walked once (a path under an alias takes
    the alias's line), so a few lines of nested aliases cannot make this walk exponential."""
    walked = set() if walked is None else walked
    if id(node) in walked:
        return
    walked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(f"{file}:{line}: mapping keys must be plain names")
                continue
            key = str(key_node.value)
            if key in seen:
                problems.append(f"{file}:{line}: duplicate key {key!r} (first at line {seen[key]})")
            seen[key] = line
            lines[(*path, key)] = line
            _locate(value_node, (*path, key), lines, problems, file, walked)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _locate(item, (*path, index), lines, problems, file, walked)


class _SafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader`, except that a tagged scalar it cannot read (`!!int abc`,
    `!!bool maybe`, `!!timestamp nope`), on which PyYAML's constructors raise ValueError,
    KeyError or AttributeError, is a `ConstructorError` at that node's line like any other."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            problem = f"cannot read {node.tag} value {str(node.value)[:40]!r} ({exc})"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from exc


def _parse(file: Path, problems: list[str]) -> tuple[Any, dict[_Path, int]] | None:
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            problems.append(f"{file}:1: larger than {MAX_FILE_BYTES} bytes")
            return None
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{file}:1: cannot read: {exc}")
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        problems.append(f"{file}:1: not valid YAML: nested too deeply")
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problems.append(f"{file}:{line}: not valid YAML: {exc.problem or exc}")
        return None
    except yaml.YAMLError as exc:
        problems.append(f"{file}:1: not valid YAML: {exc}")
        return None
    lines: dict[_Path, int] = {}
    before = len(problems)
    if node is not None:
        _locate(node, (), lines, problems, file)
    return (None, lines) if len(problems) > before else (data, lines)


def load(paths: Iterable[Path]) -> PolicyDocument:
    """Read and check every policy file under `paths`; raise `PolicyFileError` on any problem."""
    problems: list[str] = []
    document = PolicyDocument()
    files = policy_files(paths)
    if not files:
        raise PolicyFileError([f"{', '.join(str(p) for p in paths)}: no *.yaml policy files"])
    used_roles: list[tuple[str, Place]] = []
    for file in files:
        parsed = _parse(file, problems)
        if parsed is None or parsed[0] is None:
            continue
        data, lines = parsed
        reader = _Reader(file, lines, problems)
        top = reader.mapping(data, (), "a policy file")
        if top is None or not reader.fields(top, (), TOP_FIELDS, "top-level"):
            continue
        if top.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
            reader.problem(("version",), f"unsupported schema version (this is {SCHEMA_VERSION})")
            continue
        _read_roles(reader, top.get("roles"), document)
        used_roles += _read_principals(reader, top.get("principals"), document)
        used_roles += _read_rules(reader, top.get("rules"), document)
    for role, place in used_roles:
        if role not in document.roles:
            problems.append(f"{place}: role {role!r} is not declared under `roles:`")
    if problems:
        raise PolicyFileError(problems)
    return document


def _read_roles(reader: _Reader, value: Any, document: PolicyDocument) -> None:
    roles = reader.mapping(value, ("roles",), "roles")
    for name, body in (roles or {}).items():
        path: _Path = ("roles", str(name))
        data = reader.mapping(body, path, f"role {name}")
        if data is None or not reader.fields(data, path, ROLE_FIELDS, "role"):
            continue
        try:
            spec = RoleSpec(
                check_role_name(name),
                check_description(data.get("description")),
                reader.place(path),
            )
        except InvalidRule as exc:
            reader.problem(path if exc.field is None else (*path, exc.field), str(exc))
            continue
        if name in document.roles:
            reader.problem(path, f"role {name!r} is also declared at {document.roles[name].place}")
            continue
        document.roles[name] = spec


def _read_principals(
    reader: _Reader, value: Any, document: PolicyDocument
) -> list[tuple[str, Place]]:
    used: list[tuple[str, Place]] = []
    principals = reader.mapping(value, ("principals",), "principals")
    for name, body in (principals or {}).items():
        path: _Path = ("principals", str(name))
        data = reader.mapping(body, path, f"principal {name}")
        if data is None or not reader.fields(data, path, PRINCIPAL_FIELDS, "principal"):
            continue
        roles = data.get("roles") or []
        disabled = data.get("disabled", False)
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            reader.problem((*path, "roles"), "roles must be a list of role names")
            continue
        if not isinstance(disabled, bool):
            reader.problem((*path, "disabled"), "disabled must be true or false")
            continue
        try:
            spec = PrincipalSpec(
                check_principal_name(name),
                tuple(sorted(set(roles))),
                disabled,
                check_description(data.get("description")),
                reader.place(path),
            )
        except InvalidRule as exc:
            reader.problem(path if exc.field is None else (*path, exc.field), str(exc))
            continue
        if name in document.principals:
            other = document.principals[name].place
            reader.problem(path, f"principal {name!r} is also declared at {other}")
            continue
        document.principals[name] = spec
        used += [(role, reader.place((*path, "roles"))) for role in spec.roles]
    return used


def _read_rules(reader: _Reader, value: Any, document: PolicyDocument) -> list[tuple[str, Place]]:
    used: list[tuple[str, Place]] = []
    if value is None:
        return used
    if not isinstance(value, list):
        reader.problem(("rules",), "rules must be a list")
        return used
    for index, body in enumerate(value):
        path: _Path = ("rules", index)
        data = reader.mapping(body, path, "a rule")
        if data is None or not reader.fields(data, path, RULE_FIELDS, "rule"):
            continue
        missing = [name for name in ("effect", "subject", "actions") if name not in data]
        if missing:
            reader.problem(path, f"a rule needs {', '.join(missing)}")
            continue
        try:
            rule = _rule(data)
        except InvalidRule as exc:
            reader.problem(path if exc.field is None else (*path, exc.field), str(exc))
            continue
        place = reader.place(path)
        if rule.key in document.rules:
            other = document.rules[rule.key][1]
            reader.problem(path, f"same effect, subject, model and actions as the rule at {other}")
            continue
        document.rules[rule.key] = (rule, place)
        if rule.subject.startswith("role:"):
            used.append((rule.subject.removeprefix("role:"), reader.place((*path, "subject"))))
    return used


def _rule(data: Mapping[str, Any]) -> Rule:
    actions = data["actions"]
    quota = data.get("quota")
    if quota is None:
        quotas: list[Mapping[str, Any]] = []
    elif isinstance(quota, Mapping):
        quotas = [quota]
    elif isinstance(quota, list) and all(isinstance(q, Mapping) for q in quota):
        quotas = quota
    else:
        raise InvalidRule(
            "quota must be a mapping (per, requests, rows) or a list of them", field="quota"
        )
    return Rule(
        effect=data["effect"],
        subject=data["subject"],
        actions=parse_actions((actions,) if isinstance(actions, str) else actions),
        model=data.get("model", "*"),
        version=data.get("version"),
        label=data.get("label"),
        valid_from=data.get("valid_from"),
        valid_until=data.get("valid_until"),
        max_rows=data.get("max_rows"),
        max_epsilon=data.get("max_epsilon"),
        quotas=tuple(Quota.from_mapping(q) for q in quotas),
        finite_inputs=data.get("finite_inputs", False),
        description=data.get("description"),
    )
