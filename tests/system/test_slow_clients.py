"""Slow clients cannot pin the server's threads.

gunicorn as in production (2 workers x 4 threads, `secure-maas serve`, PostgreSQL) on
127.0.0.1, attacked with raw sockets as the review did, while a valid prediction and `/healthz`
are requested every 0.4 s on fresh connections:

- 64 connections send a request head one header line per 0.5 s and never finish it
  (slowloris), and 64 send a whole head with `Content-Length: 60000` and then a byte of body
  per 0.5 s, without a token, with a bad one, or with one that may not see the model; each is
  reopened (at most once a second) when the server closes it. Every valid answer is a 200
  within 2 s (the issue's bound: the requirement itself, measured around 0.05 s here), every
  `/healthz` too, and no worker is replaced. Before the fix the 64 half-heads held all 8
  threads: valid requests went unanswered;
- a head that never completes is dropped after gunicorn_app.HEAD_TIMEOUT (10 s; the test
  allows 10-30 s). Before: kept for ever;
- callers *with* a valid token that send their bodies slowly (16, twice the threads) are each
  answered 408 after SECURE_MAAS_BODY_TIMEOUT (2 s here) and their threads freed: a valid
  request then waits for a thread at most about the body timeout times the number of slow
  senders per thread of one worker (the test allows 2 s x 16/4 + 5 s, the worst case of all
  of them landing on one worker). This is the limit that remains without a buffering proxy
  (see the README). Before: those 16 held the threads for as long as they kept sending.

Everything is bounded: the attacks last ATTACK_SECONDS, every socket has a timeout, and every
socket is closed at the end.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field

import pytest

from secure_maas.serving.gunicorn_app import HEAD_TIMEOUT
from tests.functional.serving_support import Instance, Served, server
from tests.system.conftest import Report
from tests.system.support import GUNICORN, ROW, children

BODY_TIMEOUT = 2.0  # seconds: the server's SECURE_MAAS_BODY_TIMEOUT here
ATTACK_SECONDS = 8.0
TICK = 0.5  # seconds between two pieces a slow client sends
REOPEN_AFTER = 1.0  # seconds before a closed slow connection is opened again
BOUND = 2.0  # seconds: the bound for a valid request under attack
PROBE_EVERY = 0.4
SETTLE_LIMIT = 60.0  # seconds an attack may go on, after the probes, for the answers to come
LENGTH = 60_000  # the slow bodies' Content-Length (under the tests' 64 KiB limit)


@dataclass
class Configured(Instance):
    """The system instance, its servers started with extra settings."""

    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}


@pytest.fixture(scope="module")
def served(pg_instance: Instance) -> Iterator[Served]:
    configured = Configured(pg_instance.settings, pg_instance.engine, pg_instance.tokens,
                            {"SECURE_MAAS_BODY_TIMEOUT": f"{BODY_TIMEOUT:g}s"})  # fmt: skip
    with server(configured, *GUNICORN, "--preload", "digits") as running:
        yield running


def slow_head() -> tuple[bytes, bytes]:
    """A request line and one header, then one more header line per tick: never finished."""
    return b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: 1\r\n"


def slow_body(token: str | None) -> tuple[bytes, bytes]:
    """A whole head announcing LENGTH bytes, then one byte of body per tick."""
    lines = ["POST /v1/models/digits:predict HTTP/1.1", "Host: 127.0.0.1",
             "Content-Type: application/json", f"Content-Length: {LENGTH}"]  # fmt: skip
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n{").encode(), b" "


def readable(sock: socket.socket) -> bool:
    """Whether `sock` has data or an end of file to read, without waiting."""
    found, _, _ = select.select([sock], [], [], 0)
    return bool(found)


@dataclass
class Slot:
    """One slow connection: `opening` sent on connect, `piece` once per tick."""

    opening: bytes
    piece: bytes
    sock: socket.socket | None = None
    opened_at: float = -1e9
    opens: int = 0
    statuses: list[int] = field(default_factory=list)  # the server's answers (0: closed)
    open_at_end: bool = False  # still open when the attack ended

    def tick(self, port: int, now: float) -> None:
        if self.sock is not None and self.server_done():
            self.close()
        if self.sock is None:
            if now - self.opened_at < REOPEN_AFTER:
                return
            self.opened_at = now
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                self.sock.sendall(self.opening)
                self.opens += 1
            except OSError:
                self.close()
            return
        try:
            self.sock.sendall(self.piece)
        except OSError:
            self.close()

    def server_done(self) -> bool:
        """Whether the server answered or closed this connection (read without waiting)."""
        if self.sock is None or not readable(self.sock):
            return False
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        words = data.split(b" ", 2)
        self.statuses.append(int(words[1]) if data.startswith(b"HTTP/") and len(words) > 1 else 0)
        return True

    def close(self) -> None:
        if self.sock is not None:
            with suppress(OSError):
                self.sock.close()
            self.sock = None


class Attack:
    """Slow connections driven by one thread from entry to exit, `seconds` at the least and never
    more than `seconds` + SETTLE_LIMIT; every socket closed at the end."""

    def __init__(self, port: int, slots: list[Slot], seconds: float = ATTACK_SECONDS) -> None:
        self.port, self.slots, self.seconds = port, slots, seconds
        self._stop = threading.Event()
        self.lasted = 0.0  # seconds the attack went on, once it has ended
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Attack:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            raise AssertionError("the attack thread did not stop within 60 s")

    def settle(self, done: Callable[[], bool]) -> None:
        """Keep the attack going until `done()` holds (checked once per tick), at most
        SETTLE_LIMIT seconds: how long the server takes to answer every slow connection depends
        on how busy the machine is, so the test waits for the answers rather than a margin."""
        limit = time.monotonic() + SETTLE_LIMIT
        while not done() and time.monotonic() < limit and self._thread.is_alive():
            time.sleep(TICK)

    def _run(self) -> None:
        started = time.monotonic()
        end = started + self.seconds + SETTLE_LIMIT
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                now = time.monotonic()
                for slot in self.slots:
                    slot.tick(self.port, now)
                self._stop.wait(TICK)
        finally:
            for slot in self.slots:
                slot.open_at_end = slot.sock is not None and not slot.server_done()
                slot.close()
            self.lasted = time.monotonic() - started


@dataclass(frozen=True)
class Probe:
    what: str
    status: int  # 0: no answer (connection failed or timed out)
    seconds: float


def probe(port: int, what: str, token: str) -> Probe:
    """One request on a fresh connection, timed; a timeout counts as no answer."""
    if what == "predict":
        method, path = "POST", "/v1/models/digits:predict"
        body: bytes | None = json.dumps({"instances": [ROW]}).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    else:
        method, path, body, headers = "GET", "/healthz", None, {}
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        connection.close()
    return Probe(what, status, time.monotonic() - started)


def probes_during(attack: Attack, port: int, token: str) -> list[Probe]:
    """A prediction and /healthz every PROBE_EVERY seconds while `attack` lasts (bounded: one
    request at a time, each at most 20 s)."""
    time.sleep(1.5)  # the slow connections are open and sending
    found: list[Probe] = []
    end = time.monotonic() + attack.seconds - 2.0
    while time.monotonic() < end:
        found.append(probe(port, "predict", token))
        found.append(probe(port, "healthz", token))
        time.sleep(PROBE_EVERY)
    return found


def test_slow_heads_and_slow_bodies_do_not_starve_valid_requests(
    served: Served, pg_instance: Instance, report: Report
) -> None:
    workers = children(served.process.pid)
    tokens = pg_instance.tokens
    heads = [Slot(*slow_head()) for _ in range(64)]
    bodies = [Slot(*slow_body(None)) for _ in range(32)]
    bodies += [Slot(*slow_body("not.a.token")) for _ in range(16)]
    bodies += [Slot(*slow_body(tokens["eve"])) for _ in range(16)]  # 404 for eve
    with Attack(served.port, heads + bodies) as attack:
        found = probes_during(attack, served.port, tokens["alice"])
        attack.settle(lambda: all(slot.statuses for slot in bodies)
                      and sum(slot.opens for slot in bodies) > 64)  # fmt: skip
    predictions = [p for p in found if p.what == "predict"]
    health = [p for p in found if p.what == "healthz"]
    slowest = max(p.seconds for p in found)
    report.figure("slow_clients_valid_requests", len(predictions))
    report.figure("slow_clients_valid_p50_s", statistics.median(p.seconds for p in predictions))
    report.figure("slow_clients_max_s", slowest)
    refusals = Counter(status for slot in bodies for status in slot.statuses)
    report.figure("slow_clients_body_refusals", sum(refusals[s] for s in (401, 404)))
    assert len(predictions) >= 2, found  # about 10; at least 2 however slow the machine
    assert [p.status for p in predictions] == [200] * len(predictions), found
    assert [p.status for p in health] == [200] * len(health), found
    assert slowest < BOUND, found
    # The attack was real: the half-heads stayed open (held in the event loop, not in threads)
    # and the slow bodies were refused as they came, then came again.
    assert all(set(slot.statuses) <= {0} for slot in heads)  # never answered, at most dropped
    if attack.lasted < HEAD_TIMEOUT - 1.0:  # (a busy machine may have needed longer: see settle)
        assert sum(slot.open_at_end for slot in heads) == 64
    assert refusals[401] >= 48 and refusals[404] >= 16, refusals
    assert sum(slot.opens for slot in bodies) > 64
    assert children(served.process.pid) == workers


def test_a_head_that_never_completes_is_dropped(served: Served) -> None:
    opening, piece = slow_head()
    with socket.create_connection(("127.0.0.1", served.port), timeout=2) as sock:
        started = time.monotonic()
        sock.sendall(opening)
        closed_after = None
        while time.monotonic() - started < HEAD_TIMEOUT + 20:  # bounded
            try:
                sock.sendall(piece)
                data = sock.recv(1) if readable(sock) else None
            except OSError:
                data = b""
            if data is None:
                time.sleep(1.0)
                continue
            if not data:
                closed_after = time.monotonic() - started
                break
            raise AssertionError(f"the server answered a half head: {data!r}")
    assert closed_after is not None, "a half head was kept for more than HEAD_TIMEOUT + 20 s"
    assert closed_after >= HEAD_TIMEOUT - 1.5


def test_slow_senders_with_a_valid_token_get_408_and_free_their_threads(
    served: Served, pg_instance: Instance, report: Report
) -> None:
    threads = int(GUNICORN[GUNICORN.index("--threads") + 1])
    senders = [Slot(*slow_body(pg_instance.tokens["alice"])) for _ in range(16)]
    with Attack(served.port, senders) as attack:
        found = probes_during(attack, served.port, pg_instance.tokens["alice"])
        attack.settle(lambda: all(slot.statuses for slot in senders)
                      and sum(slot.opens for slot in senders) > len(senders))  # fmt: skip
    bound = BODY_TIMEOUT * len(senders) / threads + 5.0
    slowest = max(p.seconds for p in found)
    report.figure("slow_allowed_senders_max_s", slowest)
    answered = Counter(status for slot in senders for status in slot.statuses)
    report.figure("slow_allowed_senders_408", answered[408])
    assert found and [p.status for p in found] == [200] * len(found), found
    assert slowest < bound, found
    assert answered[408] >= len(senders) and set(answered) == {408}, answered  # each was, ...
    assert sum(slot.opens for slot in senders) > len(senders)  # ... and came back
