"""A second process for the access tests: `python -m tests.functional.access_child MODE ...`.

Settings come from the SECURE_MAAS_* environment, as a serving worker's would.

- `watch TOKEN MODEL`: verifies TOKEN and decides model:predict on MODEL every few
  milliseconds with the production caches (0.25 s polling), and prints
  `state <unix time> <token ok> <allowed>` each time the outcome changes (first `ready`).
- `quota SUBJECT MODEL QUOTA N NOW`: prints `ready`, waits for a line on stdin, then tries to
  consume N requests against a per-day quota of QUOTA at the fixed time NOW, and prints how
  many were allowed.
- `leases SUBJECT MODEL QUOTA N NOW`: the same through one `QuotaLeases` (given back at the
  end); prints how many were allowed and how many lease transactions it took.

`race(mode, ...)` starts such children together (each waits for a line before it begins) and
returns what each printed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from secure_maas.actions import Action
from secure_maas.auth.verify import InvalidToken, Verifier
from secure_maas.config import load_settings
from secure_maas.db import create_engine
from secure_maas.policy import ModelFacts, PolicyCache, Quota, RequestFacts, Window, consume
from secure_maas.policy.leases import QuotaLeases
from secure_maas.timeutil import parse_isoformat, utcnow


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def watch(token: str, model: str) -> None:
    settings = load_settings()
    engine = create_engine(settings.database_url)
    verifier = Verifier(engine, settings)
    policy = PolicyCache(engine)
    facts = ModelFacts(model, 1, (), 1.0)
    last: tuple[bool, bool] | None = None
    say("ready")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = utcnow()
        try:
            principal = verifier.verify(token, now=now)
        except InvalidToken:
            state = (False, False)
        else:
            decision = policy.decide(principal, Action.MODEL_PREDICT, facts, RequestFacts(1, now))
            state = (True, decision.allowed)
        if state != last:
            say(f"state {time.time():.6f} {int(state[0])} {int(state[1])}")
            last = state
        time.sleep(0.005)


def quota(subject: str, model: str, limit: int, count: int, now_text: str) -> None:
    engine = create_engine(load_settings().database_url)
    quotas = (Quota(Window.DAY, requests=limit),)
    now = parse_isoformat(now_text)
    say("ready")
    sys.stdin.readline()
    allowed = sum(consume(engine, subject, model, quotas, 1, now).allowed for _ in range(count))
    say(str(allowed))
    engine.dispose()


def race(
    mode: str, subject: str, limit: int, count: int, now_text: str, processes: int,
    env: dict[str, str],
) -> list[str]:  # fmt: skip
    """Start `processes` children of `mode`, let them go at once, return each one's output."""
    command = [sys.executable, "-m", "tests.functional.access_child", mode, subject, "digits",
               str(limit), str(count), now_text]  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    children = [
        subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    for child in children:
        if child.stdout is None or child.stdout.readline().strip() != "ready":
            raise AssertionError("a child did not get ready")
    for child in children:
        if child.stdin is not None:
            child.stdin.write("go\n")
            child.stdin.flush()
    return [child.communicate(timeout=120)[0].strip() for child in children]


def leases(subject: str, model: str, limit: int, count: int, now_text: str) -> None:
    """As `quota`, through one process's `QuotaLeases` (given back when it closes)."""
    engine = create_engine(load_settings().database_url)
    quotas = (Quota(Window.DAY, requests=limit),)
    now = parse_isoformat(now_text)
    book = QuotaLeases(engine, ttl=0.2)
    say("ready")
    sys.stdin.readline()
    allowed = sum(book.consume(subject, model, quotas, 1, now).allowed for _ in range(count))
    book.close()
    say(f"{allowed} {book.transactions}")
    engine.dispose()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "watch":
        watch(args[0], args[1])
    elif mode == "quota":
        quota(args[0], args[1], int(args[2]), int(args[3]), args[4])
    elif mode == "leases":
        leases(args[0], args[1], int(args[2]), int(args[3]), args[4])
    else:
        raise SystemExit(f"unknown mode {mode}")
