"""The audit log over HTTP, for principals allowed `audit:read`.

    GET /admin/audit?since=1h&actor=alice&model=digits&action=model:predict&decision=deny
                    &after=SEQ&limit=N
        -> {"events": [...], "next_after": SEQ | null}   oldest first; pass next_after as
           `after` for the next page (keyset paging: stable while the log grows)
    GET /admin/audit/verify
        -> the verification report of the whole chain (`intact`, `bad_seq`, `reason`, ...)

The access decision comes first: a caller without `audit:read` gets 403 (audited as a deny)
whatever its query says, so `audit list --decision deny` shows every such attempt and a 400
never tells it which parameters exist. Then the query is checked: `since`/`until` take what
`secure-maas audit list` takes (`1h`, `7d`, an ISO date or time; at most 100 years back, years
1 to 9999), numbers are ASCII digits in range, `actor`/`model`/`action` are text without
control characters no longer than the log's own column, and an unknown or repeated parameter
is refused: a typo must not silently widen the answer. Each of these requests is itself
audited, after its answer is read, so a page never holds its own event.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request

from secure_maas.actions import Action
from secure_maas.audit import AuditDecision, AuditFilter, parse_time, verify_database
from secure_maas.audit.query import list_events, read_snapshot, text_filter_problem
from secure_maas.serving.errors import ApiError
from secure_maas.serving.pipeline import Call, guarded
from secure_maas.serving.refs import Api, shown

bp = Blueprint("admin", __name__, url_prefix="/admin")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PARAMETERS = ("since", "until", "actor", "model", "action", "decision", "after", "limit")
#: A whole number as a query gives it: ASCII digits only (`str.isdigit()` takes `²` too), and
#: few enough of them for `int()` (it refuses more than 4300).
_WHOLE = re.compile(r"[0-9]{1,19}")


def _number(name: str, low: int, high: int, default: int | None) -> int | None:
    text = request.args.get(name)
    if text is None:
        return default
    if not _WHOLE.fullmatch(text) or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be a whole number in {low}..{high}")
    return int(text)


def _text(name: str) -> str | None:
    """A text filter: no control character (Unicode's Cc: C0, DEL, C1; one matches no event
    and PostgreSQL refuses NUL in a query) and no longer than the column it is compared with.
    Other characters (a no-break space, a format character) are text like any other: the rule
    is one the OpenAPI document can state exactly (`openapi.NO_CONTROLS`)."""
    text = request.args.get(name)
    problem = text_filter_problem(name, text) if text is not None else None
    if problem is not None:
        raise ApiError(400, problem)
    return text


def _check_parameters() -> None:
    unknown = sorted(set(request.args) - set(PARAMETERS))
    if unknown:
        raise ApiError(400, f"unknown parameter {shown(unknown[0])!r}: use {', '.join(PARAMETERS)}")
    for name in PARAMETERS:
        if len(request.args.getlist(name)) > 1:
            raise ApiError(400, f"parameter {name!r} is given more than once")


def _filter(call: Call) -> AuditFilter:
    _check_parameters()
    moments = {}
    for name in ("since", "until"):
        text = request.args.get(name)
        try:
            moments[name] = None if text is None else parse_time(text, now=call.now)
        except ValueError as exc:
            raise ApiError(400, f"{name}: {exc}") from None
    decision = request.args.get("decision")
    if decision is not None and decision not in AuditDecision._value2member_map_:
        raise ApiError(400, "decision must be one of allow, deny, error")
    return AuditFilter(
        since=moments["since"],
        until=moments["until"],
        actor=_text("actor"),
        model=_text("model"),
        action=_text("action"),
        decision=decision,
    )


@bp.get("/audit")
@guarded(Action.AUDIT_READ, api=Api.ADMIN)
def audit(call: Call) -> Response:
    call.authorize()
    audit_filter = _filter(call)
    after = _number("after", 0, 2**63 - 1, None)
    limit = _number("limit", 1, MAX_LIMIT, DEFAULT_LIMIT) or DEFAULT_LIMIT
    with read_snapshot(call.services.engine) as connection:
        records = list_events(connection, audit_filter, after=after, limit=limit)
    next_after = records[-1].seq if len(records) == limit else None
    call.rows = len(records)
    return jsonify({"events": [r.to_json() for r in records], "next_after": next_after})


@bp.get("/audit/verify")
@guarded(Action.AUDIT_READ, api=Api.ADMIN)
def verify(call: Call) -> Response:
    call.authorize()
    if request.args:
        raise ApiError(400, "this endpoint takes no parameters")
    report = verify_database(call.services.engine, call.services.audit_keys, jobs=1)
    return jsonify(report.to_json())
