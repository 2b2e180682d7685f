"""System scenarios: real gunicorn servers, PostgreSQL, faults and load.

`make system` runs them in full (a 60 s soak); the regular suite runs them too, shorter
(`SMAAS_SOAK_SECONDS`, 15 s unless set). Each scenario adds its figures to the run's report,
printed at the end with a final `RESULT name=value ...` line that a script can read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.functional.serving_support import Instance
from tests.system.support import postgres_instance


@dataclass
class Report:
    """What the scenarios tried and measured, in the order they ran."""

    lines: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    def note(self, scenario: str, text: str) -> None:
        self.lines.append(f"{scenario}: {text}")

    def figure(self, name: str, value: float | int | str) -> None:
        self.figures[name] = f"{value:.3g}" if isinstance(value, float) else str(value)


REPORT = Report()


@pytest.fixture(scope="session")
def report() -> Report:
    return REPORT


@pytest.fixture(scope="module")
def pg_instance(pg_admin: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """A serving instance on a fresh PostgreSQL schema, shared by one module's tests."""
    tmp: Path = tmp_path_factory.mktemp("system")
    with postgres_instance(tmp, pg_admin) as instance:  # type: ignore[arg-type]
        yield instance


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT.lines and not REPORT.figures:
        return
    terminalreporter.section("system report")
    for line in REPORT.lines:
        terminalreporter.write_line(line)
    figures = " ".join(f"{k}={v}" for k, v in REPORT.figures.items())
    terminalreporter.write_line(f"RESULT {figures}")
