"""Every header and query parameter the service reads, and the name, version and label
segments of its paths, driven with arbitrary text over real HTTP through gunicorn (`secure-maas
serve --workers 2 --threads 4`, PostgreSQL, one server for the module). No answer is a 5xx.

Driven: `Authorization`, `X-Request-Id`, `Content-Type`, `Inference-Header-Content-Length`,
`Content-Length`, every `/admin/audit` parameter (and unknown ones, repeated ones), the query of
`/admin/audit/verify`, and the name, version and label segments of the TF Serving and OIP paths.
Requests go out on a raw socket, so a header value can hold any byte that HTTP framing leaves
possible: anything but CR and LF (those would end the header and start another, which is a
different request, not a different value). Text is sent as UTF-8 or as latin-1 (a WSGI server
decodes header bytes as latin-1, so `²` arrives as `²` only that way).

Besides "no 5xx", each property checks what the service promises for that input: a token-less or
malformed `Authorization` gets 401 with a Bearer challenge, an `X-Request-Id` comes back as sent
when plain and short or is replaced by a fresh one, a caller without `audit:read` gets 403 for
any query, and every answer the app gives is JSON `{"error": text}` with a request id. An answer
without a request id is gunicorn's own (a byte it refuses in a header or a length it cannot
read): always a 4xx. The audit chain is intact afterwards.

Examples are bounded (`EXAMPLES` per property), with no deadline and no health check that load
could trip.
"""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from secure_maas.serving.formats.oip import HEADER_LENGTH
from secure_maas.serving.views.admin import PARAMETERS
from tests.functional.serving_support import Instance, Served, server
from tests.system.conftest import Report
from tests.system.support import GUNICORN, audit_intact

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

EXAMPLES = 60
ROW = [0.1, -0.2, 0.3, 0.4]
PREDICT = "/v1/models/digits:predict"
INFER = "/v2/models/digits/infer"
PREDICT_BODY = json.dumps({"instances": [ROW]}).encode()
INFER_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
).encode()
_FRESH_ID = re.compile(r"[0-9a-f]{32}")
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


def bounded(examples: int = EXAMPLES) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(scope="module")
def served(pg_instance: Instance) -> Iterator[Served]:
    with server(pg_instance, *GUNICORN, "--preload", "digits") as running:
        yield running


# -- a raw HTTP/1.1 client ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def from_app(self) -> bool:
        """Whether the app answered (it gives every answer a request id; gunicorn does not)."""
        return "x-request-id" in self.headers

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    url: str,
    method: str,
    target: bytes,
    headers: list[tuple[str, bytes]],
    body: bytes = b"",
    *,
    content_length: bytes | None = None,
) -> Answer:
    """One request on its own connection, bytes exactly as given, read to the end.

    `Content-Length` is the body's unless `content_length` says otherwise; when it claims more
    than is sent, the sending side is shut so the server meets the end of the body, not a wait.
    """
    host, port = url.removeprefix("http://").split(":")
    length = str(len(body)).encode() if content_length is None else content_length
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: " + host.encode()]
    lines += [name.encode() + b": " + value for name, value in headers]
    if body or content_length is not None:
        lines.append(b"Content-Length: " + length)
    lines.append(b"Connection: close")
    with socket.create_connection((host, int(port)), timeout=60) as raw:
        raw.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        raw.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := raw.recv(65536):
                received += chunk
        except ConnectionResetError:
            # The server closed with part of the body unread (it refused before reading it):
            # the kernel then resets the connection, after the answer it had already sent.
            if not received:
                raise
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    size = int(found.get("content-length", len(rest)))
    return Answer(int(status_line.split(" ")[1]), found, rest[:size])


def bearer(instance: Instance, who: str) -> tuple[str, bytes]:
    return ("Authorization", f"Bearer {instance.tokens[who]}".encode())


def check(answer: Answer, allowed: set[int]) -> None:
    """No 5xx; the app's answers are among `allowed` and its errors are `{"error": text}`;
    gunicorn's own (no request id) are 4xx."""
    assert answer.status < 500, (answer.status, answer.body[:300])
    if not answer.from_app:
        assert 400 <= answer.status < 500, (answer.status, answer.body[:300])
        return
    assert answer.status in allowed, (answer.status, answer.body[:300])
    if answer.status >= 400:
        payload = answer.json()
        assert set(payload) == {"error"} and isinstance(payload["error"], str), payload


