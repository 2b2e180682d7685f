"""No caller's text reaches a message, the audit log or a terminal with its raw control
characters. A caller's `signature_name`, a model name in the path or a JSON key echoed into a
400/404 message and the audit `reason` is escaped: every message the API returns, every text
field the audit log stores and every line the audit CLI prints holds escapes (`\\n`, `\\x1b`,
`\\u202e`) instead, so `secure-maas audit show` prints no forged line and no terminal escape
sequence; an audit row that holds raw characters (as older releases stored them) is printed
escaped as well.

Over real HTTP through gunicorn (2 workers x 4 threads), on SQLite and PostgreSQL; the CLI runs
as a child process, as an auditor runs it.
"""

from __future__ import annotations

import json
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from secure_maas.audit import AuditEvent, KeyringAuditKeys, append_now
from secure_maas.audit.events import ActorKind, AuditDecision
from secure_maas.keys import Keyring
from tests.functional.cli import run_cli
from tests.functional.serving_support import (
    Instance,
    by_request,
    prepared,
    server,
)

#: What no message, stored field or printed line may hold raw: C0/C1 controls and DEL (Cc),
#: format characters such as the bidi override U+202E (Cf), lone surrogates (Cs), and the
#: Unicode line and paragraph separators (Zl, Zp).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
FORGED = "2026-01-01T00:00:00 #1 user:alice model:predict allow 200"
#: A signature name an attacker sends: a forged log line, a colour and a screen-clearing escape,
#: a carriage return, C1 NEL, the Unicode line separator and a right-to-left override.
HOSTILE = f"x\n{FORGED}\x1b[31m\r\x85\u2028\u202eevil\x1b[2J"


def unsafe(text: str) -> list[str]:
    """The characters of `text` that must never reach a message, a record or a terminal."""
    return [ch for ch in text if unicodedata.category(ch) in UNSAFE_CATEGORIES]


def printed_safely(output: str) -> None:
    """CLI output: lines separated by newlines, and nothing else unsafe; no forged line."""
    for line in output.split("\n"):
        assert unsafe(line) == [], (line, unsafe(line))
        assert not line.startswith(FORGED), line


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    yield from prepared(request, tmp_path_factory, "log-injection")


@pytest.fixture(scope="module")
def url(instance: Instance) -> Iterator[str]:
    with server(instance, "--workers", "2", "--threads", "4") as served:
        yield served.url


def post(url: str, path: str, body: object, headers: dict[str, str]) -> tuple[int, str]:
    """POST `body` as JSON; the status and the decoded `error` message of the answer."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, headers={**headers, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, ""
    except urllib.error.HTTPError as error:
        with error:
            return error.code, str(json.loads(error.read())["error"])


def cli(instance: Instance, *args: str) -> str:
    result = run_cli(*args, env=instance.env())
    assert result.returncode == 0, result.stderr
    printed_safely(result.stderr)
    return result.stdout


def test_a_hostile_signature_name_is_escaped_in_the_answer_the_log_and_the_cli(
    url: str, instance: Instance
) -> None:
    rid = "log-injection-signature"
    body = {"signature_name": HOSTILE, "instances": [[1.0, 2.0, 3.0, 4.0]]}
    status, message = post(
        url, "/v1/models/digits:predict", body, instance.headers("alice", **{"X-Request-Id": rid})
    )
    assert status == 400
    assert unsafe(message) == []
    # Still readable and unambiguous: the name is quoted, each character spelled out.
    assert r'"x\n2026-01-01T00:00:00 #1' in message and r"\x1b[31m\r\x85\u2028\u202eevil" in message

    [event] = by_request(instance.engine, {rid})[rid]
    assert event.http_status == 400 and event.decision == "error"
    assert event.reason is not None and unsafe(event.reason) == []
    assert r"\x1b[31m" in event.reason

    shown = cli(instance, "audit", "show", str(event.seq))
    printed_safely(shown)
    assert r"\x1b[31m" in shown
    printed_safely(cli(instance, "audit", "list", "--limit", "10000"))
    printed_safely(cli(instance, "audit", "tail", "-n", "20"))
    assert "intact" in cli(instance, "audit", "verify")


def test_model_names_in_paths_and_json_keys_are_escaped(url: str, instance: Instance) -> None:
    alice = instance.headers("alice")
    cases = [
        # A model name in the path (percent-decoded by the server) reaches the 404 message.
        ("/v1/models/digits%0A2026-01-01%20forged%1B%5B31m%E2%80%AE:predict", {"instances": [1]}),
        ("/v2/models/digits%0D%0Aforged%C2%85/infer", {"inputs": []}),
        # A JSON key the model does not take reaches the 400 message.
        ("/v1/models/digits:predict", {"instances": [{"x": [1, 2, 3, 4], "z\n\x1b[2J": 1}]}),
        ("/v1/models/multi:predict", {"inputs": {"a": [[1, 2, 3]], "b": [[1, 2]], "c\u202e": 1}}),
    ]
    rids = set()
    for index, (path, body) in enumerate(cases):
        rid = f"log-injection-path-{index}"
        rids.add(rid)
        status, message = post(url, path, body, {**alice, "X-Request-Id": rid})
        assert status in (400, 404), (path, status)
        assert message and unsafe(message) == [], (path, message)
    found = by_request(instance.engine, rids)
    for rid in rids:
        for event in found[rid]:
            for text in (event.reason, event.model, event.reason_code, event.actor):
                assert text is None or unsafe(text) == [], (rid, text)


def test_an_old_record_with_raw_characters_is_printed_escaped(instance: Instance) -> None:
    """A stored row that holds raw characters (as older releases wrote them) is printed escaped
    by the CLI, and the chain still verifies (nothing stored is rewritten)."""
    event = AuditEvent(
        action="model:predict",
        actor="mallory",
        actor_kind=ActorKind.USER,
        decision=AuditDecision.ERROR,
        model="digits",
        reason_code="bad_request",
        reason="plain",
        http_status=400,
        client="127.0.0.1",
        request_id="log-injection-old-row",
    )
    # A row as an older release stored it: the raw text, written past the escaping.
    raw = {
        "actor": f"mallory\n{FORGED}\x1b[2J",
        "reason": f'Serving signature name: "x\n{FORGED}\x1b]0;owned\x07\u202e" not found',
        "reason_code": "bad\x85request",
        "client": "127.0.0.1\u2028forged",
    }
    for name, value in raw.items():
        object.__setattr__(event, name, value)
    keys = KeyringAuditKeys(Keyring.open(instance.settings.keys_dir))
    record = append_now(instance.engine, event, keys)
    assert record.actor == raw["actor"]  # stored raw, as an old release would have

    shown = cli(instance, "audit", "show", str(record.seq))
    printed_safely(shown)
    assert r"mallory\n2026-01-01" in shown and r"\x1b]0;owned\x07\u202e" in shown
    printed_safely(cli(instance, "audit", "list", "--limit", "10000"))
    printed_safely(cli(instance, "audit", "list", "--actor", raw["actor"]))
    printed_safely(cli(instance, "audit", "tail", "-n", "5"))
    printed_safely(cli(instance, "audit", "stats"))
    exported = cli(instance, "audit", "export", "--format", "jsonl")
    printed_safely(exported)
    # The export still carries the exact stored value (a third party recomputes MACs from it).
    assert any(json.loads(line)["actor"] == raw["actor"] for line in exported.splitlines())
    assert "intact" in cli(instance, "audit", "verify")
