"""The label fallback: what a label or bare name serves when its version is refused.

A label, or a bare name (the newest version), that moves to a version whose artifact is refused
keeps serving the version it last served in this process, with one `model.fallback` event per
reference and refused version (reported again after the registry changes); a version asked for
by number has no fallback. This holds the decision and its memory; loading the version it
names is the caller's (`ModelCache.get`).
"""

from __future__ import annotations

import threading

from secure_maas.registry.catalog import ModelRef


class LabelFallback:
    """What each label and bare name last served here, and which fallbacks were reported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: dict[ModelRef, int] = {}
        self._reported: set[tuple[ModelRef, int]] = set()

    def served(self, ref: ModelRef, version: int) -> None:
        """Remember that `ref` was answered by `version` (a numbered reference has no
        fallback, so nothing is kept for it)."""
        if ref.version is None:
            with self._lock:
                self._served[ref] = version

    def instead_of(self, ref: ModelRef, refused: int) -> int | None:
        """The version to serve for `ref` while version `refused` cannot be: the one it last
        served, if any and not that one; None for a numbered reference."""
        if ref.version is not None:
            return None
        with self._lock:
            previous = self._served.get(ref)
        return None if previous is None or previous == refused else previous

    def first_report(self, ref: ModelRef, refused: int) -> bool:
        """Whether this fallback is to be reported: once per reference and refused version
        until `forget_reports`."""
        report = (ref, refused)
        with self._lock:
            first = report not in self._reported
            self._reported.add(report)
        return first

    def forget_reports(self) -> None:
        """The registry changed: report each fallback again the next time it is taken."""
        with self._lock:
            self._reported.clear()
