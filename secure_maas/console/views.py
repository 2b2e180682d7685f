"""The console's routes under `/console/`: thin views over `pages`, `sessions` and `guard`.

Every view but the sign-in form and the stylesheet runs through `guard.page`, which finds the
session, decides, checks a POST's CSRF token and audits the outcome. Changes (grant, revoke,
disable a principal, label a version) need `admin:write` and go through the service functions
the CLI uses, inside `admin_change`, so each has its own audit event in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, g, render_template, request

from secure_maas.actions import Action, AdminAction
from secure_maas.admin.changes import admin_change
from secure_maas.admin.explain import explain_access
from secure_maas.audit import ActorKind, AuditDecision, parse_time
from secure_maas.audit.query import AuditFilter, get_event, read_snapshot, text_filter_problem
from secure_maas.auth.verify import InvalidToken
from secure_maas.console import chartdata, pages
from secure_maas.console.guard import (
    COOKIE,
    COOKIE_PATH,
    STORE,
    ConsoleCall,
    Refused,
    check_origin,
    error_page,
    page,
    see_other,
    services,
    store,
)
from secure_maas.console.headers import NO_STORE, SECURITY_HEADERS
from secure_maas.console.integrity import Integrity
from secure_maas.console.sessions import SessionStore
from secure_maas.db.session import session_factory, session_scope
from secure_maas.errors import SecureMaasError
from secure_maas.keys import Keyring
from secure_maas.policy import ModelFacts, directory, grants
from secure_maas.policy.errors import Conflict, InvalidRule, NotFound
from secure_maas.policy.rules import Effect, Rule
from secure_maas.registry import catalog
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.registry.store import ArtifactStore
from secure_maas.serving.pipeline import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

INTEGRITY = "secure_maas.console.integrity"
AUDIT_PARAMETERS = (
    "since", "until", "actor", "model", "action", "decision", "status", "page", "top"
)  # fmt: skip
ADMIN_READ = (Action.AUDIT_READ, Action.ADMIN_WRITE)


def register(app: Flask) -> None:
    """Add the console to `app`: its blueprint, its session store and its verifier thread."""
    found = app.extensions["secure_maas"]
    app.extensions[STORE] = SessionStore(
        found.engine, idle_timeout=found.settings.console_idle_timeout
    )
    app.extensions[INTEGRITY] = Integrity(found.engine, found.audit_keys, found.audit.append)
    app.register_blueprint(bp)
    app.after_request(_headers)  # the app's: a 404 or 405 under /console/ gets them too


def integrity() -> Integrity:
    from flask import current_app

    found: Integrity = current_app.extensions[INTEGRITY]
    return found


def _headers(response: Response) -> Response:
    """The console's headers on every answer under `/console/` (see `headers`)."""
    if request.path != "/console" and not request.path.startswith("/console/"):
        return response
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "console.static":
        response.headers.update(NO_STORE)
    return response


@bp.app_context_processor
def _context() -> dict[str, Any]:
    call = g.get("console_call")
    return {"call": call}


def _render(call: ConsoleCall, template: str, **values: Any) -> Response:
    return Response(render_template(template, **values))


# -- sign-in and sign-out -------------------------------------------------------------------


@bp.get("/")
def index() -> Response:
    target = "/console/audit" if request.cookies.get(COOKIE) else "/console/signin"
    return see_other(target)


@bp.get("/signin")
def signin_form() -> Response:
    return Response(render_template("console/signin.html", error=None))


@bp.post("/signin")
def signin() -> Response:
    call = ConsoleCall(services(), AdminAction.AUTHENTICATE)
    session_id: str | None = None
    try:
        check_origin()
        token = (request.form.get("token") or "").strip()
        if not token:
            raise InvalidToken("no token pasted")
        principal = call.services.verifier.verify(token, call.now)
        previous = request.cookies.get(COOKIE)
        if previous is not None:
            store().forget(previous)  # signing in again replaces the session, never adds one
        session_id = store().create(principal, call.now)
        call.principal = principal
        call.allow("console sign-in")
        response: Response = see_other("/console/audit")
        response.set_cookie(
            COOKIE,
            session_id,
            path=COOKIE_PATH,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure or call.services.settings.console_secure_cookie,
        )
    except InvalidToken as exc:
        call.denied, call.reason, call.reason_code = True, exc.reason, "invalid_token"
        response = Response(render_template("console/signin.html", error="invalid token"))
        response.status_code = 401
    except Refused as refused:
        call.denied, call.reason = True, refused.reason
        response = error_page(refused.status, refused.message)
    except UNAVAILABLE_ERRORS as exc:
        call.reason_code, call.reason = "unavailable", f"{type(exc).__name__}: {exc}"
        response = error_page(503, "service unavailable")
    except Exception as exc:
        log.exception("unhandled error in the console's sign-in")
        call.allowed, call.reason_code = False, "internal"
        call.reason = f"{type(exc).__name__}: {exc}"
        response = error_page(500, "internal error")
    answer = call.finish(response)
    if answer is not response and session_id is not None:
        _end_quietly(session_id)
    return answer


