"""Verification: walk the chain from its anchor and name the first event that does not hold.

The anchor is the start of the log (seq 0, 32 zero bytes) or, after a prune, the last removed
event's (seq, MAC) as recorded by the newest prune event; that event is itself MAC'd, so a forged
anchor fails when the walk reaches it. Beyond each link the walk checks that sequence numbers are
contiguous from the anchor, that checkpoints name the event before them, and that the head row
matches the last event; an `expected` head saved earlier detects a tail truncated since then.
Everything is read in one snapshot, so verifying while writers append is consistent.

Keys: each event names its key; a key verifies no event past its rotation point (recorded in
the keyring manifest, see `audit.keys`), and along the chain the key generation never goes
back, so a leaked old key cannot rewrite what was written after its rotation.
Time: the stored `at` must be the canonical time text (`audit.times`) whatever the encoding:
encoding 2 MACs that text; encoding 1 (events written before it) MACs the instant, and the
text is checked here, so another spelling of the same instant is refused either way.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from secure_maas.actions import AdminAction
from secure_maas.audit.chain import GENESIS_MAC, Head, read_head
from secure_maas.audit.encoding import VERSION_1, VERSION_2, canonical_v1, canonical_v2
from secure_maas.audit.events import EPOCH, MICROSECOND, to_microseconds
from secure_maas.audit.keys import AuditKeys, KeyGeneration
from secure_maas.audit.models import CANONICAL_COLUMNS, events_table
from secure_maas.audit.text import quote
from secure_maas.audit.times import TIME_TEXT_LENGTH, is_canonical
from secure_maas.errors import SecureMaasError

FETCH_ROWS = 5_000


class MalformedHead(SecureMaasError, ValueError):
    """`--expect-head` text is not `SEQ:MACHEX`."""


def parse_head(text: str) -> Head:
    """Read `SEQ:MACHEX` as printed by `audit verify`."""
    seq_text, _, mac_text = text.strip().partition(":")
    try:
        seq, mac = int(seq_text), bytes.fromhex(mac_text)
    except ValueError:
        seq, mac = -1, b""
    if seq < 0 or len(mac) != len(GENESIS_MAC):
        raise MalformedHead(
            f"{text!r} is not SEQ:MACHEX (as printed by `secure-maas audit verify`)"
        )
    return Head(seq, mac)


@dataclass(frozen=True)
class Problem:
    """The first thing wrong: the event it concerns (None for the head row) and why."""

    seq: int | None
    reason: str

    def describe(self) -> str:
        return self.reason if self.seq is None else f"event {self.seq}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    first_seq: int | None
    last_seq: int | None
    anchor: Head
    head: Head | None
    key_ids: tuple[str, ...]
    checkpoints: int
    problem: Problem | None
    notes: tuple[str, ...] = field(default=())
    #: For each key of `key_ids`: its generation and rotation point (what bounded the walk).
    generations: tuple[KeyGeneration | None, ...] = field(default=())

    def describe_keys(self) -> str:
        """`audit-1a2b (generation 1, up to seq 6), audit-3c4d (generation 2)` for reports."""
        parts = []
        for key_id, place in zip(self.key_ids, self.generations, strict=False):
            if place is None:
                parts.append(key_id)
            elif place.last_seq is None:
                parts.append(f"{key_id} (generation {place.generation})")
            else:
                parts.append(
                    f"{key_id} (generation {place.generation}, up to seq {place.last_seq})"
                )
        return ", ".join(parts) or "-"

    @property
    def intact(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "checked": self.checked,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "anchor": self.anchor.text(),
            "head": self.head.text() if self.head else None,
            "key_ids": list(self.key_ids),
            "keys": [
                {
                    "id": key_id,
                    "generation": None if place is None else place.generation,
                    "last_seq": None if place is None else place.last_seq,
                }
                for key_id, place in zip(self.key_ids, self.generations, strict=False)
            ],
            "checkpoints": self.checkpoints,
            "bad_seq": self.problem.seq if self.problem else None,
            "reason": self.problem.reason if self.problem else None,
            "notes": list(self.notes),
        }


#: What a walk reads per event, in this order; the hot loop reads a row by these positions.
CHAIN_COLUMNS = (*CANONICAL_COLUMNS, "encoding", "mac")
_SEQ, _AT, _ACTION, _DETAIL, _KEY_ID, _ENCODING, _MAC = (
    CHAIN_COLUMNS.index(name)
    for name in ("seq", "at", "action", "detail", "key_id", "encoding", "mac")
)
_FIELDS = len(CANONICAL_COLUMNS)  # row[:_FIELDS] is what the encoding takes


def chain_columns() -> list[sa.ColumnElement[Any]]:
    """What a walk reads per event: the canonical fields, encoding and MAC; `at` raw."""
    columns: list[sa.ColumnElement[Any]] = []
    for name in CHAIN_COLUMNS:
        column = events_table.c[name]
        columns.append(sa.type_coerce(column, sa.String) if name == "at" else column)
    return columns


class ChainWalk:
    """State of one walk along the chain; `problem` is set once and ends it."""

    def __init__(self, keys: AuditKeys, anchor: Head, expected: Head | None) -> None:
        self.keys = keys
        self.anchor = anchor
        self.next_seq = anchor.seq + 1
        self.previous = anchor.mac
        self.expected = expected
        self.checked = 0
        self.checkpoints = 0
        self.first_seq: int | None = None
        self.key_cache: dict[str, bytes | None] = {}
        self.problem: Problem | None = None
        #: Generation of the key of the event before `next_seq` (0: none seen, any may follow).
        self.generation = 0

    def fail(self, seq: int | None, reason: str) -> None:
        self.problem = Problem(seq, reason)

    def key(self, key_id: str) -> bytes | None:
        if key_id not in self.key_cache:
            self.key_cache[key_id] = self.keys.get(key_id)
        return self.key_cache[key_id]

    def run(self, rows: Iterable[Sequence[Any]]) -> None:
        """Check `rows` (selected with `chain_columns`, in seq order) until the first problem.

        The hot loop keeps its state in locals: this is where verification spends its time.
        """
        compare, encode_v2 = hmac.compare_digest, canonical_v2
        # One keyed HMAC state per key, copied per event: saves the key setup every time.
        prepared: dict[str, tuple[hmac.HMAC, KeyGeneration]] = {}
        memo: dict[str, str] = {}
        checkpoint = str(AdminAction.AUDIT_CHECKPOINT)
        watch = -1 if self.expected is None else self.expected.seq
        start, next_seq, previous, checked = self.next_seq, self.next_seq, self.previous, 0
        generation = self.generation
        try:
            for row in rows:
                seq, key_id = row[_SEQ], row[_KEY_ID]
                if seq != next_seq:
                    self._out_of_place(seq, next_seq)
                    return
                entry = prepared.get(key_id)
                if entry is None:
                    entry = self._prepare(seq, key_id)
                    if entry is None:
                        return
                    prepared[key_id] = entry
                template, place = entry
                if place.generation < generation or (
                    place.last_seq is not None and seq > place.last_seq
                ):
                    self._key_refused(seq, key_id, place, generation)
                    return
                at, version = row[_AT], row[_ENCODING]
                message: bytes | None
                if version == VERSION_2:  # the MAC covers the text: a writer wrote it canonical
                    try:
                        message = encode_v2(row[:_FIELDS], memo)
                    except (TypeError, ValueError) as exc:
                        self.fail(seq, f"a field holds a value of the wrong type ({exc})")
                        return
                else:
                    message = self._encode(seq, row, memo)
                    if message is None:
                        return
                mac = row[_MAC]
                link = template.copy()
                link.update(message)
                link.update(previous)
                if not compare(link.digest(), mac):
                    reason = (
                        "MAC does not match: the event was modified, forged or moved, or its "
                        "MAC was altered"
                    )
                    if not is_canonical(at):
                        reason += f"; its time {_shown(at)} is not the canonical UTC text"
                    self.fail(seq, reason)
                    return
                if not (_looks_canonical(at) if version == VERSION_2 else is_canonical(at)):
                    self.fail(
                        seq,
                        f"time {_shown(at)} is not the canonical UTC text "
                        "(YYYY-MM-DDTHH:MM:SS.ffffffZ): rewritten outside the writer, which "
                        "hides the event from time filters and moves where prune cuts",
                    )
                    return
                if row[_ACTION] == checkpoint and not self._checkpoint_holds(row, previous):
                    return
                previous, next_seq, checked = mac, seq + 1, checked + 1
                generation = place.generation
                if seq == watch:
                    self.check_expected(bytes(mac))
                    if self.problem:
                        return
        finally:
            if checked and self.first_seq is None:
                self.first_seq = start
            self.next_seq, self.previous = next_seq, bytes(previous)
            self.checked += checked
            self.generation = generation

    def _prepare(self, seq: int, key_id: str) -> tuple[hmac.HMAC, KeyGeneration] | None:
        key = self.key(key_id)
        place = None if key is None else self.keys.generation(key_id)
        if key is None or place is None:
            self.fail(seq, f"MAC key {key_id} is not a usable audit key in this keyring")
            return None
        return hmac.new(key, digestmod="sha256"), place

    def _key_refused(self, seq: int, key_id: str, place: KeyGeneration, before: int) -> None:
        if not place.covers(seq):
            self.fail(
                seq,
                f"MAC key {key_id} was rotated out after seq {place.last_seq} (keyring "
                "manifest): no later event may carry it; forged with a copy of the old key?",
            )
        else:
            self.fail(
                seq,
                f"MAC key {key_id} (generation {place.generation}) is older than the key of "
                f"the event before it (generation {before}): keys never go back along the chain",
            )

    def _encode(self, seq: int, row: Sequence[Any], memo: dict[str, str]) -> bytes | None:
        """The canonical bytes of `row` under its own encoding version, or None (failed)."""
        version = row[_ENCODING]
        try:
            if version == VERSION_2:
                return canonical_v2(row[:_FIELDS], memo)
            if version == VERSION_1:
                values = (seq, stored_microseconds(row[_AT]), *row[_AT + 1 : _FIELDS])
                return canonical_v1(values, memo)
        except (TypeError, ValueError) as exc:
            self.fail(seq, f"a field holds a value of the wrong type ({exc})")
            return None
        self.fail(seq, f"unknown encoding version {version}")
        return None

    def scan(
        self, connection: Connection, *, low: int | None = None, high: int | None = None
    ) -> None:
        """Walk the events with seq in [low, high] (default: all of them), in order."""
        query = sa.select(*chain_columns()).order_by(events_table.c.seq)
        if low is not None:
            query = query.where(events_table.c.seq >= low)
        if high is not None:
            query = query.where(events_table.c.seq <= high)
        # Per statement: Connection.execution_options would stream every later statement too.
        result = connection.execute(query.execution_options(yield_per=FETCH_ROWS))
        try:
            self.run(result)
        finally:
            result.close()

    def _out_of_place(self, seq: int, expected: int) -> None:
        if seq < expected:
            self.fail(
                seq,
                f"lies before the chain's start (anchored at seq {self.anchor.seq}): "
                "an inserted event",
            )
        elif expected == 1:
            self.fail(
                1,
                f"missing: the log starts at seq {seq} and no prune event accounts for "
                f"events 1..{seq - 1}",
            )
        else:
            self.fail(expected, f"missing: the next event present is {seq}")

    def _checkpoint_holds(self, row: Sequence[Any], previous: bytes) -> bool:
        self.checkpoints += 1
        detail = _detail(row[_DETAIL])
        if detail.get("head_seq") != row[_SEQ] - 1 or detail.get("head_mac") != previous.hex():
            self.fail(row[_SEQ], "checkpoint does not name the event before it")
            return False
        return True

    def check_expected(self, mac: bytes) -> None:
        if self.expected is not None and not hmac.compare_digest(mac, self.expected.mac):
            self.fail(
                self.expected.seq,
                "MAC differs from the expected head given: the log was rewritten since",
            )

    def finish(self, head: Head) -> list[str]:
        notes: list[str] = []
        last = self.next_seq - 1
        if head.seq > last:
            self.fail(
                last + 1,
                f"missing: the log ends at seq {last} but its head records seq {head.seq} "
                "(tail truncated)",
            )
        elif head.seq < last:
            self.fail(
                head.seq + 1,
                f"follows the head (seq {head.seq}): the head was rewound or events were "
                "written around the chain's lock",
            )
        elif not hmac.compare_digest(head.mac, self.previous):
            self.fail(None, f"the head row's MAC differs from that of event {last}")
        expected = self.expected
        if self.problem is None and expected is not None:
            if expected.seq > last:
                self.fail(
                    last + 1,
                    f"missing: the log ends at seq {last} but an earlier head was at seq "
                    f"{expected.seq} (tail truncated since)",
                )
            elif expected.seq == self.anchor.seq:
                self.check_expected(self.anchor.mac)
            elif expected.seq < self.anchor.seq:
                notes.append(
                    f"expected head {expected.seq} was pruned (chain anchored at "
                    f"{self.anchor.seq}); not checked"
                )
        return notes


_NAIVE_EPOCH = EPOCH.replace(tzinfo=None)


def stored_microseconds(value: object) -> int:
    """`at` as read raw from the database (text on SQLite, a datetime on PostgreSQL) in
    microseconds since the epoch; skipping SQLAlchemy's type processing makes verify ~30% faster.
    Raises ValueError for anything that is not a timestamp."""
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
    elif isinstance(value, datetime):
        moment = value
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if moment.tzinfo is None:
        return (moment - _NAIVE_EPOCH) // MICROSECOND
    return to_microseconds(moment)


def _looks_canonical(text: str) -> bool:
    """The check of an encoding 2 time once its MAC matched: the MAC covers the text, and only
    `canonical_time` writes it, so another spelling there means a forger holding the key; the
    shape is checked cheaply (the full `is_canonical` costs ~10% of the walk) to refuse it all
    the same. Encoding 1 MACs the instant, so its text gets the full check."""
    return (
        type(text) is str and len(text) == TIME_TEXT_LENGTH and text[26] == "Z" and text[10] == "T"
    )


def _shown(value: object) -> str:
    return quote(value, limit=40) if isinstance(value, str) else repr(value)


def _detail(text: str | None) -> dict[str, Any]:
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def find_anchor(connection: Connection) -> tuple[Head, Problem | None]:
    """The chain's start: genesis, or the anchor recorded by the newest prune event."""
    row = connection.execute(
        sa.select(events_table.c.seq, events_table.c.detail)
        .where(events_table.c.action == str(AdminAction.AUDIT_PRUNE))
        .order_by(events_table.c.seq.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        return Head(0, GENESIS_MAC), None
    detail = _detail(row.detail)
    try:
        anchor = Head(int(detail["anchor_seq"]), bytes.fromhex(str(detail["anchor_mac"])))
    except (KeyError, ValueError, TypeError):
        return Head(0, GENESIS_MAC), Problem(row.seq, "prune event records no valid anchor")
    if anchor.seq >= row.seq or len(anchor.mac) != len(GENESIS_MAC):
        return Head(0, GENESIS_MAC), Problem(row.seq, "prune event records an impossible anchor")
    return anchor, None


def verify(
    connection: Connection,
    keys: AuditKeys,
    *,
    expected: Head | None = None,
    watch: Callable[[ChainWalk], None] | None = None,
) -> VerifyReport:
    """Check the whole log visible to `connection` (run it inside one read transaction).

    `watch` is given the walk before it starts, so another thread can follow its progress
    (the console's banner reads how many events it has checked)."""
    try:
        head: Head | None = read_head(connection)
    except SecureMaasError:
        head = None
    anchor, problem = find_anchor(connection)
    walk = ChainWalk(keys, anchor, expected)
    if watch is not None:
        watch(walk)
    notes: list[str] = []
    if problem is not None:
        walk.problem = problem
    else:
        walk.scan(connection)
        if walk.problem is None:
            notes = finish(walk, head)
    return report(walk, head, notes)


def finish(walk: ChainWalk, head: Head | None) -> list[str]:
    """The checks after the last event: the head row, then the expected head."""
    if head is None:
        walk.fail(None, "the audit head row is missing")
        return []
    return walk.finish(head)


def report(walk: ChainWalk, head: Head | None, notes: Sequence[str] = ()) -> VerifyReport:
    """The outcome of a finished walk."""
    seen = tuple(sorted(k for k, v in walk.key_cache.items() if v is not None))
    places = tuple(walk.keys.generation(key_id) for key_id in seen)
    seen_order = sorted(range(len(seen)), key=lambda i: (_rank(places[i]), seen[i]))
    return VerifyReport(
        checked=walk.checked,
        first_seq=walk.first_seq,
        last_seq=walk.next_seq - 1 if walk.checked else None,
        anchor=walk.anchor,
        head=head,
        key_ids=tuple(seen[i] for i in seen_order),
        checkpoints=walk.checkpoints,
        problem=walk.problem,
        notes=tuple(notes),
        generations=tuple(places[i] for i in seen_order),
    )


def _rank(place: KeyGeneration | None) -> int:
    return 0 if place is None else place.generation
