"""What the registry says about one version, as the cache hands it to access decisions.

Every fact a decision or a caller relies on (privacy, the DP guarantee, dataset, serving
signature) is the one the publisher signed (`registry.signed`). A version whose header cannot
be authenticated (file missing, unreadable, bad signature) has privacy `unverified` and no
guarantee, so no `max_epsilon` rule lets its metadata be read, and loading it is refused (see
`VersionFacts.epsilon_for` for how a prediction is decided).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from secure_maas.registry.disclosure import public_guarantee
from secure_maas.registry.models import ModelVersion, VersionStatus
from secure_maas.registry.signature import ServingSignature
from secure_maas.registry.signed import UNVERIFIED, SignedFacts

__all__ = ["UNVERIFIED", "VersionFacts", "version_facts"]


@dataclass(frozen=True)
class VersionFacts:
    """What the registry says about one version: enough to decide access without its weights."""

    name: str
    version: int
    status: str
    labels: tuple[str, ...]
    signature: ServingSignature
    privacy: str
    dp: Mapping[str, Any] | None  # epsilon, delta, noise_multiplier, ... for a DP model
    dataset_name: str | None
    plaintext_bytes: int
    created_at: datetime
    created_by: str
    #: False when the signed header could not be authenticated (privacy shows `unverified`).
    verified: bool = True
    #: Then, the ε the row claims: see `epsilon_for`.
    row_epsilon: float | None = None

    @property
    def active(self) -> bool:
        return self.status == VersionStatus.ACTIVE.value

    def epsilon_for(self, *, loads: bool) -> float | None:
        """The ε a rule compares. For a version whose header could not be authenticated, the
        row's claim is used only by a decision that loads the version before anything is
        answered (a prediction): the load verifies the row against the header, so the version
        is refused (503) or a fallback is decided again on its own signed facts. A decision
        answered from these facts alone (metadata, listing) sees no guarantee."""
        if self.verified:
            return self.dp_epsilon
        return self.row_epsilon if loads else None

    @property
    def dp_epsilon(self) -> float | None:
        """The model's ε (None without a DP guarantee): what `max ε` rule conditions compare."""
        value = (self.dp or {}).get("epsilon")
        return None if value is None else float(value)

    def guarantee(self) -> dict[str, Any]:
        """The privacy guarantee and provenance, as the metadata endpoints report it: what the
        guarantee is and covers, never the data's fingerprint or size (`disclosure`)."""
        return {
            "privacy": self.privacy,
            "dp": public_guarantee(self.privacy, self.dp),
            "dataset": {"name": self.dataset_name},
            "labels": list(self.labels),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


def version_facts(
    name: str, row: ModelVersion, labels: list[str], signed: SignedFacts | None
) -> VersionFacts:
    """A version's facts: the signed ones, or none to rely on when the header could not be
    authenticated (privacy `unverified`, no guarantee; the row's signature only parses
    requests for a version whose load will be refused or will check it).

    Raises `InvalidModelData` when the serving signature cannot be read.
    """
    return VersionFacts(
        name=name,
        version=row.version,
        status=row.status,
        labels=tuple(labels),
        signature=ServingSignature.from_dict(
            dict(signed.signature) if signed is not None else row.signature
        ),
        privacy=signed.privacy if signed is not None else UNVERIFIED,
        dp=signed.dp if signed is not None else None,
        dataset_name=signed.dataset_name if signed is not None else None,
        plaintext_bytes=row.plaintext_bytes,
        created_at=row.created_at,
        created_by=row.created_by,
        verified=signed is not None,
        row_epsilon=None if signed is not None or row.dp_epsilon is None else row.dp_epsilon,
    )
