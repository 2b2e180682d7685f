"""What a rule is: effect, subject, model scope, actions and conditions, validated once.

A `Rule` is immutable and checked when built, so every other module (the index, the store, the
file loader) can trust its fields. Names follow one grammar each:

- principal: letters, digits and `._@:|+-`, up to 128 (external subjects may be e-mail
  addresses or `provider|id`); names beginning `ext:` are reserved for subjects of an external
  identity provider, `ext:<alias>:<sub>` (alias: lower-case letters and digits), so no local
  principal can ever be named like one;
- role: letters, digits and `._-`, up to 64;
- model pattern: a registry model name, or a glob of one (`*`, `?`, `[...]`), up to 64.

Deny rules take only a validity window: a deny "unless under quota" or "unless rows <= N" would
turn a deny into an allow-by-omission, which is not what anyone writing a deny means.
`finite_inputs: true` (allow rules only) makes the allow hold only for requests whose float
inputs are all finite (no NaN or ±Infinity, which the APIs otherwise accept as TF Serving does).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from secure_maas.actions import Action
from secure_maas.policy.errors import InvalidRule
from secure_maas.timeutil import isoformat

PRINCIPAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:|+\-]{0,127}$")
EXTERNAL_PREFIX = "ext:"
EXTERNAL_NAME = re.compile(r"^ext:[a-z0-9]{1,32}:[A-Za-z0-9][A-Za-z0-9._@:|+\-]*$")
ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
MODEL_PATTERN = re.compile(r"^[A-Za-z0-9._\-*?\[\]!]{1,64}$")
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")
GLOB_CHARS = frozenset("*?[")
ANY_SUBJECT = "*"
ANY_MODEL = "*"
DESCRIPTION_MAX = 500


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Window(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def seconds(self) -> int:
        return {"minute": 60, "hour": 3600, "day": 86400}[self.value]


WINDOW_ORDER = {Window.MINUTE: 0, Window.HOUR: 1, Window.DAY: 2}


def check_principal_name(name: object) -> str:
    """A local principal's name or a well-formed external one (`ext:<alias>:<sub>`)."""
    if not isinstance(name, str) or not PRINCIPAL_NAME.match(name):
        raise InvalidRule(
            f"invalid principal name {name!r}: letters, digits and ._@:|+- (up to 128), "
            "starting with a letter or digit"
        )
    if is_external(name) and not EXTERNAL_NAME.match(name):
        raise InvalidRule(
            f"invalid principal name {name!r}: names beginning ext: are external subjects, "
            "ext:<alias>:<sub> (see `secure-maas principal external-name`)"
        )
    return name


def is_external(name: str) -> bool:
    """Whether `name` is in the external subjects' namespace (never a local principal)."""
    return name.startswith(EXTERNAL_PREFIX)


def check_external_name(name: object) -> str:
    """An external subject's name, `ext:<alias>:<sub>`."""
    checked = check_principal_name(name)
    if not is_external(checked):
        raise InvalidRule(f"{checked!r} is not an external subject (ext:<alias>:<sub>)")
    return checked


def check_local_name(name: object) -> str:
    """A principal name that may hold local tokens and links: never an external one."""
    checked = check_principal_name(name)
    if is_external(checked):
        raise InvalidRule(
            f"{checked!r} is an external subject: its tokens come from its identity provider"
        )
    return checked


def check_role_name(name: object) -> str:
    if not isinstance(name, str) or not ROLE_NAME.match(name):
        raise InvalidRule(
            f"invalid role name {name!r}: letters, digits and ._- (up to 64), "
            "starting with a letter or digit"
        )
    return name


def check_description(text: object) -> str | None:
    if text is None:
        return None
    if not isinstance(text, str) or len(text) > DESCRIPTION_MAX:
        raise InvalidRule(
            f"description must be text of at most {DESCRIPTION_MAX} characters",
            field="description",
        )
    return text or None


