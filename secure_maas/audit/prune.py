"""Pruning: remove the oldest events and leave a chain that still verifies.

One transaction, holding the chain's lock: verify the part about to go (so pruning cannot
launder tampered events), delete the prefix of the log up to the cut, and append an
`audit:prune` event that records what went (range, count, cut date) and the new anchor: the last
removed event's seq and MAC. Verification starts from the newest prune event's anchor; the
prune event is MAC'd like any other, so a forged anchor is detected.

The cut is a prefix by sequence number: events up to (not including) the first one dated at or
after `before`. An old event written after a newer one (clocks of two hosts) stays until the
events before it go.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from secure_maas.actions import AdminAction
from secure_maas.audit.chain import (
    CHECKPOINT_EVERY,
    Head,
    append_events,
    read_head,
    write_transaction,
)
from secure_maas.audit.events import ActorKind, AuditEvent, AuditRecord
from secure_maas.audit.keys import AuditKeys
from secure_maas.audit.models import events_table
from secure_maas.audit.verify import ChainWalk, find_anchor
from secure_maas.errors import SecureMaasError
from secure_maas.timeutil import isoformat, utcnow


class PruneRefused(SecureMaasError):
    """The events to be removed do not verify: pruning them would destroy the evidence."""


@dataclass(frozen=True)
class PrunePlan:
    """What a prune before `before` removes: seq `first`..`last`, `count` events."""

    before: datetime
    anchor: Head
    first: int | None
    last: int | None
    count: int


@dataclass(frozen=True)
class PruneReport:
    plan: PrunePlan
    new_anchor: Head
    record: AuditRecord


def plan_prune(connection: Connection, before: datetime) -> PrunePlan:
    """The prefix of the log dated before `before` (read only; `audit prune --dry-run`)."""
    c = events_table.c
    anchor, problem = find_anchor(connection)
    if problem is not None:
        raise PruneRefused(f"the log does not verify ({problem.describe()}): not pruning")
    keep_from = connection.execute(
        sa.select(sa.func.min(c.seq)).where(c.at >= before, c.seq > anchor.seq)
    ).scalar_one()
    last = connection.execute(
        sa.select(sa.func.max(c.seq)).where(c.seq > anchor.seq)
        if keep_from is None
        else sa.select(sa.func.max(c.seq)).where(c.seq > anchor.seq, c.seq < keep_from)
    ).scalar_one()
    if last is None:
        return PrunePlan(before, anchor, None, None, 0)
    return PrunePlan(before, anchor, anchor.seq + 1, int(last), int(last) - anchor.seq)


def _verify_range(connection: Connection, plan: PrunePlan, keys: AuditKeys) -> Head:
    """Walk the events about to be removed; return the (seq, MAC) of the last one."""
    if plan.last is None:
        return plan.anchor
    walk = ChainWalk(keys, plan.anchor, None)
    walk.scan(connection, high=plan.last)
    if walk.problem is None and walk.next_seq != plan.last + 1:
        walk.fail(walk.next_seq, "missing")
    if walk.problem is not None:
        raise PruneRefused(
            f"the events to prune do not verify ({walk.problem.describe()}): not pruning; "
            "run `secure-maas audit verify`"
        )
    return Head(plan.last, walk.previous)


def prune(
    engine: Engine,
    keys: AuditKeys,
    *,
    before: datetime,
    actor: str,
    now: datetime | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> PruneReport:
    """Remove events dated before `before` in one transaction and record the prune.

    Raises `PruneRefused` when those events do not verify, `AuditUnavailable` when the
    database write fails (then nothing changed).
    """
    moment = now or utcnow()
    outcome: dict[str, PruneReport] = {}

    def work(connection: Connection) -> list[AuditRecord]:
        read_head(connection, lock=True)
        plan = plan_prune(connection, before)
        anchor = _verify_range(connection, plan, keys)
        if plan.last is not None:
            connection.execute(sa.delete(events_table).where(events_table.c.seq <= plan.last))
        event = AuditEvent(
            action=AdminAction.AUDIT_PRUNE,
            actor=actor,
            actor_kind=ActorKind.OS,
            reason_code="prune",
            reason=f"removed {plan.count} events dated before {isoformat(before)}",
            detail={
                "anchor_seq": anchor.seq,
                "anchor_mac": anchor.mac.hex(),
                "pruned_from": plan.first,
                "pruned_to": plan.last,
                "pruned_count": plan.count,
                "before": isoformat(before),
            },
        )
        records = append_events(
            connection, [event], keys, now=moment, checkpoint_every=checkpoint_every
        )
        outcome["report"] = PruneReport(plan, anchor, records[0])
        return records

    write_transaction(engine, work, passthrough=(PruneRefused,))
    return outcome["report"]
