"""Which process of a multi-worker training run this is, read from `TF_CONFIG` the standard way.

`secure-maas train --distributed` runs the same command in every process of a cluster that
TensorFlow's `MultiWorkerMirroredStrategy` describes with the `TF_CONFIG` environment variable:

    {"cluster": {"chief": ["host0:port"], "worker": ["host1:port", ...]},
     "task": {"type": "chief", "index": 0}}

Exactly one chief is required: it is the one process that touches the privacy ledger, publishes
the model and writes audit events; the workers only train. Ranks follow the strategy's own
order (the chief is rank 0, worker i is rank i + 1), which is also the order of its replicas,
so replica 0 (the one that adds the DP noise, see `distributed`) lives on the chief.

TensorFlow-free, so a bad `TF_CONFIG` is refused before anything is imported or reserved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from secure_maas.errors import SecureMaasError

CHIEF = "chief"
WORKER = "worker"


class ClusterError(SecureMaasError):
    """`TF_CONFIG` is missing or does not describe a cluster with one chief."""


@dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster."""

    chief: str
    workers: tuple[str, ...]
    task_type: str
    task_index: int

    @property
    def size(self) -> int:
        """Processes in the run (the chief included); one replica each."""
        return 1 + len(self.workers)

    @property
    def rank(self) -> int:
        return 0 if self.task_type == CHIEF else 1 + self.task_index

    @property
    def is_chief(self) -> bool:
        return self.task_type == CHIEF


def from_environment(environ: Mapping[str, str] | None = None) -> Cluster:
    """The cluster `TF_CONFIG` describes (`ClusterError` for a missing or bad one)."""
    env = os.environ if environ is None else environ
    raw = env.get("TF_CONFIG")
    if not raw:
        raise ClusterError(
            "--distributed needs TF_CONFIG: the cluster (one chief, its workers) and this "
            "process's task, see docs/training.md"
        )
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise ClusterError(f"TF_CONFIG is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ClusterError("TF_CONFIG must be a JSON object")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ClusterError("TF_CONFIG needs a 'cluster' object and a 'task' object")
    unknown = set(cluster) - {CHIEF, WORKER}
    if unknown:
        raise ClusterError(
            f"TF_CONFIG's cluster has {sorted(unknown)}: only one 'chief' and 'worker' tasks "
            "take part in MultiWorkerMirroredStrategy training"
        )
    chiefs, workers = cluster.get(CHIEF), cluster.get(WORKER, [])
    if not isinstance(chiefs, list) or not _addresses(chiefs) or len(chiefs) != 1:
        raise ClusterError("TF_CONFIG's cluster needs exactly one chief (host:port)")
    if not isinstance(workers, list) or not _addresses(workers):
        raise ClusterError("TF_CONFIG's workers must be a list of host:port addresses")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in (CHIEF, WORKER):
        raise ClusterError(f"TF_CONFIG's task type must be chief or worker, not {task_type!r}")
    size = 1 if task_type == CHIEF else len(workers)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        raise ClusterError(f"TF_CONFIG's task index {index!r} is not a {task_type} of the cluster")
    return Cluster(chiefs[0], tuple(workers), task_type, index)


def _addresses(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and ":" in item for item in value)
