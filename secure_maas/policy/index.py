"""A compiled, immutable policy: rules indexed for fast decisions, plus `explain`.

Rules are bucketed by (subject, action); inside a bucket, by exact model name, with `*` rules
and glob rules in lists of their own. The rules whose scope matches a (subject, roles, action,
model name) are computed once and kept in a bounded cache, so a repeated decision costs a dict
lookup and the request-time condition checks of a few rules. A policy is rebuilt, never
changed, when the rules change (see `live.py`), so the cache needs no invalidation of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase, translate

from secure_maas.actions import Action
from secure_maas.policy.evaluate import (
    Decision,
    ModelFacts,
    Requester,
    RequestFacts,
    condition_failure,
    decide_from,
    scope_mismatch,
    split,
    subject_keys,
)
from secure_maas.policy.rules import ANY_MODEL, Rule

#: Scope results kept per policy version; cleared whole when full (cheap, and rare).
CACHE_ENTRIES = 100_000

_Candidates = tuple[tuple[Rule, ...], tuple[Rule, ...]]


@dataclass
class _Bucket:
    exact: dict[str, list[Rule]] = field(default_factory=dict)
    any_model: list[Rule] = field(default_factory=list)
    globs: list[tuple[re.Pattern[str], Rule]] = field(default_factory=list)

    def add(self, rule: Rule) -> None:
        if rule.model == ANY_MODEL:
            self.any_model.append(rule)
        elif rule.glob:
            self.globs.append((re.compile(translate(rule.model)), rule))
        else:
            self.exact.setdefault(rule.model, []).append(rule)

    def matching(self, model: ModelFacts | None) -> Iterable[Rule]:
        yield from self.any_model
        if model is None:
            return
        yield from self.exact.get(model.name, ())
        for pattern, rule in self.globs:
            if pattern.match(model.name):
                yield rule


@dataclass(frozen=True)
class RuleCheck:
    """One line of `explain`: whether a rule matched this request, and why or why not."""

    rule: Rule
    matched: bool
    why: str


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    checks: tuple[RuleCheck, ...]


class CompiledPolicy:
    """The rules of one policy version, ready to decide. Safe to share between threads."""

    def __init__(self, rules: Iterable[Rule], version: int = 0) -> None:
        self.version = version
        self.rules: tuple[Rule, ...] = tuple(sorted(rules, key=lambda r: r.id))
        self._buckets: dict[tuple[str, Action], _Bucket] = {}
        for rule in self.rules:
            for action in rule.actions:
                self._buckets.setdefault((rule.subject, action), _Bucket()).add(rule)
        self._cache: dict[
            tuple[tuple[str, ...], tuple[str, ...], Action, str | None], _Candidates
        ] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def decide(
        self,
        principal: Requester,
        action: Action,
        model: ModelFacts | None,
        facts: RequestFacts,
    ) -> Decision:
        """Default deny; a matching deny wins; else every matching allow allows."""
        key = (principal.names, principal.roles, action, None if model is None else model.name)
        candidates = self._cache.get(key)
        if candidates is None:
            candidates = self._candidates(principal, action, model)
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = candidates
        return decide_from(candidates[0], candidates[1], principal, action, model, facts)

    def _candidates(
        self, principal: Requester, action: Action, model: ModelFacts | None
    ) -> _Candidates:
        found: dict[int, Rule] = {}
        for subject in subject_keys(principal):
            bucket = self._buckets.get((subject, action))
            if bucket is not None:
                found.update((rule.id, rule) for rule in bucket.matching(model))
        return split(list(found.values()))

    def decide_naive(
        self,
        principal: Requester,
        action: Action,
        model: ModelFacts | None,
        facts: RequestFacts,
    ) -> Decision:
        """The same decision by scanning every rule: the benchmark's and the tests' baseline."""
        keys = subject_keys(principal)
        matched = [r for r in self.rules if scope_mismatch(r, keys, action, model) is None]
        denies, allows = split(matched)
        return decide_from(denies, allows, principal, action, model, facts)

    def explain(
        self,
        principal: Requester,
        action: Action,
        model: ModelFacts | None,
        facts: RequestFacts,
    ) -> Explanation:
        """The decision, and for every rule whether it matched and why (for people)."""
        keys = subject_keys(principal)
        checks = []
        for rule in self.rules:
            why = scope_mismatch(rule, keys, action, model)
            if why is None:
                why = condition_failure(rule, model, facts)
            if why is None:
                checks.append(RuleCheck(rule, True, f"matches: {rule.effect.value}"))
            else:
                checks.append(RuleCheck(rule, False, why))
        return Explanation(self.decide(principal, action, model, facts), tuple(checks))


def rules_for(rules: Sequence[Rule], subject: str | None, model: str | None) -> list[Rule]:
    """Rules naming `subject` exactly and/or whose pattern covers (or is) `model`."""
    return [
        r
        for r in rules
        if (subject is None or r.subject == subject)
        and (model is None or r.model == model or fnmatchcase(model, r.model))
    ]
