"""Every console request, guarded and audited: the console's counterpart of `serving.pipeline`.

`ConsoleCall.run` finds the session the cookie names (none, unknown, expired or idle: the
browser is sent to sign in), checks its principal again as the API checks a token (revoked,
disabled, expired: the session ends now), checks the CSRF token and the Origin of a POST (403),
runs the view, which must reach an allowing decision (`authorize`) or answer a refusal, and
commits one audit event for the outcome before the response leaves: if that write fails the
answer is 503 (fail closed). It reuses the pipeline's public pieces (`audit_decision`,
`UNAVAILABLE_ERRORS`, the audit sink and policy of `Services`) rather than its `Call`, which
reads the bearer header and speaks JSON.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Response, current_app, g, render_template, request

from secure_maas.actions import Action, AdminAction
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent
from secure_maas.auth.principal import Principal
from secure_maas.auth.verify import InvalidToken
from secure_maas.console.sessions import SessionEnded, SessionStore, csrf_matches, csrf_token
from secure_maas.dataplane.client import AuditUnconfirmed
from secure_maas.dataplane.facts import VersionFacts
from secure_maas.policy import Decision, ModelFacts, RequestFacts
from secure_maas.serving.pipeline import (
    ANONYMOUS,
    UNAVAILABLE_ERRORS,
    audit_decision,
    commit_event,
)
from secure_maas.serving.services import Services
from secure_maas.timeutil import utcnow

log = logging.getLogger(__name__)

COOKIE = "smaas_console"
COOKIE_PATH = "/console/"
STORE = "secure_maas.console.sessions"


class Refused(Exception):
    """A refusal the console answers with an error page (or a redirect to sign in)."""

    def __init__(
        self, status: int, message: str, *, reason: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or message
        self.code = code


def services() -> Services:
    found: Services = current_app.extensions["secure_maas"]
    return found


def store() -> SessionStore:
    found: SessionStore = current_app.extensions[STORE]
    return found


class ConsoleCall:
    """One console request: who made it, what was decided, what its audit event records."""

    def __init__(self, services: Services, action: Action | AdminAction) -> None:
        self.services = services
        self.action: Action | AdminAction = action
        self.request_id: str = g.request_id
        self.started = time.perf_counter()
        self.now = utcnow()
        self.principal: Principal | None = None
        self.session_id: str | None = None
        self.session_row: int | None = None
        self.allowed = False
        self.denied = False
        self.reason: str | None = None
        self.reason_code: str | None = None
        self.model_name: str | None = None
        self.version: int | None = None
        self.rows: int | None = None
        self.clear_cookie = False
        g.console_call = self  # what the templates show: who is signed in, the CSRF token

    # -- the session ------------------------------------------------------------------------

    def load_session(self) -> Principal:
        """The principal of the request's session, checked again now (`SessionEnded` if none)."""
        cookie = request.cookies.get(COOKIE)
        try:
            live = store().load(cookie, self.now)
        except SessionEnded:
            self.clear_cookie = cookie is not None
            raise
        try:
            principal = self.services.verifier.recheck(live.principal, self.now)
        except InvalidToken as exc:
            store().end(live.row_id)
            self.clear_cookie = True
            raise SessionEnded(f"console session ended: {exc.reason}", "invalid_token") from None
        self.principal, self.session_id, self.session_row = principal, cookie, live.row_id
        return principal

    @property
    def signed_in(self) -> bool:
        """Whether this request came with a live session (the page shows who and sign-out)."""
        return self.principal is not None and self.session_id is not None

    @property
    def csrf(self) -> str:
        if self.session_id is None:
            raise RuntimeError("csrf before load_session()")
        return csrf_token(self.session_id)

    def check_post(self) -> None:
        """A POST's Origin (when sent) must be this server's, and its CSRF token the
        session's (403 otherwise)."""
        check_origin()
        if self.session_id is None or not csrf_matches(self.session_id, request.form.get("csrf")):
            given = "no" if not request.form.get("csrf") else "a wrong"
            raise Refused(403, "invalid or missing CSRF token", reason=f"{given} CSRF token")

    # -- decisions --------------------------------------------------------------------------

    def decide(self, action: Action, target: ModelFacts | None) -> Decision:
        principal = self.principal
        if principal is None:
            raise RuntimeError("decide() before load_session()")
        facts = RequestFacts(0, self.now, True)
        return self.services.policy.decide(principal, action, target, facts)

    def may(self, action: Action, target: ModelFacts | None = None) -> bool:
        return self.decide(action, target).allowed

    def may_version(self, action: Action, facts: VersionFacts) -> bool:
        epsilon = facts.epsilon_for(loads=False)
        target = ModelFacts(facts.name, facts.version, facts.labels, epsilon)
        return self.decide(action, target).allowed

    def authorize(self, *actions: Action, target: ModelFacts | None = None) -> Action:
        """Allow the request if any of `actions` is allowed (the first that is is recorded);
        403 otherwise."""
        first: Decision | None = None
        for action in actions:
            decision = self.decide(action, target)
            if decision.allowed:
                self.action = action
                self.allow(decision.reason)
                return action
            first = first or decision
        self.reason = first.reason if first is not None else "not allowed"
        raise Refused(403, "permission denied", reason=self.reason)

    def allow(self, reason: str) -> None:
        self.allowed = True
        self.reason = reason

    # -- running and recording --------------------------------------------------------------

    def run(self, view: Callable[..., Response], values: dict[str, object], post: bool) -> Response:
        try:
            self.load_session()
            if post:
                self.check_post()
            response = view(self, **values)
            if not self.allowed:
                raise RuntimeError(f"{request.endpoint} answered without an allowing decision")
        except SessionEnded as ended:
            self.denied, self.reason, self.reason_code = True, ended.reason, ended.code
            if post:
                response = error_page(403, "your console session has ended: sign in again")
            else:
                response = see_other("/console/signin")
        except Refused as refused:
            self.allowed = False
            self.reason, self.reason_code = refused.reason, refused.code
            response = error_page(refused.status, refused.message)
        except UNAVAILABLE_ERRORS as exc:
            log.warning("%s failed closed: %s: %s", request.endpoint, type(exc).__name__, exc)
            self.allowed = False
            self.reason_code, self.reason = "unavailable", f"{type(exc).__name__}: {exc}"
            response = error_page(503, "service unavailable")
        except Exception as exc:
            log.exception("unhandled error in %s", request.endpoint)
            self.allowed = False
            self.reason_code, self.reason = "internal", f"{type(exc).__name__}: {exc}"
            response = error_page(500, "internal error")
        if self.clear_cookie:
            forget_cookie(response)
        return self.finish(response)

    def finish(self, response: Response) -> Response:
        """Commit the audit event of `response`; a 503 page instead if that fails
        (`pipeline.commit_event`, the pipeline's own)."""
        status = response.status_code
        if self.denied:
            decision = AuditDecision.DENY
        elif status < 400 and not self.allowed:
            decision = AuditDecision.ERROR
        else:
            decision = audit_decision(status)
        if commit_event(self, status, decision):
            return response
        answer = error_page(503, "service unavailable")
        if self.clear_cookie:
            forget_cookie(answer)
        return answer

    def mark_unconfirmed(self, status: int, exc: AuditUnconfirmed) -> None:
        """What the 503 event says when the writer died holding this request's event."""
        self.allowed, self.denied = False, False
        self.reason_code = "unavailable"
        self.reason = f"{exc} (the answer would have been {status})"

    def event(self, status: int, decision: AuditDecision) -> AuditEvent:
        principal = self.principal
        client = request.remote_addr
        detail: dict[str, str | int | None] = {"console": request.path[:200]}
        if principal is not None:
            detail.update(principal.audit_detail() or {})
        return AuditEvent(
            action=self.action,
            actor=principal.subject if principal is not None else ANONYMOUS,
            actor_kind=ActorKind.USER if principal is not None else ActorKind.ANONYMOUS,
            decision=decision,
            model=self.model_name,
            model_version=self.version,
            reason_code=self.reason_code if decision is not AuditDecision.ALLOW else None,
            reason=self.reason,
            http_status=status,
            client=client[:64] if client else None,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            rows=self.rows,
            request_id=self.request_id,
            detail=detail,
        )


