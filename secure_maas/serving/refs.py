"""Model references out of URL parts, and the one 404 message each API gives for them.

The 404 message depends on what the caller asked for and nothing else: a model that does not
exist, a version that does not, a disabled one, one whose name could never exist, and one the
caller may not see all get the same words (invariant 1: no existence leak). The words are TF
Serving's for the TF Serving API and Triton's for the Open Inference Protocol.
"""

from __future__ import annotations

from enum import StrEnum

from secure_maas.registry.catalog import ModelRef, check_label
from secure_maas.registry.store import InvalidName, check_name, check_version

_MAX_SHOWN = 80


class Api(StrEnum):
    """Which API a view belongs to: it picks the wording of not-found messages."""

    TFSERVING = "tfserving"
    OIP = "oip"
    PLATFORM = "platform"
    ADMIN = "admin"


def parse_ref(name: str, version: str | None = None, label: str | None = None) -> ModelRef:
    """The reference the URL names; `InvalidName` if it is not one that could exist."""
    if version is not None and label is not None:
        raise InvalidName("a reference names a version or a label, not both")
    check_name(name)
    if version is not None:
        if not (version.isascii() and version.isdigit()) or len(version) > 10:
            raise InvalidName(f"invalid model version {shown(version)}")
        return ModelRef(name, version=check_version(int(version)))
    if label is not None:
        return ModelRef(name, label=check_label(label))
    return ModelRef(name)


def shown(text: str) -> str:
    """`text` cut short for a message (JSON escapes whatever control characters it holds)."""
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def not_found_message(
    api: Api, name: str, version: str | None = None, label: str | None = None
) -> str:
    """What a caller reads for a model reference it cannot use, whatever the reason."""
    name = shown(name)
    if api is Api.OIP:
        which = f" version {shown(version)}" if version is not None else ""
        return f"Request for unknown model: '{name}'{which} is not found"
    if version is not None:
        return f"Servable not found for request: Specific({name}, {shown(version)})"
    if label is not None:
        return f"Servable not found for request: Label({name}, {shown(label)})"
    return f"Servable not found for request: Latest({name})"


def malformed_message(method: str, path: str) -> str:
    """The error of a path under /v1/models or /v2/models that names no endpoint (TF Serving's
    wording: a 400 there, a 404 under /v2), whatever model it mentions."""
    return f"Malformed request: {method} {shown(path)}"