def _end_quietly(session_id: str) -> None:
    """A session whose sign-in could not be audited is not kept (its cookie was not sent)."""
    try:
        store().forget(session_id)
    except UNAVAILABLE_ERRORS as exc:  # best effort: it expires with its token anyway
        log.warning("could not delete an unaudited console session: %s", exc)


@bp.post("/signout")
@page(AdminAction.AUTHENTICATE, post=True)
def signout(call: ConsoleCall) -> Response:
    if call.session_row is not None:
        store().end(call.session_row)
    call.allow("console sign-out")
    response: Response = see_other("/console/signin")
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict")
    return response


# -- audit ----------------------------------------------------------------------------------


def _audit_query(args: Mapping[str, str], now: datetime) -> tuple[pages.AuditQuery, int]:
    """The filter and page of the audit page's query string (400 for what is not valid)."""
    unknown = sorted(set(args) - set(AUDIT_PARAMETERS))
    if unknown:
        raise Refused(400, f"unknown parameter {unknown[0][:40]!r}")
    values = {k: v.strip() for k, v in args.items() if v.strip()}
    moments: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        try:
            moments[name] = parse_time(values[name], now=now) if name in values else None
        except ValueError as exc:
            raise Refused(400, f"{name}: {exc}") from None
    for name in ("actor", "model", "action"):
        text = values.get(name)
        problem = text_filter_problem(name, text) if text is not None else None
        if problem is not None:
            raise Refused(400, problem)
    decision = values.get("decision")
    if decision is not None and decision not in AuditDecision._value2member_map_:
        raise Refused(400, "decision must be one of allow, deny, error")
    status = _whole(values.get("status"), "status", 100, 599)
    number = _whole(values.get("page"), "page", 1, pages.MAX_PAGE) or 1
    top = _whole(values.get("top"), "top", 0, 2**62)
    audit_filter = AuditFilter(
        since=moments["since"],
        until=moments["until"],
        actor=values.get("actor"),
        model=values.get("model"),
        action=values.get("action"),
        decision=decision,
    )
    return pages.AuditQuery(audit_filter, status, top), number


def _whole(text: str | None, name: str, low: int, high: int) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) < 10 and low <= int(text) <= high):
        raise Refused(400, f"{name} must be a whole number in {low}..{high}")
    return int(text)


def _link(args: Mapping[str, str], number: int, top: int | None) -> str:
    """The audit page `number` of the same filter, counted from the same newest event."""
    kept = {k: v for k, v in args.items() if v and k not in ("page", "top")}
    kept["page"] = str(number)
    if top is not None:
        kept["top"] = str(top)
    return "/console/audit?" + urlencode(kept)


@bp.get("/audit")
@page(Action.AUDIT_READ)
def audit(call: ConsoleCall) -> Response:
    call.authorize(Action.AUDIT_READ)
    query, number = _audit_query(request.args, call.now)
    with read_snapshot(call.services.engine) as connection:
        found = pages.audit_page(connection, query, number)
        charts = _charts(connection, query, call)
    call.rows = len(found.events)
    top = query.top if query.top is not None else found.newest if number == 1 else None
    return _render(
        call,
        "console/audit.html",
        found=found,
        args=request.args,
        banner=integrity().state(),
        charts=charts,
        next_link=_link(request.args, number + 1, top),
        prev_link=_link(request.args, number - 1, top),
    )


def _charts(connection: Any, query: pages.AuditQuery, call: ConsoleCall) -> dict[str, Any]:
    return chartdata.audit_charts(connection, query, call.now)


@bp.get("/audit/<int:seq>")
@page(Action.AUDIT_READ)
def audit_event(call: ConsoleCall, seq: int) -> Response:
    call.authorize(Action.AUDIT_READ)
    with read_snapshot(call.services.engine) as connection:
        record = get_event(connection, seq)
    if record is None:
        raise Refused(404, f"no event {seq}")
    call.rows = 1
    return _render(call, "console/event.html", record=record, details=record.details)


