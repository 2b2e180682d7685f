"""How many model processes an instance runs, on which accelerator each, and which one a model
lives in; decided in the gunicorn master, which never imports TensorFlow.

One model process per visible GPU (one on the CPU when there is none), each started with
`CUDA_VISIBLE_DEVICES` naming its GPU alone, so its TensorFlow sees one device as `/GPU:0` and
`registry.codec` places every model there. A model lives in exactly one of them, chosen from
its name (`route`), so each model is held once per instance whatever the number of devices,
and every request for it meets in one batcher; different models spread over the devices.
(Triton by default puts a copy of a model on every GPU; a model held once is what lets a model
near one device's memory be served at all, and the choice is made per name, not per request.)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: Where the NVIDIA driver lists one folder per GPU.
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
VISIBLE = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Placement:
    """One model process: its index (the route's answer) and the `CUDA_VISIBLE_DEVICES` it
    starts with (None: the environment is left as it is, no GPU to choose)."""

    index: int
    accelerator: str | None

    def describe(self) -> str:
        return "the CPU" if self.accelerator is None else f"GPU {self.accelerator}"


def visible_accelerators(
    environ: Mapping[str, str] | None = None, gpus: Path = NVIDIA_GPUS
) -> list[str]:
    """The GPUs this instance may use, as CUDA device ids, without importing TensorFlow.

    `CUDA_VISIBLE_DEVICES`, when set, is obeyed as CUDA reads it: its entries up to the first
    invalid one (`-1`, empty). Otherwise every GPU the driver lists.
    """
    env = os.environ if environ is None else environ
    if VISIBLE in env:
        found: list[str] = []
        for entry in env[VISIBLE].split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            found.append(entry)
        return found
    try:
        count = sum(1 for _ in gpus.iterdir())
    except OSError:
        return []
    return [str(i) for i in range(count)]


def plan(requested: int, accelerators: list[str]) -> list[Placement]:
    """The model processes to start: `requested` of them (0: one per accelerator, at least
    one), spread over `accelerators` in turn."""
    if requested < 0:
        raise ValueError("the number of model processes cannot be negative")
    count = requested or max(1, len(accelerators))
    return [
        Placement(i, accelerators[i % len(accelerators)] if accelerators else None)
        for i in range(count)
    ]


def route(name: str, count: int) -> int:
    """The model process (0..count-1) that holds the model `name`: the same in every worker
    and every start (a digest, not Python's salted `hash`)."""
    if count < 1:
        raise ValueError("there must be at least one model process")
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count
