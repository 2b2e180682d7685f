"""Serialising records for people and programs: JSON lines, CSV, and one-line summaries.

Exports carry every stored field, the key id and the MAC included, so a third party holding the
audit key can recompute the chain from an export alone. Writers take an iterator and a text
stream and never hold more than one record.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import fields
from typing import Any, TextIO

from secure_maas.audit.events import EXPORT_NAMES, AuditRecord

#: The columns of a CSV export: every record field, in its order, as `to_json` names it.
EXPORT_COLUMNS = tuple(EXPORT_NAMES.get(f.name, f.name) for f in fields(AuditRecord))


def flat(record: AuditRecord) -> dict[str, Any]:
    """`record.to_json()` with `detail` as its JSON text, for tables and CSV cells."""
    data = record.to_json()
    data["detail"] = record.detail
    return data


def write_jsonl(records: Iterable[AuditRecord], stream: TextIO) -> int:
    """One JSON object per line; returns how many were written."""
    count = 0
    for record in records:
        stream.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")
        count += 1
    return count


def write_csv(records: Iterable[AuditRecord], stream: TextIO) -> int:
    """CSV with a header row of `EXPORT_COLUMNS`; absent values are empty cells."""
    writer = csv.DictWriter(stream, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for record in records:
        writer.writerow(flat(record))
        count += 1
    return count


def summary_line(record: AuditRecord) -> str:
    """One line per event for `audit tail`: time, seq, who, what, on which model, outcome."""
    data = record.to_json()
    parts = [data["time"], f"#{record.seq}", f"{record.actor_kind}:{record.actor}", record.action]
    if record.model:
        version = f":{record.model_version}" if record.model_version is not None else ""
        parts.append(f"model={record.model}{version}")
    outcome = record.decision
    if record.http_status is not None:
        outcome += f" {record.http_status}"
    parts.append(outcome)
    if record.reason_code:
        parts.append(f"reason={record.reason_code}")
    if record.client:
        parts.append(f"client={record.client}")
    if record.latency_us is not None:
        parts.append(f"{record.latency_us / 1000:.1f}ms")
    return " ".join(parts)
