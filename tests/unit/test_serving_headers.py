"""The headers the pipeline trusts (Authorization, X-Request-Id, Content-Type) and the model
references and 404 messages URLs turn into."""

from __future__ import annotations

import pytest

from secure_maas.registry.catalog import ModelRef
from secure_maas.registry.store import InvalidName
from secure_maas.serving.errors import ApiError
from secure_maas.serving.headers import (
    INFER_TYPES,
    JSON_TYPES,
    AuthError,
    bearer_token,
    check_content_type,
    request_id,
)
from secure_maas.serving.refs import Api, not_found_message, parse_ref


@pytest.mark.parametrize("value", ["Bearer abc.def.ghi", "bearer abc.def-_~+/=", "BEARER a=="])
def test_a_bearer_token_is_taken_from_one_well_formed_header(value: str) -> None:
    assert bearer_token([value]) == value.split(" ", 1)[1]


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([], "no Authorization header"),
        (["Bearer a", "Bearer b"], "several Authorization headers"),
        (["Basic dXNlcjpwYXNz"], "scheme is not Bearer"),
        (["Bearer"], "no well-formed bearer token"),
        (["Bearer "], "no well-formed bearer token"),
        (["Bearer a b"], "no well-formed bearer token"),
        (["Bearer a\tb"], "no well-formed bearer token"),
        (["Bearer tok\u00e9n"], "no well-formed bearer token"),
        (["Bearer a=b"], "no well-formed bearer token"),
    ],
)
def test_a_missing_or_malformed_header_is_a_401_with_a_challenge(
    values: list[str], reason: str
) -> None:
    with pytest.raises(AuthError) as refused:
        bearer_token(values)
    assert refused.value.status == 401 and reason in refused.value.reason
    assert refused.value.headers["WWW-Authenticate"].startswith('Bearer realm="secure-maas"')


def test_request_ids_are_kept_when_plain_and_short_else_replaced() -> None:
    assert request_id("req-1.2:3_4") == "req-1.2:3_4"
    for bad in (None, "", "x" * 65, "a b", "a\r\nX-Evil: 1", "é"):
        fresh = request_id(bad)
        assert fresh != bad and len(fresh) == 32 and int(fresh, 16) >= 0
    assert request_id(None) != request_id(None)


def test_content_types() -> None:
    for kind in ("application/json", "", "application/x-www-form-urlencoded",
                 "application/vnd.api+json", "APPLICATION/JSON"):  # fmt: skip
        check_content_type(kind, JSON_TYPES)
    check_content_type("application/octet-stream", INFER_TYPES)
    for kind in ("text/plain", "application/octet-stream", "multipart/form-data", "text/json"):
        with pytest.raises(ApiError) as refused:
            check_content_type(kind, JSON_TYPES)
        assert refused.value.status == 415


def test_references_from_url_parts() -> None:
    assert parse_ref("digits") == ModelRef("digits")
    assert parse_ref("digits", "3") == ModelRef("digits", version=3)
    assert parse_ref("digits", label="stable") == ModelRef("digits", label="stable")
    for name, version, label in (
        ("..", None, None),
        ("a/b", None, None),
        ("digits\r\nX: y", None, None),
        ("digits", "0", None),
        ("digits", "-1", None),
        ("digits", "1.0", None),
        ("digits", "\u0661", None),  # an Arabic-Indic digit: isdigit() but not ASCII
        ("digits", "99999999999", None),
        ("digits", None, "Stable"),
        ("digits", "1", "stable"),
    ):
        with pytest.raises(InvalidName):
            parse_ref(name, version, label)


def test_not_found_messages_depend_only_on_the_request() -> None:
    assert not_found_message(Api.TFSERVING, "m") == "Servable not found for request: Latest(m)"
    assert not_found_message(Api.TFSERVING, "m", "2") == (
        "Servable not found for request: Specific(m, 2)"
    )
    assert not_found_message(Api.TFSERVING, "m", label="x") == (
        "Servable not found for request: Label(m, x)"
    )
    assert not_found_message(Api.OIP, "m") == "Request for unknown model: 'm' is not found"
    assert not_found_message(Api.OIP, "m", "2") == (
        "Request for unknown model: 'm' version 2 is not found"
    )
    assert len(not_found_message(Api.TFSERVING, "x" * 10_000)) < 200
