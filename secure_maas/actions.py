"""The names of everything that can be allowed, denied or recorded.

`Action` is the one enum of request actions that access rules grant (DESIGN.md, "Actions").
`AdminAction` names what admins, training and the service itself do; those are never granted by
rules (the CLI runs with the OS user's own access to keys and database) but every one of them is
recorded in the audit log under these names.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    MODEL_PREDICT = "model:predict"
    MODEL_METADATA = "model:metadata"
    MODEL_LIST = "model:list"
    #: Triton's statistics extension: counts and times of everyone's requests to a model.
    MODEL_STATS = "model:stats"
    #: Triton's repository load/unload: an operator's action, granted only by naming it.
    MODEL_CONTROL = "model:control"
    AUDIT_READ = "audit:read"
    #: The console's privacy page: datasets' budgets, training runs and the models they made.
    PRIVACY_READ = "privacy:read"
    #: The console's changes (grant, revoke, disable a principal, label a version); granted only
    #: by a rule that names it, like every action (rules list actions; there is no wildcard).
    ADMIN_WRITE = "admin:write"


class AdminAction(StrEnum):
    AUTHENTICATE = "auth:verify"
    KEYS_INIT = "keys:init"
    KEYS_ROTATE = "keys:rotate"
    KEYS_RETIRE = "keys:retire"
    KEYS_TRUST = "keys:trust"
    MODEL_PUBLISH = "model:publish"
    MODEL_LABEL = "model:label"
    MODEL_DISABLE = "model:disable"
    MODEL_ENABLE = "model:enable"
    MODEL_VERIFY = "model:verify"
    MODEL_REWRAP = "model:rewrap"
    MODEL_LOAD = "model:load"
    POLICY_GRANT = "policy:grant"
    POLICY_REVOKE = "policy:revoke"
    POLICY_APPLY = "policy:apply"
    PRINCIPAL_CHANGE = "principal:change"
    TOKEN_ISSUE = "token:issue"  # noqa: S105  (an action name, not a secret)
    TOKEN_REVOKE = "token:revoke"  # noqa: S105
    DATASET_REGISTER = "dataset:register"
    TRAIN_RUN = "train:run"
    PRIVACY_ATTACK = "privacy:attack"
    AUDIT_PRUNE = "audit:prune"
    AUDIT_CHECKPOINT = "audit:checkpoint"


def is_known(name: str) -> bool:
    """Whether `name` is a request or admin action (the audit log records nothing else)."""
    return name in Action._value2member_map_ or name in AdminAction._value2member_map_
