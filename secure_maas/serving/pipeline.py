"""The one request pipeline: every guarded view runs through it, in this order.

1. a declared body size over the limit (413), before anything is parsed or verified;
2. bearer token (401 with `WWW-Authenticate`; a malformed header is a 401 too);
3. the model the URL names, resolved from the registry copy without loading weights (404);
4. visibility: a caller who may neither do the action nor `model:list` on that version gets the
   404 of a model that does not exist, word for word (invariant 1); one who may list it but
   never do the action gets 403 here, before its body is read, so 400 messages cannot tell it
   the model's signature;
5. the body: its content type and its content coding (415), then the body itself, read only
   now, for a caller allowed to proceed: at most `max_body_bytes` whether it has a
   Content-Length or is chunked (413), all of it within `body_timeout` (408), then decoded if
   it came compressed, again to at most `max_body_bytes` (413; 400 if it is not valid data of
   its coding: `encodings`), then parsed and checked against the signature (400);
6. the access decision with the real row count and whether the inputs are all finite (403: a
   generic message; why goes to audit);
7. the quota (429 with `Retry-After`), consumed only for predictions, from this process's
   leases on the shared counters (`policy.leases`);
8. the model call, and the response.

Steps 1-4 use the request line and headers only: nobody gets a thread to wait on its body
before it is known to be allowed to send one, and a request refused before its body was read
closes its connection (`CLOSE_CONNECTION`), so the unread rest is never waited for either.

The pipeline does not care how a request arrived: `Call` reads it through an `Inbound` (the
declared body size, the `Authorization` values, the content coding, the body, the client's
address, the request id and an endpoint name for logs), and `execute` turns every outcome into
a result or a `Refusal` (status, message, headers) that the transport renders: `FlaskInbound`
and `guarded` below for HTTP (an error body and its status), `serving.grpc` for gRPC (a status
code and its details), through the same steps, decisions and audit events.

Views declare their action with `@guarded(Action...)` and receive a `Call`, whose methods are
the steps (`model`, `parse`, `predict`, `authorize`, `visible`); the order above is all they can
do, and a view that answers without an allowing decision gets a 500, never a pass. Every
outcome, 2xx or error, is an audit event committed before the response is returned; if that
write fails the answer is 503 (fail closed). The event's `body_sha256` is the digest of the
whole body as received, and there is none when the body was not read in full (refused before
it, over the limit, late or cut short): a digest of a part would claim what was not sent.
Unreadable state (database, keys) is a 503; an unexpected exception a 500 with a fixed
message. No traceback ever reaches a caller.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
from flask import Response, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError

from secure_maas.actions import Action, AdminAction
from secure_maas.audit import ActorKind, AuditDecision, AuditEvent, AuditUnavailable, body_digest
from secure_maas.auth.keyset import KeySetError
from secure_maas.auth.principal import Principal
from secure_maas.auth.verify import InvalidToken
from secure_maas.dataplane.batcher import Array, BatcherClosed, BatchRefused, QueueFull
from secure_maas.dataplane.client import AuditUnconfirmed
from secure_maas.dataplane.facts import VersionFacts
from secure_maas.dataplane.loaded import ModelUnavailable
from secure_maas.dataplane.loads import current_request_id
from secure_maas.dataplane.plane import Fallback, Served
from secure_maas.errors import SecureMaasError
from secure_maas.keys import KeyringError
from secure_maas.policy import Decision, ModelFacts, RequestFacts
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.registry.store import InvalidName
from secure_maas.serving.bodies import BODY_READ, CLOSE_CONNECTION, read_up_to, watch_body
from secure_maas.serving.encodings import (
    CONTENT_ENCODING,
    Coding,
    EncodingRefused,
    content_coding,
    decode,
)
from secure_maas.serving.errors import ApiError, error_response
from secure_maas.serving.formats.tensors import BadRequest
from secure_maas.serving.headers import AuthError, bearer_token, check_content_type
from secure_maas.serving.refs import Api, not_found_message, parse_ref
from secure_maas.serving.services import Services
from secure_maas.timeutil import utcnow

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
FORBIDDEN = "permission denied"
UNAVAILABLE = "service unavailable"
INTERNAL = "internal error"

#: State that could not be read: the request fails closed with 503.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    KeySetError,
    KeyringError,
    SecureMaasError,  # DatabaseUnavailable, AuditUnavailable, MissingAuditKey, ...
    OSError,
)


class Parsed(Protocol):
    """A parsed predict or infer body: its arrays by input name and its row count."""

    @property
    def inputs(self) -> dict[str, Array]: ...

    @property
    def rows(self) -> int: ...


ParsedT = TypeVar("ParsedT", bound=Parsed)
ResultT = TypeVar("ResultT")


class Inbound(Protocol):
    """What the pipeline reads of a request, whatever carried it (HTTP or gRPC)."""

    @property
    def endpoint(self) -> str:
        """The handler's name, for logs."""
        ...

    @property
    def request_id(self) -> str:
        """The request's id (the caller's when plain and short enough, else a fresh one)."""
        ...

    @property
    def client(self) -> str | None:
        """The caller's address, as the audit event records it."""
        ...

    @property
    def content_length(self) -> int | None:
        """The body's declared size, if the request declares one before it is read."""
        ...

    def authorization(self) -> list[str]:
        """The request's `Authorization` values (none, one, or several: a 401 but for one)."""
        ...

    def content_coding(self, call: Call, content_types: frozenset[str]) -> Coding | None:
        """The body's content coding, once its type is one of `content_types` (415 if not;
        the refusal's reason set on `call`)."""
        ...

    def read_body(self, call: Call) -> None:
        """Read the whole body into `call.body` (and its digest), within the limits."""
        ...


