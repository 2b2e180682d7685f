"""The change watcher: one read per interval, a reload only when a counter moved, and a failed
reload retried rather than forgotten. On SQLite and PostgreSQL."""

from __future__ import annotations

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
