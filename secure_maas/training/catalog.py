"""Registered datasets: a name, where the data is read from, what it was, and its budget.

Registration reads the data once to record its fingerprint, size, feature shape and classes,
and stores none of it. Every later use reads the source again and refuses data whose
fingerprint differs (`load_registered`): the budget was granted to that data, and spending it
on other data would make the ledger say nothing.

δ is per dataset, the δ of every run on it and of their composition: it must be below 1/n (a
mechanism with δ ≥ 1/n may publish one whole example outright), and defaults to
`default_delta(n)`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.audit import AuditKeys
from secure_maas.db.session import write_scope
from secure_maas.errors import SecureMaasError
from secure_maas.registry.store import NAME_PATTERN
from secure_maas.timeutil import utcnow
from secure_maas.training import events
from secure_maas.training.datasets import Dataset, DatasetError, load_dataset
from secure_maas.training.models import RegisteredDataset


class DatasetExists(SecureMaasError):
    """A dataset of that name is already registered (names are never reused)."""


class UnknownDataset(SecureMaasError):
    """No dataset of that name is registered."""


class DataChanged(SecureMaasError):
    """The data a source yields today is not the data that was registered."""


class InvalidBudget(SecureMaasError):
    """A privacy budget (ε, δ) that cannot be granted."""


def default_delta(n: int) -> float:
    """1e-5, or 0.1/n for datasets over 10^4 examples: always below 1/n."""
    return min(1e-5, 0.1 / n)


def check_dataset_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise DatasetError(
            f"invalid dataset name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_budget(epsilon_budget: float, delta: float | None, n: int) -> float:
    """Validate the budget for `n` examples and return δ (the default when None)."""
    if not math.isfinite(epsilon_budget) or not epsilon_budget > 0:
        raise InvalidBudget(f"the ε budget must be a positive number, got {epsilon_budget}")
    if delta is None:
        return default_delta(n)
    if not math.isfinite(delta) or not 0 < delta < 1 / n:
        raise InvalidBudget(
            f"δ must be in (0, 1/n) = (0, {1 / n:.3g}) for {n} examples, got {delta:g}: with "
            "δ ≥ 1/n a mechanism may publish an example outright"
        )
    return delta


def canonical_source(source: str) -> str:
    """The source with an absolute path, so that training reads it from any directory."""
    kind, sep, rest = source.partition(":")
    if sep and kind in ("csv", "npz") and rest:
        return f"{kind}:{Path(rest).expanduser().resolve()}"
    return source


@dataclass(frozen=True)
class Registered:
    row: RegisteredDataset
    data: Dataset


def register_dataset(
    engine: Engine,
    keys: AuditKeys,
    *,
    name: str,
    source: str,
    epsilon_budget: float,
    actor: str,
    label_column: str | None = None,
    delta: float | None = None,
    now: datetime | None = None,
) -> Registered:
    """Read `source`, check the budget, and record the dataset with its audit event."""
    check_dataset_name(name)
    source = canonical_source(source)
    data = load_dataset(source, label_column=label_column)
    delta = check_budget(epsilon_budget, delta, data.n)
    moment = now or utcnow()
    try:
        with write_scope(engine) as session:
            if _find(session, name) is not None:
                raise DatasetExists(f"a dataset named {name!r} is already registered")
            row = RegisteredDataset(
                name=name,
                source=source,
                label_column=label_column,
                fingerprint=data.fingerprint,
                n=data.n,
                feature_shape=list(data.feature_shape),
                classes=list(data.classes),
                epsilon_budget=float(epsilon_budget),
                delta=float(delta),
                created_by=actor,
                created_at=moment,
            )
            session.add(row)
            session.flush()
            events.record(
                session,
                keys,
                events.event(
                    AdminAction.DATASET_REGISTER,
                    actor,
                    reason_code="registered",
                    reason=(
                        f"dataset {name!r} from {source}: {data.n} examples, "
                        f"budget ε={epsilon_budget:g}, δ={delta:g}"
                    ),
                    detail={
                        "dataset": name,
                        "fingerprint": data.fingerprint,
                        "n": data.n,
                        "epsilon_budget": events.number(epsilon_budget),
                        "delta": events.number(delta),
                    },
                ),
                now=moment,
            )
    except IntegrityError as exc:  # a concurrent registration of the same name won
        raise DatasetExists(f"a dataset named {name!r} is already registered") from exc
    return Registered(row, data)


def get_dataset(session: Session, name: str, *, lock: bool = False) -> RegisteredDataset:
    """The registered dataset `name`; with `lock`, its row is locked until the transaction ends
    (PostgreSQL; SQLite's write transaction already excludes every other writer)."""
    row = _find(session, name, lock=lock)
    if row is None:
        raise UnknownDataset(f"no dataset named {name!r} is registered (see `dataset list`)")
    return row


def list_datasets(session: Session) -> list[RegisteredDataset]:
    return list(
        session.execute(sa.select(RegisteredDataset).order_by(RegisteredDataset.name)).scalars()
    )


def load_registered(row: RegisteredDataset) -> Dataset:
    """Read the dataset's source again; refuse it unless it is the data that was registered."""
    data = load_dataset(row.source, label_column=row.label_column)
    if data.fingerprint != row.fingerprint:
        raise DataChanged(
            f"dataset {row.name!r} changed since it was registered: {row.source} now has "
            f"fingerprint {data.fingerprint[:12]}… ({data.n} examples), registered "
            f"{row.fingerprint[:12]}… ({row.n} examples); register the new data under a new name"
        )
    return data


def _find(session: Session, name: str, *, lock: bool = False) -> RegisteredDataset | None:
    query = sa.select(RegisteredDataset).where(RegisteredDataset.name == name)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()
