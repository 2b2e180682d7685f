"""`explain_access`: the decision a subject would get, with every rule and why it matched or not.

The model is judged as serving judges it: by the version's facts from its signed header (the ε
a `max_epsilon` rule compares), never from its database row; a version whose header cannot
be authenticated is judged with no DP guarantee, and one not in the registry by its name alone.
Each such case, and what about the subject is not known here, comes back as a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.actions import Action
from secure_maas.crypto import InvalidArtifact
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import directory, grants
from secure_maas.policy.evaluate import Caller, ModelFacts, RequestFacts
from secure_maas.policy.index import CompiledPolicy, Explanation
from secure_maas.policy.rules import is_external
from secure_maas.registry import artifacts, catalog
from secure_maas.registry.store import ArtifactStore


@dataclass(frozen=True)
class AccessExplanation:
    """The caller as judged, the decision and each rule's check, and what to know about them."""

    caller: Caller
    explanation: Explanation
    notes: tuple[str, ...]
    at: datetime


def explain_access(
    engine: Engine,
    store: ArtifactStore,
    keyring: Keyring,
    *,
    subject: str,
    action: Action,
    model_ref: str | None,
    rows: int,
    now: datetime,
    finite: bool = True,
) -> AccessExplanation:
    """How the rules decide `action` by `subject` on `model_ref` (None: no model) for `rows`
    (and, with `finite` false, inputs holding NaN or Infinity)."""
    notes: list[str] = []
    with session_scope(session_factory(engine)) as session:
        identity = directory.load_directory(session).resolve(subject)
        model, note = _facts(session, store, keyring, model_ref)
        compiled = CompiledPolicy(grants.load_rules(session))
    if identity is None:
        notes.append(f"no principal {subject!r}: judged as user:{subject} with no roles")
        caller = Caller(subject)
    else:
        caller = Caller(identity.subject, identity.roles, also=identity.names[1:])
        if identity.linked_to is not None:
            notes.append(f"{subject} is linked to {identity.linked_to}: judged as both names")
        if is_external(subject):
            notes.append("roles its identity provider's claim would add are not known here")
        if identity.disabled:
            notes.append(f"{subject} is disabled: every token of it is refused anyway")
    if note:
        notes.append(note)
    explanation = compiled.explain(
        caller, action, model, RequestFacts(rows=rows, now=now, finite=finite)
    )
    return AccessExplanation(caller, explanation, tuple(notes), now)


def _facts(
    session: Session, store: ArtifactStore, keyring: Keyring, ref_text: str | None
) -> tuple[ModelFacts | None, str | None]:
    """The model facts a rule sees: ε from the version's signed header, never from its row."""
    if ref_text is None:
        return None, None
    ref = catalog.ModelRef.parse(ref_text)
    try:
        row = catalog.resolve(session, ref, include_disabled=True)
    except catalog.ModelNotFound:
        note = f"{ref} is not in the registry: judged by name only, with no DP guarantee"
        return ModelFacts(ref.name, ref.version), note
    labels = catalog.labels_of(row.model).get(row.version, [])
    try:
        signed = artifacts.signed_facts(store, keyring, row)
    except InvalidArtifact as exc:
        note = (
            f"{ref.name}:{row.version}: {exc.code}: {exc.reason}; judged with no DP guarantee "
            "(serving refuses this version; run `secure-maas models verify`)"
        )
        return ModelFacts(ref.name, row.version, tuple(labels), None), note
    return ModelFacts(ref.name, row.version, tuple(labels), signed.epsilon), None