def parse_subject(text: object) -> str:
    """`user:NAME`, `role:NAME` or `*`, checked and returned unchanged."""
    if text == ANY_SUBJECT:
        return ANY_SUBJECT
    if isinstance(text, str) and ":" in text:
        kind, name = text.split(":", 1)
        if kind == "user":
            check_principal_name(name)
            return text
        if kind == "role":
            check_role_name(name)
            return text
    raise InvalidRule(
        f"invalid subject {text!r}: expected user:NAME, role:NAME or *", field="subject"
    )


def is_glob(pattern: str) -> bool:
    return not GLOB_CHARS.isdisjoint(pattern)


def _positive_int(name: str, value: object, field: str | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRule(
            f"{name} must be a whole number of at least 1, not {value!r}", field=field or name
        )
    return value


def _moment(name: str, value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRule(
                f"{name} {value!r} is not an ISO 8601 date and time", field=name
            ) from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidRule(
            f"{name} must be a date and time with a UTC offset, e.g. 2027-01-01T00:00:00Z",
            field=name,
        )
    try:
        moment = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is before the first UTC datetime
        raise InvalidRule(f"{name} {value.isoformat()} is out of range", field=name) from None
    # Whole seconds: what policy files and listings show is then exactly what is enforced.
    return moment.replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class Quota:
    """At most `requests` requests and/or `rows` rows per fixed window `per`."""

    per: Window
    requests: int | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "per", Window(self.per))
        except ValueError:
            raise InvalidRule(
                f"quota window {self.per!r} is not one of minute, hour, day", field="quota"
            ) from None
        requests = _positive_int("quota requests", self.requests, "quota")
        rows = _positive_int("quota rows", self.rows, "quota")
        if requests is None and rows is None:
            raise InvalidRule("a quota needs requests, rows or both", field="quota")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Quota:
        unknown = set(data) - {"per", "requests", "rows"}
        if unknown:
            raise InvalidRule(
                f"unknown quota field {sorted(unknown, key=str)[0]!r} (per, requests, rows)",
                field="quota",
            )
        if "per" not in data:
            raise InvalidRule("a quota needs `per`: minute, hour or day", field="quota")
        return cls(data["per"], data.get("requests"), data.get("rows"))

    def to_mapping(self) -> dict[str, Any]:
        data: dict[str, Any] = {"per": self.per.value}
        if self.requests is not None:
            data["requests"] = self.requests
        if self.rows is not None:
            data["rows"] = self.rows
        return data

    def __str__(self) -> str:
        parts = []
        if self.requests is not None:
            parts.append(f"{self.requests} requests")
        if self.rows is not None:
            parts.append(f"{self.rows} rows")
        return f"{' + '.join(parts)}/{self.per.value}"


def merge_quotas(quotas: Iterable[Quota]) -> tuple[Quota, ...]:
    """One quota per window holding the smallest limit of each kind (every limit applies)."""
    merged: dict[Window, tuple[int | None, int | None]] = {}
    for quota in quotas:
        requests, rows = merged.get(quota.per, (None, None))
        merged[quota.per] = (_least(requests, quota.requests), _least(rows, quota.rows))
    return tuple(
        Quota(per, requests, rows)
        for per, (requests, rows) in sorted(merged.items(), key=lambda i: WINDOW_ORDER[i[0]])
    )


def _least(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass(frozen=True, slots=True)
class Rule:
    """One access rule; `id` is 0 until the store gives it one.

    `valid_from` is inclusive and `valid_until` exclusive. Actions are kept sorted, quotas
    merged to one per window, so two rules that mean the same compare equal.
    """

    effect: Effect
    subject: str
    actions: tuple[Action, ...]
    model: str = ANY_MODEL
    version: int | None = None
    label: str | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    max_rows: int | None = None
    max_epsilon: float | None = None
    quotas: tuple[Quota, ...] = ()
    finite_inputs: bool = False
    description: str | None = field(default=None, compare=False)
    id: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        try:
            set_(self, "effect", Effect(self.effect))
        except ValueError:
            raise InvalidRule(
                f"effect {self.effect!r} is not allow or deny", field="effect"
            ) from None
        set_(self, "subject", parse_subject(self.subject))
        set_(self, "actions", parse_actions(self.actions))
        if not isinstance(self.model, str) or not MODEL_PATTERN.match(self.model):
            raise InvalidRule(
                f"invalid model {self.model!r}: a model name or glob (letters, digits, ._- and "
                "* ? [ ]), up to 64 characters",
                field="model",
            )
        _positive_int("version", self.version)
        if self.label is not None and (
            not isinstance(self.label, str) or not LABEL_NAME.match(self.label)
        ):
            raise InvalidRule(
                f"invalid label {self.label!r}: lower-case letters, digits, _ -", field="label"
            )
        if self.version is not None and self.label is not None:
            raise InvalidRule("a rule names a version or a label, not both", field="label")
        set_(self, "valid_from", _moment("valid_from", self.valid_from))
        set_(self, "valid_until", _moment("valid_until", self.valid_until))
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise InvalidRule("valid_until must be later than valid_from", field="valid_until")
        _positive_int("max_rows", self.max_rows)
        set_(self, "max_epsilon", _epsilon(self.max_epsilon))
        quotas = tuple(self.quotas)
        if not all(isinstance(q, Quota) for q in quotas):
            raise InvalidRule("quotas must be Quota values", field="quota")
        set_(self, "quotas", merge_quotas(quotas))
        set_(self, "description", check_description(self.description))
        if not isinstance(self.finite_inputs, bool):
            raise InvalidRule(
                f"finite_inputs must be true or false, not {self.finite_inputs!r}",
                field="finite_inputs",
            )
        if self.effect is Effect.DENY and (
            self.max_rows is not None
            or self.max_epsilon is not None
            or self.quotas
            or self.finite_inputs
        ):
            raise InvalidRule(
                "a deny rule takes no max_rows, max_epsilon, finite_inputs or quota (only "
                "valid_from and valid_until): write the allow rule with those conditions instead",
                field="effect",
            )

    @property
    def glob(self) -> bool:
        return is_glob(self.model)

    @property
    def key(self) -> str:
        """Digest of what identifies a rule: effect, subject, model, version/label, actions."""
        identity = [
            self.effect.value,
            self.subject,
            self.model,
            self.version,
            self.label,
            [a.value for a in self.actions],
        ]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def with_id(self, rule_id: int) -> Rule:
        return replace(self, id=rule_id)

    def target(self) -> str:
        """The model scope as people write it: `digits*`, `digits:3`, `digits@stable`."""
        if self.version is not None:
            return f"{self.model}:{self.version}"
        if self.label is not None:
            return f"{self.model}@{self.label}"
        return self.model

    def conditions(self) -> list[str]:
        """The conditions as short `name=value` texts, for listings and diffs."""
        found = []
        if self.valid_from is not None:
            found.append(f"valid_from={isoformat(self.valid_from)}")
        if self.valid_until is not None:
            found.append(f"valid_until={isoformat(self.valid_until)}")
        if self.max_rows is not None:
            found.append(f"max_rows={self.max_rows}")
        if self.max_epsilon is not None:
            found.append(f"max_epsilon={self.max_epsilon:g}")
        if self.finite_inputs:
            found.append("finite_inputs=true")
        found += [f"quota={quota}" for quota in self.quotas]
        return found

    def summary(self) -> str:
        actions = ",".join(a.value for a in self.actions)
        text = f"{self.effect.value} {self.subject} {self.target()} [{actions}]"
        conditions = self.conditions()
        return f"{text} {' '.join(conditions)}" if conditions else text


def parse_actions(values: object) -> tuple[Action, ...]:
    """Action names (or `Action`s) as a sorted tuple without duplicates; at least one."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidRule("actions must be a list of action names", field="actions")
    found: set[Action] = set()
    for value in values:
        try:
            found.add(Action(value))
        except ValueError:
            known = ", ".join(a.value for a in Action)
            raise InvalidRule(
                f"unknown action {value!r} (one of {known})", field="actions"
            ) from None
    if not found:
        raise InvalidRule("a rule needs at least one action", field="actions")
    return tuple(sorted(found, key=lambda a: a.value))


def _epsilon(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRule(f"max_epsilon must be a number, not {value!r}", field="max_epsilon")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise InvalidRule(
            f"max_epsilon must be a positive finite number, not {value!r}", field="max_epsilon"
        )
    return number
