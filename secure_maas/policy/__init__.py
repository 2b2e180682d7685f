"""Access policy: principals, roles, rules, decisions, quotas and `policies/` files.

- `rules`: `Rule`, `Quota`, `Effect`, `Window` and the name grammars.
- `evaluate`: `ModelFacts`, `RequestFacts`, `Decision` and how one rule is judged.
- `index`: `CompiledPolicy` (indexed `decide`, `explain`, and the naive scan it must agree with).
- `live`: `PolicyCache`, the compiled policy of a database, rebuilt when its counter moves.
- `directory`, `grants`: principals/roles and rules in the database.
- `quota`: `consume`, the atomic shared counter.
- `files`, `sync`: `policies/` YAML in, `apply`/`diff`/`export`.

Nothing here knows of Flask or of tokens: `decide` takes any `Requester` (subject and roles).
"""

from secure_maas.policy.errors import Conflict, InvalidRule, NotFound, PolicyError
from secure_maas.policy.evaluate import Caller, Decision, ModelFacts, Requester, RequestFacts
from secure_maas.policy.index import CompiledPolicy, Explanation, RuleCheck
from secure_maas.policy.live import PolicyCache
from secure_maas.policy.quota import QuotaResult, consume
from secure_maas.policy.rules import Effect, Quota, Rule, Window

__all__ = [
    "Caller",
    "CompiledPolicy",
    "Conflict",
    "Decision",
    "Effect",
    "Explanation",
    "InvalidRule",
    "ModelFacts",
    "NotFound",
    "PolicyCache",
    "PolicyError",
    "Quota",
    "QuotaResult",
    "RequestFacts",
    "Requester",
    "Rule",
    "RuleCheck",
    "Window",
    "consume",
]
