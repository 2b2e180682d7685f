"""The facts of a version as its publisher signed them, and the registry row checked against them.

A `model_versions` row is a copy, writable by anyone with database access; the sealed header is
signed by a trusted publisher. Every fact a rule or a caller relies on (privacy class, the whole
DP guarantee, dataset, serving signature, name, version, digests, publisher) is therefore taken
from the authenticated header (`SignedFacts`), and the row must agree with it field by field:
a row that differs is refused (`InvalidArtifact`, code `row_mismatch`, the reason naming the
fields) as a tampered artifact is.

Two differences are not refusals, because they only make the row claim less than the header:
an upgrade (migration 0006) withdrew the DP label of models whose preprocessing no guarantee
covered (row `non-private`, header `dp`): the row's weaker class is used. And for headers
written before the guarantee recorded its preprocessing, the preprocessing the upgrade found
(`public-range` or `none`) is taken from the row, since the header says nothing about it.

Authenticating a header needs only the publisher's public key (`crypto.attest`); with the
ciphertext digest the row recorded, not even the body is read, so a serving worker checks every
version's header whenever it refreshes its registry copy (`HeaderCache` keeps what it checked
while the file and the trusted key are unchanged).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from secure_maas.crypto import Attested, Header, InvalidArtifact, PublicKey, authenticate_header
from secure_maas.registry.models import ModelVersion, Privacy
from secure_maas.registry.publish import DP_FIELDS
from secure_maas.registry.store import SealedStore

#: Codes of `InvalidArtifact` raised here.
ROW_MISMATCH = "row_mismatch"
HEADER_FACTS = "header_facts"

_LEGACY_PREPROCESSING = ("public-range", "none")


#: The privacy shown for a version whose signed header could not be authenticated or disagrees
#: with its row: no guarantee is claimed for it.
UNVERIFIED = "unverified"


@dataclass(frozen=True)
class SignedFacts:
    """What the publisher signed about one version (after the two allowed narrowings)."""

    name: str
    version: int
    privacy: str
    dp: Mapping[str, Any] | None
    dataset_name: str | None
    dataset_fingerprint: str | None
    signature: Mapping[str, Any]
    plaintext_sha256: str
    plaintext_bytes: int
    publisher_key_id: str

    @property
    def epsilon(self) -> float | None:
        """The signed ε (None without a DP guarantee): what `max_epsilon` conditions compare."""
        value = (self.dp or {}).get("epsilon")
        return None if value is None else float(value)


def header_facts(header: Header, publisher_key_id: str) -> SignedFacts:
    """The facts in an authenticated header's metadata (a malformed one is refused)."""
    meta = header.metadata
    privacy, dp, dataset, signature = (
        meta.get("privacy"),
        meta.get("dp"),
        meta.get("dataset"),
        meta.get("signature"),
    )
    if privacy not in {p.value for p in Privacy}:
        raise InvalidArtifact(HEADER_FACTS, "signed header has no known privacy class")
    if (privacy == Privacy.DP.value) != isinstance(dp, dict):
        raise InvalidArtifact(HEADER_FACTS, "signed header's DP guarantee does not fit its class")
    if not isinstance(dataset, dict) or not isinstance(signature, dict):
        raise InvalidArtifact(HEADER_FACTS, "signed header lacks its dataset or signature")
    if isinstance(dp, dict) and set(dp) - set(DP_FIELDS):
        raise InvalidArtifact(HEADER_FACTS, "signed header's guarantee has unknown fields")
    return SignedFacts(
        name=header.model,
        version=header.version,
        privacy=privacy,
        dp=dict(dp) if isinstance(dp, dict) else None,
        dataset_name=_text(dataset.get("name")),
        dataset_fingerprint=_text(dataset.get("fingerprint")),
        signature=signature,
        plaintext_sha256=header.plaintext_sha256,
        plaintext_bytes=header.plaintext_length,
        publisher_key_id=publisher_key_id,
    )


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidArtifact(HEADER_FACTS, "signed header's dataset is not text")


