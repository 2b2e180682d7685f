"""Registered datasets: a name, where the data is read from, what it was, and its budget.

Registration reads the data once to record its fingerprint, identity, size, feature shape and
classes, and stores none of it. Every later use reads the source again and refuses data whose
fingerprint differs (`load_registered`): the budget was granted to that data, and spending it
on other data would make the ledger say nothing.

A budget belongs to the data, not to a name. Registering data whose identity (the multiset of
its feature vectors: row order, label names and the file format do not matter) is already
registered is refused, naming the registration it duplicates, unless `budget_of` names that
registration (or one sharing its budget): the new name then shares its budget and ledger.
`budget_of` may also join the budget of different data on purpose (overlapping extracts of the
same people, which no hash can see).

δ is per budget, the δ of every run on it and of their composition: it must be below 1/n (a
mechanism with δ ≥ 1/n may publish one whole example outright), and defaults to
`default_delta(n)`. Runs without a DP guarantee (`--no-dp`, `--noise-seed`, exact
statistics) may use a dataset only when its budget's owner was registered with
`allow_non_private`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from secure_maas.actions import AdminAction
from secure_maas.audit import AuditDecision, AuditEvent, AuditKeys
from secure_maas.db.session import write_scope
from secure_maas.errors import SecureMaasError
from secure_maas.registry.store import NAME_PATTERN
from secure_maas.timeutil import utcnow
from secure_maas.training import events
from secure_maas.training.datasets import (
    Dataset,
    DatasetError,
    load_dataset,
    parse_feature_ranges,
    with_declared_ranges,
)
from secure_maas.training.models import DatasetIdentity, RegisteredDataset


class DatasetExists(SecureMaasError):
    """A dataset of that name is already registered (names are never reused)."""


class UnknownDataset(SecureMaasError):
    """No dataset of that name is registered."""


class DataChanged(SecureMaasError):
    """The data a source yields today is not the data that was registered."""


class InvalidBudget(SecureMaasError):
    """A privacy budget (ε, δ) that cannot be granted."""


class DuplicateData(SecureMaasError):
    """The data is already registered under another name, with a budget of its own."""

    def __init__(self, message: str, *, existing: str) -> None:
        super().__init__(message)
        self.existing = existing


def default_delta(n: int) -> float:
    """1e-5, or the largest power of ten at most 0.1/n for datasets over 10^4 examples.

    Always below 1/n; a power of ten, so that δ tells a model's callers no more about n than
    its order of magnitude (0.1/n itself would give n away).
    """
    if n < 1:
        raise InvalidBudget(f"a dataset needs at least one example, got {n}")
    exponent = math.floor(math.log10(0.1 / n))
    while 10.0**exponent > 0.1 / n:  # floating-point edge of log10
        exponent -= 1
    return min(1e-5, 10.0**exponent)


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
    owner: RegisteredDataset  # the row whose budget it spends (itself unless shared)


def register_dataset(
    engine: Engine,
    keys: AuditKeys,
    *,
    name: str,
    source: str,
    actor: str,
    epsilon_budget: float | None = None,
    label_column: str | None = None,
    delta: float | None = None,
    budget_of: str | None = None,
    allow_non_private: bool = False,
    feature_ranges: list[str] | None = None,
    now: datetime | None = None,
) -> Registered:
    """Read `source`, check the budget (or the budget it shares), and record the dataset with
    its audit event; refuse data already registered with a budget of its own (see the module
    docstring), recording the refusal."""
    check_dataset_name(name)
    source = canonical_source(source)
    data = load_dataset(source, label_column=label_column)
    declared = parse_feature_ranges(feature_ranges) if feature_ranges else None
    if declared is not None:
        data = with_declared_ranges(data, declared)
    if budget_of is None:
        if epsilon_budget is None:
            raise InvalidBudget("give the dataset an ε budget, or share one with budget_of")
        delta = check_budget(epsilon_budget, delta, data.n)
    elif epsilon_budget is not None or delta is not None or allow_non_private:
        raise InvalidBudget(
            f"a dataset sharing {budget_of!r}'s budget takes its ε, δ and allow-non-private; "
            "give none of them"
        )
    moment = now or utcnow()
    refusal: DuplicateData | None = None
    try:
        with write_scope(engine) as session:
            if _find(session, name) is not None:
                raise DatasetExists(f"a dataset named {name!r} is already registered")
            owner = (
                None
                if budget_of is None
                else budget_owner(session, get_dataset(session, budget_of))
            )
            if owner is not None:
                check_budget(float(owner.epsilon_budget or 0.0), owner.delta, data.n)
            seen = session.get(DatasetIdentity, data.identity)
            if seen is not None:
                first = session.execute(
                    sa.select(RegisteredDataset).where(RegisteredDataset.id == seen.dataset_id)
                ).scalar_one()
                if owner is None or budget_owner(session, first).id != owner.id:
                    refusal = _duplicate(name, first.name, owner)
                    events.record(
                        session,
                        keys,
                        _duplicate_event(name, source, data, refusal, actor),
                        now=moment,
                    )
            if refusal is None:
                row = RegisteredDataset(
                    name=name,
                    source=source,
                    label_column=label_column,
                    fingerprint=data.fingerprint,
                    identity=data.identity,
                    n=data.n,
                    feature_shape=list(data.feature_shape),
                    classes=list(data.classes),
                    epsilon_budget=None if owner is not None else float(epsilon_budget or 0.0),
                    delta=None if owner is not None else float(delta or 0.0),
                    budget_owner_id=None if owner is None else owner.id,
                    allow_non_private=bool(allow_non_private),
                    feature_range=declared,
                    split_key=secrets.token_hex(32),
                    created_by=actor,
                    created_at=moment,
                )
                session.add(row)
                session.flush()
                if seen is None:
                    session.add(DatasetIdentity(identity=data.identity, dataset_id=row.id))
                    session.flush()
                events.record(session, keys, _register_event(row, owner, data, actor), now=moment)
                registered = Registered(row, data, owner if owner is not None else row)
    except IntegrityError as exc:  # a concurrent registration of the same name or data won
        raise DatasetExists(
            f"a dataset named {name!r}, or this data under another name, was registered "
            "concurrently; list the datasets and try again"
        ) from exc
    if refusal is not None:
        raise refusal
    return registered


def _duplicate(name: str, existing: str, owner: RegisteredDataset | None) -> DuplicateData:
    if owner is None:
        hint = f"give --budget-of {existing} to register it again sharing that budget"
    else:
        hint = (
            f"--budget-of {owner.name} is another budget; give --budget-of {existing} to share "
            "the budget this data already has"
        )
    return DuplicateData(
        f"refused: this data is already registered as {existing!r} (the same examples, in "
        f"any order and under any label names), and a privacy budget belongs to the data, not "
        f"to a name; {hint}",
        existing=existing,
    )


def _duplicate_event(
    name: str, source: str, data: Dataset, refusal: DuplicateData, actor: str
) -> AuditEvent:
    return events.event(
        AdminAction.DATASET_REGISTER,
        actor,
        decision=AuditDecision.DENY,
        reason_code="duplicate-data",
        reason=f"dataset {name!r} from {source}: {refusal}",
        detail={"dataset": name, "existing": refusal.existing, "identity": data.identity},
    )


def _register_event(
    row: RegisteredDataset, owner: RegisteredDataset | None, data: Dataset, actor: str
) -> AuditEvent:
    if owner is None:
        budget = f"budget ε={row.epsilon_budget:g}, δ={row.delta:g}"
    else:
        budget = f"sharing the budget of {owner.name!r}"
    return events.event(
        AdminAction.DATASET_REGISTER,
        actor,
        reason_code="registered",
        reason=f"dataset {row.name!r} from {row.source}: {data.n} examples, {budget}",
        detail={
            "dataset": row.name,
            "fingerprint": data.fingerprint,
            "identity": data.identity,
            "n": data.n,
            "epsilon_budget": events.number(row.epsilon_budget),
            "delta": events.number(row.delta),
            "budget_of": owner.name if owner is not None else None,
            "allow_non_private": row.allow_non_private,
        },
    )


def budget_owner(
    session: Session, row: RegisteredDataset, *, lock: bool = False
) -> RegisteredDataset:
    """The row whose budget `row` spends: itself, or the dataset it shares a budget with."""
    if row.budget_owner_id is None:
        if lock:
            return get_dataset(session, row.name, lock=True)
        return row
    query = sa.select(RegisteredDataset).where(RegisteredDataset.id == row.budget_owner_id)
    if lock:
        query = query.with_for_update()
    owner = session.execute(query).scalar_one_or_none()
    if owner is None or owner.budget_owner_id is not None:
        raise UnknownDataset(f"dataset {row.name!r} names a budget owner that is not one")
    return owner


def budget_members(session: Session, owner: RegisteredDataset) -> list[RegisteredDataset]:
    """Every dataset that spends `owner`'s budget, the owner first."""
    shared = session.execute(
        sa.select(RegisteredDataset)
        .where(RegisteredDataset.budget_owner_id == owner.id)
        .order_by(RegisteredDataset.id)
    ).scalars()
    return [owner, *shared]


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
    """Read the dataset's source again; refuse it unless it is the data that was registered.

    The result carries the dataset's split key and declared public ranges. Rows registered
    before identities existed are checked against their order-dependent v1 fingerprint.
    """
    data = load_dataset(row.source, label_column=row.label_column)
    found = data.fingerprint if row.identity is not None else data.fingerprint_v1
    if found != row.fingerprint:
        raise DataChanged(
            f"dataset {row.name!r} changed since it was registered: {row.source} now has "
            f"fingerprint {found[:12]}… ({data.n} examples), registered "
            f"{row.fingerprint[:12]}… ({row.n} examples); register the new data under a new name"
        )
    if row.feature_range is not None:
        data = with_declared_ranges(data, row.feature_range)
    return replace(data, split_key=bytes.fromhex(row.split_key))


def _find(session: Session, name: str, *, lock: bool = False) -> RegisteredDataset | None:
    query = sa.select(RegisteredDataset).where(RegisteredDataset.name == name)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()