@dataclass(frozen=True)
class Refusal:
    """An answer other than success, as each transport renders it: an HTTP status with
    `{"error": message}` and `headers`, or the gRPC status code of `status`."""

    status: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


def services() -> Services:
    """The current app's `Services`."""
    found: Services = current_app.extensions["secure_maas"]
    return found


def audit_decision(status: int) -> AuditDecision:
    """Served: allow. Refused by authentication, policy, visibility or quota: deny (a 404 is
    a deny whatever its cause, as the caller cannot tell them apart). Malformed request or
    service failure: error."""
    if status < 400:
        return AuditDecision.ALLOW
    if status in (401, 403, 404, 429):
        return AuditDecision.DENY
    return AuditDecision.ERROR


class Call:
    """One guarded request as it goes through the pipeline; what its audit event records."""

    def __init__(self, services: Services, action: Action, api: Api, inbound: Inbound) -> None:
        self.services = services
        self.action = action
        self.api = api
        self.inbound = inbound
        self.request_id: str = inbound.request_id
        self.started = time.perf_counter()
        self.now = utcnow()
        self.principal: Principal | None = None
        self.model_name: str | None = None
        self.facts: VersionFacts | None = None
        self.version: int | None = None
        self.rows: int | None = None
        self.body = b""
        self.body_sha256: str | None = None
        self.allowed = False
        self.reason: str | None = None
        self.reason_code: str | None = None
        self._ref: ModelRef | None = None
        self._not_found = ""

    # -- steps 1-2: what every guarded request goes through -------------------------------

    def check_length(self) -> None:
        """Step 1: refuse a declared body over the limit (a header: refusing costs nothing)."""
        limit = self.services.settings.max_body_bytes
        length = self.inbound.content_length
        if length is not None and length > limit:
            self.reason = f"Content-Length {length} is over {limit}"
            raise self.too_large()

    def authenticate(self) -> Principal:
        """Step 2: the principal of the bearer token (401 otherwise; 503 if it cannot be
        checked)."""
        try:
            token = bearer_token(self.inbound.authorization())
        except AuthError as error:
            self.reason = error.reason
            raise
        try:
            principal = self.services.verifier.verify(token, self.now)
        except InvalidToken as exc:
            self.reason = exc.reason
            raise AuthError("invalid token", exc.reason, invalid_token=True) from None
        self.principal = principal
        return principal

    # -- steps 3-4: the model, without its weights ----------------------------------------

    def model(
        self, name: str, version: str | None = None, label: str | None = None
    ) -> VersionFacts:
        """Steps 3-4: the version the URL names, if the caller may see it (404 otherwise).

        For an action other than prediction the decision is made here (403 if the caller may
        only list the model); a prediction is decided in `predict`, with its rows.
        """
        self._not_found = not_found_message(self.api, name, version, label)
        try:
            ref = parse_ref(name, version, label)
        except InvalidName as exc:
            self.reason = f"not a model reference: {exc}"
            raise self._missing() from None
        self._ref = ref
        self.model_name = ref.name
        try:
            facts = self.services.cache.facts(ref)
        except ModelNotFound as exc:
            self.reason = str(exc)
            raise self._missing() from None
        self.facts, self.version = facts, facts.version
        decision = self.decide(self.action, facts, rows=0)
        if decision.allowed:
            if self.action is not Action.MODEL_PREDICT:
                self._allow(decision)
            return facts
        if self.action is not Action.MODEL_LIST and self.may_list(facts):
            raise self._forbidden(decision)
        self.reason = f"not visible: {decision.reason}"
        raise self._missing("not_visible")

    def may_list(self, facts: VersionFacts) -> bool:
        """Whether the caller may see `facts` in listings (`model:list`)."""
        return self.decide(Action.MODEL_LIST, facts, rows=0).allowed

    def may_see(self, facts: VersionFacts) -> bool:
        """Whether `facts` is visible to the caller: it may do this call's action or list it."""
        return self.decide(self.action, facts, rows=0).allowed or self.may_list(facts)

    # -- step 5: the body ------------------------------------------------------------------

    def parse(self, parser: Callable[[bytes], ParsedT], content_types: frozenset[str]) -> ParsedT:
        """Step 5: the body, read now, decoded if it came compressed and parsed by `parser`
        (415 for another content type or coding, 413 if it decodes past the limit, 400 if
        bad)."""
        coding = self.inbound.content_coding(self, content_types)
        self.inbound.read_body(self)
        try:
            parsed = parser(decode(self.body, coding, self.services.settings.max_body_bytes))
        except EncodingRefused as error:
            self.reason = error.reason
            raise
        except BadRequest as exc:
            raise ApiError(400, str(exc)) from None
        self.rows = parsed.rows
        return parsed

    def take_body(self, data: bytes) -> None:
        """The body as received in full (its digest goes to the audit event)."""
        self.body = data
        if data:
            self.body_sha256 = body_digest(data)

    # -- steps 6-8: decision with rows, quota, model call ------------------------------------

    def predict(self, parsed: Parsed) -> tuple[dict[str, Array], VersionFacts]:
        """Steps 6-8: decide with the rows (403), consume the quota (429), run the model.

        Returns the outputs and the version that computed them (a label whose new version
        was refused keeps serving the previous one; that version is decided on too).
        """
        facts, ref, principal = self.facts, self._ref, self.principal
        if facts is None or ref is None or principal is None:
            raise RuntimeError("predict() before model(): the view skipped a pipeline step")
        finite = all_finite(parsed.inputs)
        decision = self.decide(Action.MODEL_PREDICT, facts, rows=parsed.rows, finite=finite)
        if not decision.allowed:
            raise self._forbidden(decision)
        quota = self.services.quotas.consume(
            principal.subject, facts.name, decision.quotas, parsed.rows, self.now
        )
        if not quota.allowed:
            self.reason = quota.reason
            raise ApiError(
                429,
                f"quota exceeded: retry after {quota.retry_after} seconds",
                headers={"Retry-After": str(quota.retry_after)},
            )
        self._allow(decision)
        allowed = {facts.version}
        try:
            served = self._run_model(ref, parsed, allowed)
            if isinstance(served, Fallback):
                # A label or bare name whose version was refused keeps serving the version it
                # served before: that version is decided on too, then run.
                fallback = self._facts_of(ref.name, served.version)
                self.version = fallback.version
                again = self.decide(Action.MODEL_PREDICT, fallback, rows=parsed.rows, finite=finite)
                if not again.allowed:
                    self.allowed = False
                    raise self._forbidden(again)
                self._allow(again)
                allowed.add(fallback.version)
                served = self._run_model(ref, parsed, allowed)
                if isinstance(served, Fallback):
                    raise ModelUnavailable(f"{ref} moved again while it was being served")
        except ModelNotFound as exc:
            self.allowed = False
            self.reason = str(exc)
            raise self._missing() from None
        except BatchRefused as exc:
            raise ApiError(400, str(exc)) from None
        except QueueFull as exc:
            self.reason = str(exc)
            raise ApiError(
                503, "the model is busy: retry shortly", headers={"Retry-After": "1"}
            ) from None
        if served.version == facts.version:
            return served.outputs, facts
        return served.outputs, self._facts_of(ref.name, served.version)

    def _facts_of(self, name: str, version: int) -> VersionFacts:
        """The facts of a version the data plane named; the model process's copy of the
        registry may be a moment ahead of this worker's (a new version): look again, once."""
        ref = ModelRef(name, version=version)
        try:
            return self.services.cache.facts(ref)
        except ModelNotFound:
            self.services.cache.refresh(force=True)  # ours, or one another thread was doing
            return self.services.cache.facts(ref)

    def _run_model(self, ref: ModelRef, parsed: Parsed, allowed: set[int]) -> Served | Fallback:
        return self.services.models.predict(ref, parsed.inputs, allowed, self.request_id)

    # -- requests about no model -----------------------------------------------------------

    def authorize(self) -> None:
        """The decision for an action about no model (`audit:read`): 403 unless allowed."""
        decision = self.decide(self.action, None, rows=0)
        if not decision.allowed:
            raise self._forbidden(decision)
        self._allow(decision)

    def visible(self, candidates: Iterable[VersionFacts]) -> list[VersionFacts]:
        """The versions the caller may list (a listing is allowed; it shows only those)."""
        shown = [facts for facts in candidates if self.may_list(facts)]
        self.allowed = True
        self.reason = f"listed {len(shown)} model version(s)"
        return shown

    # -- helpers ---------------------------------------------------------------------------

    def decide(
        self, action: Action, facts: VersionFacts | None, *, rows: int, finite: bool = True
    ) -> Decision:
        principal = self.principal
        if principal is None:
            raise RuntimeError("decide() before authenticate()")
        target = None
        if facts is not None:
            epsilon = facts.epsilon_for(loads=action is Action.MODEL_PREDICT)
            target = ModelFacts(facts.name, facts.version, facts.labels, epsilon)
        request_facts = RequestFacts(rows, self.now, finite)
        return self.services.policy.decide(principal, action, target, request_facts)

    def _allow(self, decision: Decision) -> None:
        self.allowed = True
        self.reason = decision.reason

    def _forbidden(self, decision: Decision) -> ApiError:
        self.reason = decision.reason
        return ApiError(403, FORBIDDEN)

    def too_large(self) -> ApiError:
        """The refusal of a body over `max_body_bytes` (413)."""
        limit = self.services.settings.max_body_bytes
        return ApiError(413, f"request body too large: the limit is {limit} bytes")

    def _missing(self, code: str = "not_found") -> ApiError:
        return ApiError(404, self._not_found or "not found", reason_code=code)

    # -- running a view and recording the outcome ------------------------------------------

    def execute(
        self, view: Callable[..., ResultT], arguments: Mapping[str, object]
    ) -> ResultT | Refusal:
        """Run `view` through the pipeline: its result, or the `Refusal` every failure maps to
        (not yet audited: `record` does that)."""
        try:
            self.check_length()
            self.authenticate()
            result = view(self, **arguments)
            if not self.allowed:
                raise RuntimeError(f"{self.inbound.endpoint} answered without an allowing decision")
            return result
        except ApiError as error:
            self.reason_code = self.reason_code or error.reason_code
            if self.reason is None:
                self.reason = error.message
            return Refusal(error.status, error.message, error.headers)
        except ModelNotFound as exc:  # the registry changed under the request: as if never there
            self.reason_code, self.reason = "not_found", str(exc)
            return Refusal(404, self._not_found or "not found")
        except (ModelUnavailable, BatcherClosed) as exc:
            self.reason_code, self.reason = "unavailable", str(exc)
            return Refusal(503, UNAVAILABLE, {"Retry-After": "5"})
        except UNAVAILABLE_ERRORS as exc:
            endpoint = self.inbound.endpoint
            log.warning("%s failed closed: %s: %s", endpoint, type(exc).__name__, exc)
            self.reason_code, self.reason = "unavailable", f"{type(exc).__name__}: {exc}"
            return Refusal(503, UNAVAILABLE)
        except Exception as exc:
            log.exception("unhandled error in %s", self.inbound.endpoint)
            self.reason_code, self.reason = "internal", f"{type(exc).__name__}: {exc}"
            return Refusal(500, INTERNAL)

    def run(self, view: Callable[..., Response], arguments: dict[str, object]) -> Response:
        """Run `view` through the pipeline; returns its response only once it is audited."""
        result = self.execute(view, arguments)
        if isinstance(result, Refusal):
            return self.finish(error_response(result.status, result.message, result.headers))
        return self.finish(result)

    def finish(self, response: Response) -> Response:
        """Commit the audit event of `response`; answer 503 instead if that fails."""
        if self.record(response.status_code):
            return response
        return error_response(503, UNAVAILABLE)

    def record(self, status: int) -> bool:
        """Commit the audit event of an answer with `status`; False if that failed, and then
        the answer must be a 503 (fail closed)."""
        return commit_event(self, status, audit_decision(status))

    def mark_unconfirmed(self, status: int, exc: AuditUnconfirmed) -> None:
        """What the 503 event says when the writer died holding this request's event."""
        self.allowed = False
        self.reason_code = "unavailable"
        self.reason = f"{exc} (the answer would have been {status})"

    def event(self, status: int, decision: AuditDecision) -> AuditEvent:
        principal = self.principal
        client = self.inbound.client
        return AuditEvent(
            action=self.action,
            actor=principal.subject if principal is not None else ANONYMOUS,
            actor_kind=ActorKind.USER if principal is not None else ActorKind.ANONYMOUS,
            decision=decision,
            model=self.model_name,
            model_version=self.version,
            reason_code=self.reason_code if status >= 400 else None,
            reason=self.reason,
            http_status=status,
            client=client[:64] if client else None,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            rows=self.rows,
            body_sha256=self.body_sha256,
            request_id=self.request_id,
            detail=principal.audit_detail() if principal is not None else None,
        )


