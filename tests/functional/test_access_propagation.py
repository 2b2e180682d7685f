"""Invariant 7 across processes: a grant, a revoke, a disabled principal and a revoked token,
made in this process, change what another process (with the production caches and polling)
decides within one second, on SQLite and on PostgreSQL."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.actions import Action
from secure_maas.auth import tokens
from secure_maas.config import Settings
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import Rule, directory, grants

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 1.0
RULE = Rule("allow", "user:alice", (Action.MODEL_PREDICT,), "digits")


class Child:
    """The watching process and the state lines it prints."""

    def __init__(self, token: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.functional.access_child", "watch", token, "digits"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def next_state(self, timeout: float = 30.0) -> tuple[float, bool, bool]:
        while True:
            line = self.lines.get(timeout=timeout)
            if line.startswith("state "):
                _, at, ok, allowed = line.split()
                return float(at), ok == "1", allowed == "1"

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def watched(
    migrated_engine: Engine, settings: Settings, cli_env: dict[str, str]
) -> Iterator[tuple[Child, str]]:
    keyring, _ = Keyring.init(settings.keys_dir)
    with session_scope(session_factory(migrated_engine)) as session:
        directory.add_principal(session, "alice", actor="test")
        issued = tokens.issue(
            session, keyring, settings, subject="alice", ttl=timedelta(minutes=10), actor="test"
        )
    child = Child(issued.token, cli_env)
    try:
        yield child, issued.jti
    finally:
        child.close()


def change(engine: Engine, child: Child, work: Callable[[Session], object]) -> tuple[bool, bool]:
    """Make a change, return the next state the child reports, asserting it came in < 1 s."""
    with session_scope(session_factory(engine)) as session:
        work(session)
    committed = time.time()
    at, ok, allowed = child.next_state()
    latency = at - committed
    assert latency < LIMIT_S, f"seen after {latency:.3f} s"
    return ok, allowed


def test_changes_reach_another_process_within_a_second(
    migrated_engine: Engine, watched: tuple[Child, str]
) -> None:
    child, jti = watched
    assert child.next_state()[1:] == (True, False)  # token fine, no rule yet

    def grant(s: Session) -> object:
        return grants.grant(s, RULE, actor="test")

    assert change(migrated_engine, child, grant) == (True, True)
    assert change(migrated_engine, child, lambda s: grants.revoke_like(s, RULE)) == (True, False)
    assert change(migrated_engine, child, grant) == (True, True)
    disable = lambda s: directory.set_disabled(s, "alice", True)  # noqa: E731
    assert change(migrated_engine, child, disable) == (False, False)
    enable = lambda s: directory.set_disabled(s, "alice", False)  # noqa: E731
    assert change(migrated_engine, child, enable) == (True, True)
    revoke = lambda s: tokens.revoke(s, jti, actor="test")  # noqa: E731
    assert change(migrated_engine, child, revoke) == (False, False)