def reconcile(row: ModelVersion, signed: SignedFacts) -> SignedFacts:
    """`signed`, checked field by field against `row`; raises `row_mismatch` naming every
    field that differs. Returns the facts to use (the header's, narrowed as described above)."""
    header_dp = signed.dp or {}
    withdrawn = row.privacy == Privacy.NON_PRIVATE.value and signed.privacy == Privacy.DP.value
    legacy = signed.dp is not None and "preprocessing" not in header_dp
    expected: dict[str, Any] = {
        "name": signed.name,
        "version": signed.version,
        "privacy": row.privacy if withdrawn else signed.privacy,
        **{f"dp_{key}": header_dp.get(key) for key in DP_FIELDS},
        "dataset_name": signed.dataset_name,
        "dataset_fingerprint": signed.dataset_fingerprint,
        "signature": dict(signed.signature),
        "plaintext_sha256": signed.plaintext_sha256,
        "plaintext_bytes": signed.plaintext_bytes,
        "publisher_key_id": signed.publisher_key_id,
    }
    if legacy and row.dp_preprocessing in _LEGACY_PREPROCESSING:
        expected["dp_preprocessing"] = row.dp_preprocessing
    actual: dict[str, Any] = {
        "name": row.model.name,
        "version": row.version,
        "privacy": row.privacy,
        **{f"dp_{key}": getattr(row, f"dp_{key}") for key in DP_FIELDS},
        "dataset_name": row.dataset_name,
        "dataset_fingerprint": row.dataset_fingerprint,
        "signature": row.signature,
        "plaintext_sha256": row.plaintext_sha256,
        "plaintext_bytes": row.plaintext_bytes,
        "publisher_key_id": row.publisher_key_id,
    }
    differing = [key for key in expected if not _same(actual[key], expected[key])]
    if differing:
        reason = f"registry row differs from the signed header in: {', '.join(differing)}"
        raise InvalidArtifact(ROW_MISMATCH, reason)
    if withdrawn:
        return _replace(signed, privacy=row.privacy, dp=None)
    if legacy and row.dp_preprocessing is not None:
        return _replace(signed, dp={**header_dp, "preprocessing": row.dp_preprocessing})
    return signed


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        return float(actual) == float(expected)
    return bool(actual == expected) and type(actual) is type(expected)


def _replace(facts: SignedFacts, **changes: Any) -> SignedFacts:
    return SignedFacts(**{**facts.__dict__, **changes})


def check_row(row: ModelVersion, header: Header, publisher_key_id: str) -> SignedFacts:
    """The facts of an authenticated `header`, after `reconcile` with `row`."""
    return reconcile(row, header_facts(header, publisher_key_id))


class HeaderCache:
    """Authenticates each version's header at most once per file and trusted key.

    An entry is reused only while the file has the same identity (device, inode, size,
    modification and change times), the row records the same ciphertext digest, and its
    publisher is still trusted with the same key; the row itself is reconciled on every call.
    (The cache only saves work: a file changed under it is still refused when it is opened.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], tuple[str, Attested]] = {}

    def attest(
        self, store: SealedStore, trusted: Mapping[str, PublicKey], row: ModelVersion
    ) -> Attested:
        """`row`'s header, authenticated with the row's ciphertext digest (`InvalidArtifact`
        if it cannot be); the rest of the row is not compared here (see `reconcile`)."""
        with store.reading(row.artifact_path) as handle:
            stat = os.fstat(handle.fileno())
            key = (
                row.artifact_path,
                row.ciphertext_digest,
                stat.st_dev,
                stat.st_ino,
                stat.st_size,
                stat.st_mtime_ns,
                stat.st_ctime_ns,  # an in-place rewrite cannot set it back, unlike mtime
            )
            with self._lock:
                cached = self._entries.get(key)
            publisher = None if cached is None else trusted.get(cached[1].publisher_key_id)
            if cached is not None and publisher is not None and publisher.fingerprint == cached[0]:
                return cached[1]
            attested = authenticate_header(
                handle,
                trusted_publishers=trusted,
                expect_model=row.model.name,
                expect_version=row.version,
                ciphertext_digest=row.ciphertext_digest,
            )
        fingerprint = trusted[attested.publisher_key_id].fingerprint
        with self._lock:
            if len(self._entries) > 100_000:
                self._entries.clear()
            self._entries[key] = (fingerprint, attested)
        return attested
