"""Rules are checked when built: every malformed field is refused with the field named."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from secure_maas.actions import Action
from secure_maas.policy.errors import InvalidRule
from secure_maas.policy.rules import Effect, Quota, Rule, Window, merge_quotas

PREDICT = (Action.MODEL_PREDICT,)


def test_a_rule_is_normalised_so_equal_meanings_compare_equal() -> None:
    a = Rule("allow", "role:analyst", ("model:predict", "model:list", "model:predict"), "digits*")
    b = Rule(Effect.ALLOW, "role:analyst", (Action.MODEL_LIST, Action.MODEL_PREDICT), "digits*")
    assert a == b and a.key == b.key
    assert a.actions == (Action.MODEL_LIST, Action.MODEL_PREDICT)
    assert a.glob and not Rule("allow", "*", PREDICT, "digits").glob


def test_description_and_id_are_not_part_of_identity() -> None:
    a = Rule("allow", "*", PREDICT, description="one", id=3)
    b = Rule("allow", "*", PREDICT, description="two", id=9)
    assert a == b and a.key == b.key


def test_conditions_are_not_part_of_the_key_but_are_of_equality() -> None:
    a = Rule("allow", "*", PREDICT, max_rows=10)
    b = Rule("allow", "*", PREDICT, max_rows=20)
    assert a.key == b.key and a != b


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"effect": "permit"}, "effect", "not allow or deny"),
        ({"subject": "alice"}, "subject", "user:NAME, role:NAME or *"),
        ({"subject": "group:x"}, "subject", "user:NAME"),
        ({"subject": "user:"}, None, "invalid principal name"),
        ({"subject": "role:has space"}, None, "invalid role name"),
        ({"actions": ()}, "actions", "at least one action"),
        ({"actions": ("model:train",)}, "actions", "unknown action"),
        ({"actions": "model:predict"}, "actions", "list of action names"),
        ({"model": "digits/../x"}, "model", "invalid model"),
        ({"model": ""}, "model", "invalid model"),
        ({"version": 0}, "version", "at least 1"),
        ({"version": True}, "version", "at least 1"),
        ({"label": "Stable"}, "label", "invalid label"),
        ({"version": 2, "label": "stable"}, "label", "not both"),
        ({"valid_from": "tomorrow"}, "valid_from", "ISO 8601"),
        ({"valid_from": datetime(2027, 1, 1)}, "valid_from", "UTC offset"),
        (
            {
                "valid_from": datetime(2027, 1, 2, tzinfo=UTC),
                "valid_until": datetime(2027, 1, 1, tzinfo=UTC),
            },
            "valid_until",
            "later than",
        ),
        ({"max_rows": -1}, "max_rows", "at least 1"),
        ({"max_epsilon": 0}, "max_epsilon", "positive"),
        ({"max_epsilon": float("inf")}, "max_epsilon", "positive finite"),
        ({"max_epsilon": "3"}, "max_epsilon", "a number"),
        ({"effect": "deny", "max_rows": 5}, "effect", "deny rule takes no"),
        ({"effect": "deny", "quotas": (Quota(Window.DAY, 5),)}, "effect", "deny rule takes no"),
        ({"description": "x" * 501}, "description", "at most 500"),
    ],
)
def test_malformed_rules_are_refused_naming_the_field(
    fields: dict[str, object], field: str | None, message: str
) -> None:
    values: dict[str, object] = {"effect": "allow", "subject": "*", "actions": PREDICT}
    values.update(fields)
    with pytest.raises(InvalidRule, match=message) as caught:
        Rule(**values)  # type: ignore[arg-type]
    if field is not None:
        assert caught.value.field == field


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"per": "week", "requests": 1}, "minute, hour, day"),
        ({"requests": 1}, "needs `per`"),
        ({"per": "minute"}, "requests, rows or both"),
        ({"per": "minute", "requests": 0}, "at least 1"),
        ({"per": "minute", "requests": 1, "burst": 2}, "unknown quota field"),
    ],
)
def test_malformed_quotas_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRule, match=message):
        Quota.from_mapping(data)


def test_quotas_merge_to_the_smallest_limit_per_window_in_window_order() -> None:
    merged = merge_quotas(
        [
            Quota(Window.DAY, requests=1000),
            Quota(Window.MINUTE, requests=60),
            Quota(Window.MINUTE, requests=30, rows=500),
            Quota(Window.MINUTE, rows=900),
        ]
    )
    assert merged == (Quota(Window.MINUTE, 30, 500), Quota(Window.DAY, 1000))
    assert str(merged[0]) == "30 requests + 500 rows/minute"


def test_valid_times_are_kept_to_the_second_in_utc() -> None:
    rule = Rule("allow", "*", PREDICT, valid_from="2027-01-01T02:00:00.750+02:00")
    assert rule.valid_from == datetime(2027, 1, 1, tzinfo=UTC)


def test_summary_and_target_read_as_people_write_them() -> None:
    rule = Rule(
        "allow",
        "role:analyst",
        (Action.MODEL_PREDICT,),
        "digits",
        label="stable",
        max_epsilon=3,
        quotas=(Quota(Window.MINUTE, 600),),
    )
    assert rule.target() == "digits@stable"
    assert rule.summary() == (
        "allow role:analyst digits@stable [model:predict] max_epsilon=3 quota=600 requests/minute"
    )
