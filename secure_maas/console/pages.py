"""What each console page shows, read from the database and the services; no Flask here.

Each builder takes what it reads from (a connection, a session, the model cache) and a
predicate saying what the signed-in principal may see, and returns plain data for a template.
Visibility is decided by the caller's rules, as for the API: models by `model:list`, datasets
and their runs by `privacy:read` (see `privacy`), events by `audit:read`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from secure_maas.audit.events import AuditRecord
from secure_maas.audit.export import EXPORT_COLUMNS, flat
from secure_maas.audit.models import events_table
from secure_maas.audit.query import RECORD_COLUMNS, STREAM_ROWS, AuditFilter, to_record
from secure_maas.dataplane.facts import VersionFacts
from secure_maas.policy import directory, grants
from secure_maas.policy.rules import Rule
from secure_maas.registry.disclosure import public_guarantee
from secure_maas.registry.models import ModelVersion

PAGE_SIZE = 50
MAX_PAGE = 100_000


# -- audit --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditQuery:
    """The audit table's filter: the log's own `AuditFilter` and the HTTP status."""

    filter: AuditFilter = field(default_factory=AuditFilter)
    status: int | None = None
    #: The newest seq of the first page: later pages count from it, so the events written
    #: since (each page view is one) do not shift them.
    top: int | None = None

    def clauses(self) -> list[sa.ColumnElement[bool]]:
        clauses = self.filter.clauses()
        if self.status is not None:
            clauses.append(events_table.c.http_status == self.status)
        if self.top is not None:
            clauses.append(events_table.c.seq <= self.top)
        return clauses


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditRecord]
    page: int
    has_next: bool

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def newest(self) -> int | None:
        return self.events[0].seq if self.events else None


def _select(query: AuditQuery) -> sa.Select[Any]:
    columns = [events_table.c[name] for name in RECORD_COLUMNS]
    return sa.select(*columns).where(*query.clauses())


def audit_page(connection: Connection, query: AuditQuery, page: int) -> AuditPage:
    """One page of matching events, newest first (`page` counts from 1)."""
    statement = (
        _select(query)
        .order_by(events_table.c.seq.desc())
        .offset((page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE + 1)
    )
    records = [to_record(row) for row in connection.execute(statement)]
    return AuditPage(records[:PAGE_SIZE], page, len(records) > PAGE_SIZE)


def audit_csv(connection: Connection, query: AuditQuery) -> Iterator[str]:
    """The matching events as CSV (`audit export`'s columns), oldest first, a chunk of rows
    at a time: memory stays flat whatever the size of the log."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    result = connection.execute(
        _select(query).order_by(events_table.c.seq).execution_options(yield_per=STREAM_ROWS)
    )
    try:
        for count, row in enumerate(result, start=1):
            writer.writerow(flat(to_record(row)))
            if count % 200 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    finally:
        result.close()
    yield buffer.getvalue()


# -- models -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: int
    labels: tuple[str, ...]
    status: str
    privacy: str
    epsilon: float | None
    delta: float | None
    state: str
    created_at: datetime


def model_rows(
    versions: Sequence[VersionFacts],
    may_list: Callable[[VersionFacts], bool],
    state_of: Callable[[VersionFacts], str | None],
) -> list[VersionRow]:
    """Every version the caller may list, with its load state (`state_of` None: gone)."""
    rows = []
    for facts in versions:
        if not may_list(facts):
            continue
        state = state_of(facts)
        if state is None:
            continue
        dp = public_guarantee(facts.privacy, facts.dp) or {}
        rows.append(
            VersionRow(
                name=facts.name,
                version=facts.version,
                labels=tuple(facts.labels),
                status=facts.status,
                privacy=facts.privacy,
                epsilon=dp.get("epsilon"),
                delta=dp.get("delta"),
                state=state,
                created_at=facts.created_at,
            )
        )
    return sorted(rows, key=lambda r: (r.name, r.version))


# -- access -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrincipalView:
    name: str
    roles: tuple[str, ...]
    disabled: bool
    description: str | None


@dataclass(frozen=True)
class AccessView:
    principals: list[PrincipalView]
    roles: list[tuple[str, str | None]]
    rules: list[Rule]


def access_view(session: Session) -> AccessView:
    """Principals, roles and rules, as `principal list` and `policy list` show them."""
    principals = [
        PrincipalView(p.name, tuple(r.name for r in p.roles), p.disabled, p.description)
        for p in directory.list_principals(session)
    ]
    roles = [(r.name, r.description) for r in directory.list_roles(session)]
    return AccessView(principals, roles, grants.load_rules(session))


# -- privacy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    id: int
    model: str
    version: int | None
    status: str
    dp: bool
    epsilon: float | None
    delta: float | None
    started_at: datetime
    finished_at: datetime | None
    counted: bool


@dataclass(frozen=True)
class ProducedModel:
    name: str
    version: int
    epsilon: float | None
    delta: float | None
    mia_auc: float | None
    mia_advantage: float | None
    mia_epsilon_lower_bound: float | None


@dataclass(frozen=True)
class DatasetView:
    name: str
    budget: float
    delta: float
    spent: float
    remaining: float
    budget_of: str | None
    runs: list[RunView]
    models: list[ProducedModel]


def privacy_view(
    session: Session, may_read: Callable[[str, int | None], bool]
) -> list[DatasetView]:
    """Per dataset: its budget and spend, its runs and the models they produced.

    A dataset is shown when the caller may `privacy:read` at least one model trained on it
    (`may_read(model name, version or None)`); of its runs and models, only those. The spend
    is the whole budget's (every run counts against it, whoever may see which).
    """
    from secure_maas.training import ledger  # dp_accounting, only when this page is asked for

    shown = []
    for item in ledger.report(session):
        runs = [run for run in item.runs if may_read(run.model_name, run.model_version)]
        if not runs:
            continue
        published = {(r.model_name, r.model_version) for r in runs if r.model_version is not None}
        spend = item.spend
        shown.append(
            DatasetView(
                name=item.dataset.name,
                budget=spend.budget,
                delta=spend.delta,
                spent=spend.epsilon_rdp,
                remaining=spend.remaining,
                budget_of=spend.dataset if spend.dataset != item.dataset.name else None,
                runs=[
                    RunView(
                        id=run.id,
                        model=run.model_name,
                        version=run.model_version,
                        status=run.status,
                        dp=run.dp,
                        epsilon=run.epsilon,
                        delta=run.delta,
                        started_at=run.started_at,
                        finished_at=run.finished_at,
                        counted=run.spends,
                    )
                    for run in runs
                ],
                models=_produced(session, published),
            )
        )
    return shown


def _produced(session: Session, published: set[tuple[str, int]]) -> list[ProducedModel]:
    from secure_maas.registry.models import Model

    found = []
    for name, version in sorted(published):
        row = session.execute(
            sa.select(ModelVersion)
            .join(Model, ModelVersion.model_id == Model.id)
            .where(Model.name == name, ModelVersion.version == version)
        ).scalar_one_or_none()
        if row is None:
            continue
        found.append(
            ProducedModel(
                name=name,
                version=row.version,
                epsilon=row.dp_epsilon,
                delta=row.dp_delta,
                mia_auc=row.mia_auc,
                mia_advantage=row.mia_advantage,
                mia_epsilon_lower_bound=row.mia_epsilon_lower_bound,
            )
        )
    return found