@bp.get("/audit.csv")
@page(Action.AUDIT_READ)
def audit_csv(call: ConsoleCall) -> Response:
    call.authorize(Action.AUDIT_READ)
    query, _number = _audit_query(request.args, call.now)
    engine = call.services.engine

    def chunks() -> Any:
        with read_snapshot(engine) as connection:
            yield from pages.audit_csv(connection, query)

    call.reason = "CSV export"
    return Response(
        chunks(),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )


@bp.post("/audit/verify")
@page(Action.AUDIT_READ, post=True)
def audit_verify(call: ConsoleCall) -> Response:
    call.authorize(Action.AUDIT_READ)
    principal = call.principal
    started = integrity().start(principal.subject if principal is not None else "")
    call.reason = "verification started" if started else "a verification is already running"
    return see_other("/console/audit")


# -- privacy --------------------------------------------------------------------------------


@bp.get("/privacy")
@page(Action.PRIVACY_READ)
def privacy(call: ConsoleCall) -> Response:
    cache = call.services.cache

    def may_read(name: str, version: int | None) -> bool:
        target = ModelFacts(name, version)
        if version is not None:
            try:
                facts = cache.facts(ModelRef(name, version=version))
            except ModelNotFound:
                facts = None
            if facts is not None:
                epsilon = facts.epsilon_for(loads=False)
                target = ModelFacts(name, version, facts.labels, epsilon)
        return call.may(Action.PRIVACY_READ, target)

    with session_scope(session_factory(call.services.engine)) as session:
        datasets = pages.privacy_view(session, may_read)
    if datasets or call.may(Action.PRIVACY_READ, None):
        call.allow(f"privacy of {len(datasets)} dataset(s)")
    else:
        call.authorize(Action.PRIVACY_READ)
    call.rows = len(datasets)
    charts = {d.name: _privacy_charts(d) for d in datasets}
    return _render(call, "console/privacy.html", datasets=datasets, charts=charts)


def _privacy_charts(dataset: pages.DatasetView) -> dict[str, Any]:
    return dict(chartdata.privacy_charts(dataset))


# -- models ---------------------------------------------------------------------------------


@bp.get("/models")
@page(Action.MODEL_LIST)
def models(call: ConsoleCall) -> Response:
    cache, plane = call.services.cache, call.services.models
    active = [facts for facts in cache.models() if facts.active]

    def state_of(facts: Any) -> str | None:
        try:
            return plane.state(ModelRef(facts.name, version=facts.version)).state.value
        except ModelNotFound:
            return None

    rows = pages.model_rows(active, lambda f: call.may_version(Action.MODEL_LIST, f), state_of)
    call.allow(f"listed {len(rows)} model version(s)")
    call.rows = len(rows)
    writer = call.may(Action.ADMIN_WRITE)
    return _render(call, "console/models.html", rows=rows, writer=writer, done=None)


@bp.post("/models/label")
@page(Action.ADMIN_WRITE, post=True)
def label(call: ConsoleCall) -> Response:
    name = (request.form.get("model") or "").strip()
    text = (request.form.get("label") or "").strip()
    version = _whole((request.form.get("version") or "").strip() or None, "version", 1, 2**31)
    if not name or not text or version is None:
        raise Refused(400, "model, version and label are required")
    try:
        facts = call.services.cache.facts(ModelRef(name, version=version))
    except ModelNotFound:
        raise Refused(404, f"no model version {name[:64]}:{version}") from None
    call.model_name, call.version = facts.name, facts.version
    if not call.may_version(Action.MODEL_LIST, facts) and not call.may_version(
        Action.ADMIN_WRITE, facts
    ):
        raise Refused(404, f"no model version {name[:64]}:{version}", reason="not visible")
    epsilon = facts.epsilon_for(loads=False)
    call.authorize(
        Action.ADMIN_WRITE, target=ModelFacts(facts.name, facts.version, facts.labels, epsilon)
    )
    try:
        with _change(call, AdminAction.MODEL_LABEL) as change:
            catalog.set_label(change.session, name, version, text, actor=change.actor)
            change.note(f"{name}@{text} -> {version}", model=name, label=text, version=version)
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    except SecureMaasError as exc:
        if type(exc) is not SecureMaasError:  # the database or keys: fail closed (503)
            raise
        raise Refused(409, str(exc)) from None  # a disabled version
    call.services.cache.refresh(force=True)
    call.reason = f"labelled {name}@{text} -> {version}"
    return see_other("/console/models")


# -- access ---------------------------------------------------------------------------------


@bp.get("/access")
@page(Action.AUDIT_READ)
def access(call: ConsoleCall) -> Response:
    call.authorize(*ADMIN_READ)
    return _access_page(call, explained=None)


