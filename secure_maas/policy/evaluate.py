"""How one rule is judged against one request, and how matches become a decision.

Matching has two halves, kept apart so the index can precompute the first:

- scope (static for a policy version): subject, action and model name pattern;
- conditions (checked at request time): version or label of the model served, validity window,
  rows in the request, ε of the model version, whether the inputs are all finite.

`decide_from` turns the rules whose scope matched into a `Decision`: default deny, any deny whose
conditions hold wins, otherwise every allow whose conditions hold allows (and all of their quotas
apply). The indexed engine, the naive scan and `explain` all go through these functions, so they
cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Protocol

from secure_maas.actions import Action
from secure_maas.policy.rules import ANY_MODEL, ANY_SUBJECT, Effect, Quota, Rule, merge_quotas


class Requester(Protocol):
    """Who asks: a verified token's principal (see `secure_maas.auth`) or a test's stand-in.

    `names` are every principal name rules may call it by, `subject` first: an external
    subject linked to a local principal answers to both (see `directory.Identity`).
    """

    @property
    def subject(self) -> str: ...

    @property
    def roles(self) -> tuple[str, ...]: ...

    @property
    def names(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """A plain `Requester`, for `explain` from the CLI and for tests; `also` are its other
    names (a linked external subject)."""

    subject: str
    roles: tuple[str, ...] = ()
    also: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.subject, *self.also)


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the policy needs to know of the model version a request is about.

    `epsilon` is None for a model without a DP guarantee (a `max_epsilon` rule then fails).
    """

    name: str
    version: int | None = None
    labels: tuple[str, ...] = ()
    epsilon: float | None = None


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the request itself brings: how many rows it holds, when it arrived, and whether its
    float inputs are all finite (no NaN or ±Infinity; true for a request without inputs)."""

    rows: int
    now: datetime
    finite: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome, its reason (for logs and audit, not for callers) and the deciding rules.

    `quotas` are the merged quotas of the allowing rules: consume them with
    `policy.quota.consume` before serving.
    """

    allowed: bool
    reason: str
    rule_ids: tuple[int, ...]
    quotas: tuple[Quota, ...] = ()


def subject_keys(requester: Requester) -> tuple[str, ...]:
    """Every rule subject that applies to `requester`: `*`, its user names and its roles."""
    users = (f"user:{name}" for name in requester.names)
    return (ANY_SUBJECT, *users, *(f"role:{r}" for r in requester.roles))


def describe_target(action: Action, model: ModelFacts | None, requester: Requester) -> str:
    where = "" if model is None else f" on {model.name}"
    if model is not None and model.version is not None:
        where += f":{model.version}"
    return f"{action.value}{where} for {requester.subject}"


def scope_mismatch(
    rule: Rule, keys: Sequence[str], action: Action, model: ModelFacts | None
) -> str | None:
    """Why `rule`'s subject, action or model pattern does not cover the request, or None."""
    if rule.subject not in keys:
        return f"subject {rule.subject} does not apply"
    if action not in rule.actions:
        return f"does not grant {action.value}"
    if model is None:
        if rule.model != ANY_MODEL:
            return f"model {rule.model}: the request is about no model"
        return None
    if rule.model != ANY_MODEL and not fnmatchcase(model.name, rule.model):
        return f"model {rule.model} does not match {model.name}"
    return None


def condition_failure(rule: Rule, model: ModelFacts | None, facts: RequestFacts) -> str | None:
    """Why `rule`'s conditions do not hold for this request, or None when they all do."""
    if rule.version is not None and (model is None or model.version != rule.version):
        return f"only version {rule.version}"
    if rule.label is not None and (model is None or rule.label not in model.labels):
        return f"only the version labelled {rule.label}"
    if rule.valid_from is not None and facts.now < rule.valid_from:
        return "not valid yet"
    if rule.valid_until is not None and facts.now >= rule.valid_until:
        return "expired"
    if rule.max_rows is not None and facts.rows > rule.max_rows:
        return f"{facts.rows} rows is over max_rows {rule.max_rows}"
    if rule.max_epsilon is not None:
        if model is None or model.epsilon is None:
            return f"max_epsilon {rule.max_epsilon:g}: the model has no DP guarantee"
        if model.epsilon > rule.max_epsilon:
            return f"model epsilon {model.epsilon:g} is over max_epsilon {rule.max_epsilon:g}"
    if rule.finite_inputs and not facts.finite:
        return "finite_inputs: the request holds NaN or Infinity"
    return None


def decide_from(
    denies: Sequence[Rule],
    allows: Sequence[Rule],
    requester: Requester,
    action: Action,
    model: ModelFacts | None,
    facts: RequestFacts,
) -> Decision:
    """The decision given the deny and allow rules whose scope matched (each sorted by id)."""
    denied = tuple(r.id for r in denies if condition_failure(r, model, facts) is None)
    if denied:
        return Decision(False, f"denied by rule {_ids(denied)}", denied)
    allowing: list[Rule] = []
    first_failure = ""
    for rule in allows:
        failure = condition_failure(rule, model, facts)
        if failure is None:
            allowing.append(rule)
        elif not first_failure:
            first_failure = f"rule {rule.id} does not apply: {failure}"
    if allowing:
        ids = tuple(r.id for r in allowing)
        quotas = tuple(q for r in allowing for q in r.quotas)
        if len(allowing) > 1 and quotas:
            quotas = merge_quotas(quotas)
        return Decision(True, f"allowed by rule {_ids(ids)}", ids, quotas)
    if first_failure:
        return Decision(False, first_failure, ())
    return Decision(False, f"no rule allows {describe_target(action, model, requester)}", ())


def _ids(ids: tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in ids)


def split(rules: Sequence[Rule]) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
    """(denies, allows), each in id order."""
    ordered = sorted(rules, key=lambda r: r.id)
    return (
        tuple(r for r in ordered if r.effect is Effect.DENY),
        tuple(r for r in ordered if r.effect is Effect.ALLOW),
    )