View = Callable[..., Response]


def page(action: Action | AdminAction, *, post: bool = False) -> Callable[[View], View]:
    """Run the decorated view as a console request for `action` (a POST: CSRF-checked)."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def run(**values: object) -> Response:
            return ConsoleCall(services(), action).run(view, values, post)

        return run

    return decorate


def check_origin() -> None:
    """A browser's POST from another host is refused (defence beside SameSite and CSRF).

    The host and port are compared, not the scheme: behind a proxy that ends TLS the browser's
    origin is https while this server sees http (the proxy must pass the Host header on).
    `null` (a sandboxed frame, a `file:` page, a redirect across origins) is refused: the
    console's `Referrer-Policy: same-origin` lets browsers name its own origin on its forms
    (under `no-referrer` they would send `null`). No header at all (a client that is not a
    browser) is left to the cookie and the CSRF token."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    theirs = urlsplit(origin)
    if theirs.scheme not in ("http", "https") or theirs.netloc != request.host:
        raise Refused(403, "cross-origin request refused", reason=f"Origin {origin[:100]!r}")


def see_other(location: str) -> Response:
    """A 303 to a path of this console (never a URL a request gave)."""
    return Response(status=303, headers={"Location": location})


def error_page(status: int, message: str) -> Response:
    response = Response(render_template("console/error.html", status=status, message=message))
    response.status_code = status
    return response


def forget_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict")