def _access_page(call: ConsoleCall, explained: Any, status: int = 200) -> Response:
    with session_scope(session_factory(call.services.engine)) as session:
        view = pages.access_view(session)
    call.rows = len(view.rules)
    writer = call.may(Action.ADMIN_WRITE)
    response = _render(
        call,
        "console/access.html",
        view=view,
        explained=explained,
        writer=writer,
        actions=[a.value for a in Action],
        form=request.form if request.method == "POST" else {},
    )
    response.status_code = status
    return response


@bp.post("/access/explain")
@page(Action.AUDIT_READ, post=True)
def explain(call: ConsoleCall) -> Response:
    call.authorize(*ADMIN_READ)
    subject = (request.form.get("subject") or "").strip()
    model = (request.form.get("model") or "").strip() or None
    action = (request.form.get("action") or "").strip()
    if not subject or action not in Action._value2member_map_:
        raise Refused(400, "subject and a known action are required")
    settings = call.services.settings
    try:
        found = explain_access(
            call.services.engine,
            ArtifactStore(settings.store_dir),
            Keyring.open(settings.keys_dir),
            subject=subject,
            action=Action(action),
            model_ref=model,
            rows=0,
            now=call.now,
        )
    except (InvalidRule, ValueError) as exc:
        raise Refused(400, str(exc)) from None
    call.reason = f"explained {action} by {subject[:128]} on {model or '-'}"
    return _access_page(call, explained=found)


def _change(call: ConsoleCall, action: AdminAction) -> Any:
    principal = call.principal
    if principal is None:
        raise RuntimeError("a change before sign-in")
    return admin_change(
        call.services.engine,
        call.services.audit_keys,
        action,
        actor=principal.subject,
        actor_kind=ActorKind.USER,
    )


@bp.post("/access/grant")
@page(Action.ADMIN_WRITE, post=True)
def grant(call: ConsoleCall) -> Response:
    call.authorize(Action.ADMIN_WRITE)
    form = request.form

    def given(name: str) -> str | None:
        return (form.get(name) or "").strip() or None

    try:
        epsilon = given("max_epsilon")
        rule = Rule(
            effect=Effect.DENY if form.get("effect") == "deny" else Effect.ALLOW,
            subject=given("subject") or "",
            actions=tuple(Action(a) for a in form.getlist("actions")),
            model=given("model") or "*",
            version=_whole(given("version"), "version", 1, 2**31),
            label=given("label"),
            max_rows=_whole(given("max_rows"), "max_rows", 1, 2**31),
            max_epsilon=float(epsilon) if epsilon is not None else None,
            finite_inputs=form.get("finite_inputs") is not None,
            description=given("description"),
        )
    except (InvalidRule, ValueError) as exc:
        raise Refused(400, f"not a rule: {exc}") from None
    try:
        with _change(call, AdminAction.POLICY_GRANT) as change:
            stored, created = grants.grant(change.session, rule, actor=change.actor)
            text = f"rule {stored.id}: {stored.summary()}" + ("" if created else " (unchanged)")
            change.note(text, code="grant" if created else "unchanged", rule_id=stored.id)
    except Conflict as exc:
        raise Refused(409, str(exc)) from None
    call.reason = text
    return see_other("/console/access")


@bp.post("/access/revoke")
@page(Action.ADMIN_WRITE, post=True)
def revoke(call: ConsoleCall) -> Response:
    call.authorize(Action.ADMIN_WRITE)
    rule_id = _whole((request.form.get("rule") or "").strip() or None, "rule", 1, 2**62)
    if rule_id is None:
        raise Refused(400, "rule is required")
    try:
        with _change(call, AdminAction.POLICY_REVOKE) as change:
            removed = grants.revoke(change.session, [rule_id])
            text = "; ".join(f"removed rule {r.id}: {r.summary()}" for r in removed)
            change.note(text, code="revoke")
    except NotFound as exc:
        raise Refused(404, str(exc)) from None
    call.reason = text
    return see_other("/console/access")


@bp.post("/access/disable")
@page(Action.ADMIN_WRITE, post=True)
def disable(call: ConsoleCall) -> Response:
    call.authorize(Action.ADMIN_WRITE)
    name = (request.form.get("principal") or "").strip()
    disabled = request.form.get("enable") is None
    if not name:
        raise Refused(400, "principal is required")
    try:
        with _change(call, AdminAction.PRINCIPAL_CHANGE) as change:
            _row, changed = directory.set_disabled(change.session, name, disabled)
            state = "disabled" if disabled else "enabled"
            text = f"{name} {state}" if changed else f"{name} was already {state}"
            change.note(text, code="disable" if disabled else "enable", principal=name)
    except NotFound as exc:
        raise Refused(404, str(exc)) from None
    call.reason = text
    return see_other("/console/access")
