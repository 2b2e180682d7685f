"""What each model version has run here: counts and cumulative times, Triton's statistics.

The data plane counts what it runs, for every worker of the instance (the model process holds
the only counters; a worker asks it with the `stats` op), per model version, since the process
started. The figures are Triton's (`docs/protocol/extension_statistics.md`):

- `success` / `fail`: requests the data plane ran for a version, and their cumulative time in
  the data plane (queue and model call), by outcome;
- `queue`: requests that waited in the micro-batcher, and the time they waited;
- `compute_infer`: requests whose model call ran, and the time of the call each was part of
  (a call that served several requests counts for each, as Triton counts it);
- `compute_input` / `compute_output`: not measured apart from the model call (the call takes
  the arrays as they are), so they stay zero;
- `execution_count`: model calls; `inference_count`: rows inferred successfully;
  `batches`: model calls by batch size (rows) and their cumulative time;
- `last_inference`: milliseconds since the epoch of the last request, served or failed.

The counters hold no inputs, outputs or callers: only how much and how long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, int]


@dataclass
class Duration:
    """A count and a cumulative time in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, ns)

    def to_wire(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}

    @classmethod
    def from_wire(cls, data: Any) -> Duration:
        return cls(int(data["count"]), int(data["ns"]))


@dataclass
class VersionStatistics:
    """The figures of one model version (see the module docstring)."""

    name: str
    version: int
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)

    DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

    def copy(self) -> VersionStatistics:
        return VersionStatistics.from_wire(self.to_wire())

    def to_wire(self) -> dict[str, Any]:
        """A JSON-ready copy (the `stats` op's answer carries a list of these)."""
        data: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "batches": [[size, d.count, d.ns] for size, d in sorted(self.batches.items())],
        }
        for name in self.DURATIONS:
            data[name] = getattr(self, name).to_wire()
        return data

    @classmethod
    def from_wire(cls, data: Any) -> VersionStatistics:
        found = cls(
            str(data["name"]),
            int(data["version"]),
            last_inference=int(data["last_inference"]),
            inference_count=int(data["inference_count"]),
            execution_count=int(data["execution_count"]),
            batches={int(s): Duration(int(c), int(n)) for s, c, n in data["batches"]},
        )
        for name in cls.DURATIONS:
            setattr(found, name, Duration.from_wire(data[name]))
        return found


class Statistics:
    """The counters of every version this data plane ran; thread-safe. `wall_ms` (the time
    of `last_inference`) is for tests."""

    def __init__(self, wall_ms: Callable[[], int] | None = None) -> None:
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._versions: dict[Key, VersionStatistics] = {}

    def request(self, key: Key, *, ok: bool, ns: int, rows: int) -> None:
        """One request the data plane ran for `key`: served (`rows` inferred) or failed."""
        with self._lock:
            found = self._of(key)
            found.last_inference = self._wall_ms()
            if ok:
                found.success.add(ns)
                found.inference_count += rows
            else:
                found.fail.add(ns)

    def execution(self, key: Key, *, rows: int, requests: int, ns: int, queue_ns: int) -> None:
        """One model call over `rows` rows serving `requests` requests, which waited
        `queue_ns` in all before it started (0 for a call made without the batcher)."""
        with self._lock:
            found = self._of(key)
            found.execution_count += 1
            found.compute_infer.add(ns * requests, requests)
            found.queue.add(queue_ns, requests)
            found.batches.setdefault(rows, Duration()).add(ns)

    def snapshot(self, keys: Iterable[Key] | None = None) -> list[VersionStatistics]:
        """Copies of the figures of `keys` (every version counted so far without), by name
        and version; a version never run here has none."""
        with self._lock:
            wanted = sorted(self._versions) if keys is None else sorted(set(keys))
            return [self._versions[key].copy() for key in wanted if key in self._versions]

    def _of(self, key: Key) -> VersionStatistics:
        found = self._versions.get(key)
        if found is None:
            found = self._versions[key] = VersionStatistics(*key)
        return found
