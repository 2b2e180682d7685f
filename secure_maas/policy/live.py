"""The policy a worker decides with: compiled from the database, rebuilt when it changes.

`PolicyCache.decide` first lets its `Watcher` look at the `policy` counter (at most every
0.25 s), rebuilding the compiled policy when the counter moved; a grant or revoke made by any
process therefore applies everywhere within a second. If the database cannot be read when a
look is due, the error propagates: the request fails closed rather than being decided on a
policy of unknown age.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.engine import Engine

from secure_maas.actions import Action
from secure_maas.db.session import session_factory, session_scope
from secure_maas.db.watch import POLL_INTERVAL_S, Watcher
from secure_maas.policy.evaluate import Decision, ModelFacts, Requester, RequestFacts
from secure_maas.policy.grants import load_rules
from secure_maas.policy.index import CompiledPolicy, Explanation
from secure_maas.policy.models import POLICY_SCOPE


class PolicyCache:
    """A thread-safe, self-refreshing `CompiledPolicy` for one engine."""

    def __init__(self, engine: Engine, *, interval: float = POLL_INTERVAL_S) -> None:
        self._factory = session_factory(engine)
        self._watcher = Watcher(engine, (POLICY_SCOPE,), interval=interval)
        self._policy = CompiledPolicy(())

    def current(self) -> CompiledPolicy:
        """The compiled policy, rebuilt first if the database says it changed."""
        self._watcher.refresh(self._reload)
        return self._policy

    def _reload(self, counters: Mapping[str, int]) -> None:
        with session_scope(self._factory) as session:
            rules = load_rules(session)
        self._policy = CompiledPolicy(rules, counters[POLICY_SCOPE])

    def decide(
        self,
        principal: Requester,
        action: Action,
        model: ModelFacts | None,
        facts: RequestFacts,
    ) -> Decision:
        return self.current().decide(principal, action, model, facts)

    def explain(
        self,
        principal: Requester,
        action: Action,
        model: ModelFacts | None,
        facts: RequestFacts,
    ) -> Explanation:
        return self.current().explain(principal, action, model, facts)