# -- text as a caller may send it ------------------------------------------------------------------

#: Any text but CR and LF.
text = st.text(st.characters(exclude_characters="\r\n"), max_size=40)
latin1 = st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=40)
#: What parsers of numbers and times stumble on: other digits, signs, huge and tiny values.
tricky = st.sampled_from(
    ["", " ", "0", "-1", "+1", "1e3", "0x10", "1_000", "²", "¹", "³", "\u0661", "\uff11",
     "1²", "9" * 30, "999999999d", "99999999999999999999w", "0001-01-01T00:00:00+14:00",
     "9999-12-31T23:59:59-14:00", "1h\x00", "\x00", "\u202e1h", "%00", "%ZZ", "1h\t",
     "\x1b[31m"]
)  # fmt: skip
number_like = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.tuples(st.integers(0, 10**25), st.sampled_from(["", "s", "m", "h", "d", "w", "y"])).map(
        lambda pair: f"{pair[0]}{pair[1]}"
    ),
)
#: Offsets up to a minute short of a day, either way: ±14:00 reaches past year 1 and 9999.
offset = st.timedeltas(
    min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
)
moment = st.datetimes(timezones=st.none() | offset.map(timezone)).map(lambda d: d.isoformat())
value_text = st.one_of(text, latin1, tricky, number_like, moment)


