"""What the model cache reports, and to whom: the report kinds and the hook that receives them.

The cache's parts (the registry view, the loaded models, the label fallback) each report what
they do through one `OnEvent` hook; `dataplane.loads` makes each report a `model:load` audit
event. The hook runs on the request's thread, outside every lock of the cache, and whatever it
raises reaches the caller (the audit sink fails closed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EVENT_LOADED = "model.loaded"
EVENT_REFUSED = "model.refused"
EVENT_EVICTED = "model.evicted"
EVENT_FALLBACK = "model.fallback"

#: `on_event(kind, details)`: one report of the cache (`details` names the model and version).
OnEvent = Callable[[str, dict[str, Any]], None]
#: A version as the cache keys it: (model name, version number).
Key = tuple[str, int]


def details(name: str, version: int, **extra: Any) -> dict[str, Any]:
    """A report's details: the model and version it is about, then what the report adds."""
    return {"model": name, "version": version, **extra}


def emit(on_event: OnEvent | None, kind: str, report: dict[str, Any]) -> None:
    """Send `report` to the hook, if there is one (tests build caches without)."""
    if on_event is not None:
        on_event(kind, report)