class FlaskInbound:
    """The request Flask is handling, as the pipeline reads it (the request context's)."""

    @property
    def endpoint(self) -> str:
        return str(request.endpoint)

    @property
    def request_id(self) -> str:
        found: str = g.request_id
        return found

    @property
    def client(self) -> str | None:
        return request.remote_addr

    @property
    def content_length(self) -> int | None:
        return request.content_length

    def authorization(self) -> list[str]:
        return request.headers.getlist("Authorization")

    def content_coding(self, call: Call, content_types: frozenset[str]) -> Coding | None:
        try:
            check_content_type(request.mimetype, content_types)
        except ApiError:
            call.reason = f"content type {request.mimetype[:64]!r}"
            raise
        try:
            return content_coding(request.headers.getlist(CONTENT_ENCODING))
        except EncodingRefused as error:
            call.reason = error.reason
            raise

    def read_body(self, call: Call) -> None:
        """The whole body, now that the caller may send it, and its digest: 413 past
        `max_body_bytes` (a chunked body is read up to one byte past it, never served cut),
        408 unless all of it arrives within `body_timeout`, 400 if it ends early or its
        framing is broken."""
        settings = call.services.settings
        limit, seconds = settings.max_body_bytes, settings.body_timeout.total_seconds()
        environ = request.environ
        length = request.content_length
        if length is None and not environ.get("wsgi.input_terminated"):
            environ[BODY_READ] = True  # neither a length nor a framing the server ends: none
            return
        wanted = limit + 1 if length is None else length
        watch = watch_body(environ, seconds)
        try:
            data, failure = read_up_to(environ["wsgi.input"], wanted)
        finally:
            late = watch is not None and watch.cancel()
        if late:
            environ[CLOSE_CONNECTION] = True  # the socket no longer reads: no next request
        if len(data) > limit:
            call.reason = f"body without Content-Length over {limit} bytes"
            raise call.too_large()
        if failure is not None or (length is not None and len(data) < length):
            expected = "unknown" if length is None else str(length)
            if late:
                call.reason = f"body not received within {seconds:g} s: {len(data)} of {expected}"
                raise ApiError(
                    408,
                    f"request body not received within {seconds:g} seconds",
                    reason_code="body_timeout",
                )
            cause = f" ({type(failure).__name__})" if failure is not None else ""
            call.reason = f"body cut short{cause}: {len(data)} of {expected} bytes"
            raise ApiError(400, "request body incomplete or malformed", reason_code="bad_body")
        environ[BODY_READ] = True
        call.body = data
        if data:
            call.body_sha256 = body_digest(data)