def header_bytes(value: str) -> bytes:
    """`value` as a client may put it on the wire: latin-1 when it can be, else UTF-8 (a lone
    surrogate as the bytes `surrogatepass` spells it: invalid UTF-8, which a client can send)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


header_value = st.one_of(
    value_text.map(header_bytes),
    text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
)


# -- headers --------------------------------------------------------------------------------------


AUTH_TARGETS = [b"/v1/models/digits", b"/v1/models", PREDICT.encode(), INFER.encode()]


def test_any_authorization_is_a_401(served: Served, report: Report) -> None:
    seen: Counter[int] = Counter()

    @bounded()
    @given(value=header_value, target=st.sampled_from(AUTH_TARGETS))
    @example(value=b"Bearer \xb2", target=b"/v1/models")
    @example(value=b"Bearer", target=PREDICT.encode())
    @example(value=b"bearer  a.b.c", target=INFER.encode())
    def run(value: bytes, target: bytes) -> None:
        body = PREDICT_BODY if target == PREDICT.encode() else INFER_BODY
        post = target in (PREDICT.encode(), INFER.encode())
        answer = send(served.url, "POST" if post else "GET", target,
                      [("Authorization", value)], body if post else b"")  # fmt: skip
        seen[answer.status] += 1
        check(answer, {401})
        if answer.from_app:
            assert answer.headers["www-authenticate"].startswith("Bearer realm=")

    run()
    report.note("fuzz-inputs", f"Authorization: statuses {dict(sorted(seen.items()))}")
    assert seen[401]


def test_any_request_id_comes_back_plain(
    served: Served, pg_instance: Instance, report: Report
) -> None:
    seen: Counter[str] = Counter()

    @bounded()
    @given(value=header_value)
    @example(value=b"a" * 64)
    @example(value=b"a" * 65)
    @example(value=b"id\x1b[31m")
    @example(value="\u202eid".encode())
    def run(value: bytes) -> None:
        answer = send(served.url, "GET", b"/v1/models/digits",
                      [bearer(pg_instance, "alice"), ("X-Request-Id", value)])  # fmt: skip
        check(answer, {200})
        if not answer.from_app:
            seen["refused by gunicorn"] += 1
            return
        echoed = answer.headers["x-request-id"]
        sent = value.decode("latin-1").strip(" \t")
        if _PLAIN_ID.fullmatch(sent):
            assert echoed == sent
            seen["kept"] += 1
        else:
            assert _FRESH_ID.fullmatch(echoed), echoed
            seen["replaced"] += 1

    run()
    report.note("fuzz-inputs", f"X-Request-Id: {dict(seen)}")
    assert seen["kept"] and seen["replaced"]


def test_any_content_type(served: Served, pg_instance: Instance, report: Report) -> None:
    seen: Counter[int] = Counter()

    @bounded()
    @given(value=header_value, target=st.sampled_from([PREDICT, INFER]))
    @example(value=b"application/json; charset=\xb2", target=PREDICT)
    @example(value=b"application/\xff+json", target=PREDICT)
    @example(value=b";;;==", target=INFER)
    @example(value=b"text/csv", target=PREDICT)
    def run(value: bytes, target: str) -> None:
        body = PREDICT_BODY if target == PREDICT else INFER_BODY
        answer = send(served.url, "POST", target.encode(),
                      [bearer(pg_instance, "alice"), ("Content-Type", value)], body)  # fmt: skip
        seen[answer.status] += 1
        check(answer, {200, 415})

    run()
    report.note("fuzz-inputs", f"Content-Type: statuses {dict(sorted(seen.items()))}")
    assert seen[200] and seen[415]


def test_any_inference_header_content_length(
    served: Served, pg_instance: Instance, report: Report
) -> None:
    seen: Counter[int] = Counter()

    @bounded()
    @given(value=header_value | st.integers(-10, len(INFER_BODY) + 10).map(lambda n: b"%d" % n))
    @example(value="²".encode("latin-1"))
    @example(value="1²".encode("latin-1"))
    @example(value=b"9" * 5000)
    @example(value=b"%d" % len(INFER_BODY))
    def run(value: bytes) -> None:
        headers = [bearer(pg_instance, "alice"), (HEADER_LENGTH, value)]
        answer = send(served.url, "POST", INFER.encode(), headers, INFER_BODY)
        seen[answer.status] += 1
        check(answer, {200, 400})

    run()
    report.note("fuzz-inputs", f"{HEADER_LENGTH}: statuses {dict(sorted(seen.items()))}")
    assert seen[200] and seen[400]


def test_any_content_length(served: Served, pg_instance: Instance, report: Report) -> None:
    """gunicorn reads Content-Length before the app: what it cannot read it answers 400 itself;
    a length past the limit is the app's 413, one past the body meets the body's end."""
    seen: Counter[int] = Counter()
    size = len(PREDICT_BODY)

    @bounded()
    @given(value=header_value | st.integers(0, 2 * size).map(lambda n: b"%d" % n))
    @example(value="²".encode("latin-1"))
    @example(value=b"9" * 40)
    @example(value=b"%d" % size)
    @example(value=b"%d" % (size + 5))
    def run(value: bytes) -> None:
        answer = send(served.url, "POST", PREDICT.encode(), [bearer(pg_instance, "alice")],
                      PREDICT_BODY, content_length=value)  # fmt: skip
        seen[answer.status] += 1
        check(answer, {200, 400, 413})

    run()
    report.note("fuzz-inputs", f"Content-Length: statuses {dict(sorted(seen.items()))}")
    assert seen[200] and seen[400] and seen[413]


# -- the audit query ---------------------------------------------------------------------------

parameter_name = st.one_of(st.sampled_from(PARAMETERS), text)
audit_query = st.lists(st.tuples(parameter_name, value_text), max_size=4).map(
    lambda pairs: "&".join(
        f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in pairs
    )
)
raw_query = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
    lambda q: quote(q, safe="&=%+:-")
)


def test_any_audit_query(served: Served, pg_instance: Instance, report: Report) -> None:
    seen: Counter[tuple[str, int]] = Counter()
    expected = {"bob": {200, 400}, "alice": {403}, "eve": {403}, "": {401}}

    @bounded(3 * EXAMPLES)
    @given(
        query=audit_query | raw_query,
        who=st.sampled_from(list(expected)),  # the auditor first: drawn the most often
        path=st.sampled_from(["/admin/audit", "/admin/audit/verify"]),
    )
    @example(query="limit=1&since=7d&decision=deny", who="bob", path="/admin/audit")
    @example(query="since=999999999d", who="bob", path="/admin/audit")
    @example(query="since=0001-01-01T00%3A00%3A00%2B14%3A00", who="bob", path="/admin/audit")
    @example(query="until=9999-12-31T23%3A59%3A59-14%3A00", who="bob", path="/admin/audit")
    @example(query="actor=%00&model=%1B%5B31m", who="bob", path="/admin/audit")
    @example(query="since=%D9%A1h", who="bob", path="/admin/audit")
    @example(query="since=999999999d", who="alice", path="/admin/audit")
    @example(query="limit=0", who="eve", path="/admin/audit/verify")
    def run(query: str, who: str, path: str) -> None:
        headers = [bearer(pg_instance, who)] if who else []
        target = f"{path}?{query}" if query else path
        answer = send(served.url, "GET", target.encode(), headers)
        seen[(who or "anonymous", answer.status)] += 1
        check(answer, expected[who])

    run()
    report.note("fuzz-inputs", f"/admin/audit queries: {dict(sorted(seen.items()))}")
    assert seen[("bob", 200)] and seen[("bob", 400)] and seen[("alice", 403)]


# -- path segments ---------------------------------------------------------------------------------

TEMPLATES = [
    ("GET", "/v1/models/{name}"),
    ("GET", "/v1/models/{name}/versions/{version}"),
    ("GET", "/v1/models/{name}/labels/{label}/metadata"),
    ("POST", "/v1/models/{name}/labels/{label}:predict"),
    ("POST", "/v1/models/{name}/versions/{version}:predict"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("POST", "/v2/models/{name}/infer"),
]
KNOWN = {
    "name": ["digits", "multi", "secret", "nosuch"],
    "version": ["1", "2", "9", "0"],
    "label": ["stable", "canary", "gold"],
}
#: Whatever a model request may be answered but a 5xx: served, refused, not found, malformed,
#: redirected (merged slashes), a body that does not fit the model, a method the path lacks.
PATH_STATUSES = {200, 308, 400, 403, 404, 405, 415}


@st.composite
def model_path(draw: st.DrawFn) -> tuple[str, bytes]:
    method, template = draw(st.sampled_from(TEMPLATES))
    path = template
    for name in ("name", "version", "label"):
        if "{" + name + "}" not in template:
            continue
        segment = draw(st.sampled_from(KNOWN[name]) | value_text | text)
        safe = draw(st.sampled_from(["", "/", "/:@!$&'()*+,;="]))
        # A lone surrogate cannot be UTF-8: sent as the bytes `surrogatepass` spells it with
        # (invalid UTF-8 on the wire, which a client can send too).
        raw = segment.encode("utf-8", "surrogatepass")
        path = path.replace("{" + name + "}", quote(raw, safe=safe))
    return method, path.encode("ascii")


def test_any_path_segment(served: Served, pg_instance: Instance, report: Report) -> None:
    seen: Counter[int] = Counter()

    @bounded(3 * EXAMPLES)
    @given(sent=model_path())
    @example(sent=("GET", b"/v1/models/digits/labels/stable/metadata"))
    @example(sent=("GET", b"/v1/models/digits/versions/%C2%B2"))
    @example(sent=("GET", b"/v1/models/digits/versions/99999999999999999999"))
    @example(sent=("GET", b"/v1/models/%00/labels/%1B%5B31m/metadata"))
    @example(sent=("POST", b"/v2/models/digits/versions/%D9%A1/infer"))
    def run(sent: tuple[str, bytes]) -> None:
        method, target = sent
        body = INFER_BODY if b"/v2/" in target else PREDICT_BODY
        answer = send(served.url, method, target, [bearer(pg_instance, "alice")],
                      body if method == "POST" else b"")  # fmt: skip
        seen[answer.status] += 1
        check(answer, PATH_STATUSES)

    run()
    report.note("fuzz-inputs", f"path segments: statuses {dict(sorted(seen.items()))}")
    assert seen[200] and seen[404]


def test_the_audit_chain_is_intact_after_the_fuzz(
    served: Served, pg_instance: Instance, report: Report
) -> None:
    report.figure("fuzz_inputs_audit_events", audit_intact(pg_instance))
