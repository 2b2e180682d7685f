"""The change watcher: one read per interval, a reload only when a counter moved, and a failed
reload retried rather than forgotten. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import pytest
from sqlalchemy.engine import Engine

from secure_maas.db.session import session_factory, session_scope
from secure_maas.db.state import bump
from secure_maas.db.watch import Watcher


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reloads_only_when_counters_move_and_at_most_once_per_interval(
    migrated_engine: Engine,
) -> None:
    clock = Clock()
    watcher = Watcher(migrated_engine, ("policy", "tokens"), interval=0.5, clock=clock)
    seen: list[dict[str, int]] = []

    def reload(counters: Mapping[str, int]) -> None:
        seen.append(dict(counters))

    def move(scope: str) -> None:
        with session_scope(session_factory(migrated_engine)) as session:
            bump(session, scope)

    assert watcher.refresh(reload) and seen == [{"policy": 0, "tokens": 0}]
    move("tokens")
    assert not watcher.refresh(reload)  # within the interval: not even looked at
    clock.now = 0.5
    assert watcher.refresh(reload) and seen[-1] == {"policy": 0, "tokens": 1}
    clock.now = 1.0
    assert not watcher.refresh(reload)  # looked, nothing moved
    move("models")  # a scope it does not watch
    clock.now = 1.5
    assert not watcher.refresh(reload)
    move("policy")
    assert watcher.refresh(reload, force=True) and seen[-1] == {"policy": 1, "tokens": 1}
    assert watcher.versions == {"policy": 1, "tokens": 1}


def test_a_failed_reload_is_retried(migrated_engine: Engine) -> None:
    watcher = Watcher(migrated_engine, ("policy",), interval=60)

    def broken(_counters: Mapping[str, int]) -> None:
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        watcher.refresh(broken)
    loaded: list[int] = []
    assert watcher.refresh(lambda counters: loaded.append(counters["policy"]))
    assert loaded == [0]


def test_stale_data_waits_for_the_poll_another_thread_is_doing(migrated_engine: Engine) -> None:
    """A caller that finds another thread polling goes on with the current data only while it
    is less than two intervals old; older (a worker that sat idle), it waits for that poll, so
    it never acts on what changed before the idle spell."""
    clock = Clock()
    watcher = Watcher(migrated_engine, ("policy",), interval=0.5, clock=clock)
    watcher.refresh(lambda _counters: None)  # loaded at t=0: next poll due at 0.5
    entered, release = threading.Event(), threading.Event()

    def slow(_counters: Mapping[str, int]) -> None:
        entered.set()
        release.wait(30)

    def poll_in_thread() -> threading.Thread:
        with session_scope(session_factory(migrated_engine)) as session:
            bump(session, "policy")
        thread = threading.Thread(target=watcher.refresh, args=(slow,))
        thread.start()
        assert entered.wait(30)
        return thread

    clock.now = 0.6  # due, but younger than two intervals: go on with what is there
    first = poll_in_thread()
    assert watcher.refresh(lambda _counters: None) is False
    release.set()
    first.join(30)

    entered.clear()
    release.clear()
    clock.now = 5.0  # idle for seconds: wait for the poll in progress
    second = poll_in_thread()
    waited = threading.Thread(target=watcher.refresh, args=(lambda _counters: None,))
    waited.start()
    waited.join(0.5)
    assert waited.is_alive(), "a caller with stale data went on without the poll in progress"
    release.set()
    second.join(30)
    waited.join(30)
    assert not waited.is_alive()