View = Callable[..., Response]


class Recorded(Protocol):
    """A request whose outcome is audited: the pipeline's `Call`, the console's."""

    @property
    def services(self) -> Services: ...

    @property
    def action(self) -> Action | AdminAction: ...

    def event(self, status: int, decision: AuditDecision) -> AuditEvent: ...

    def mark_unconfirmed(self, status: int, exc: AuditUnconfirmed) -> None: ...


def commit_event(call: Recorded, status: int, decision: AuditDecision) -> bool:
    """Commit `call`'s audit event for an answer with `status`; False if that failed, and then
    the answer must be a 503 (fail closed), whatever the cause. The decision metrics count the
    outcome actually given. When the instance's writer died holding the event
    (`AuditUnconfirmed`), the 503 the caller gets is recorded as its own event (best effort:
    if that fails too, the 503 stands unrecorded). One copy for every way in."""
    metrics = call.services.metrics
    try:
        call.services.audit.append(call.event(status, decision))
    except Exception as exc:  # any failure to record fails closed, whatever its cause
        if isinstance(exc, AuditUnavailable):
            log.error("audit write failed (%s); answering 503 instead of %d", exc, status)
        else:
            log.exception("audit write failed; answering 503 instead of %d", status)
        metrics.audit_failures.inc()
        metrics.decisions.labels(call.action.value, AuditDecision.ERROR.value).inc()
        if isinstance(exc, AuditUnconfirmed):
            call.mark_unconfirmed(status, exc)
            try:
                exc.record_locally(call.event(503, AuditDecision.ERROR))
            except Exception as again:
                log.error("could not record the 503 either: %s", again)
        return False
    metrics.decisions.labels(call.action.value, decision.value).inc()
    return True


def all_finite(inputs: dict[str, Array]) -> bool:
    """Whether every float input holds finite numbers only (no NaN or ±Infinity)."""
    return all(
        bool(np.isfinite(array).all()) for array in inputs.values() if array.dtype.kind == "f"
    )


def guarded(action: Action, *, api: Api) -> Callable[[View], View]:
    """Run the decorated view through the pipeline for `action`; it receives the `Call` first,
    then the URL's values."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def run(**values: object) -> Response:
            call = Call(services(), action, api, FlaskInbound())
            token = current_request_id.set(call.request_id)
            try:
                return call.run(view, values)
            finally:
                current_request_id.reset(token)

        run.guarded_action = action  # type: ignore[attr-defined]
        return run

    return decorate
