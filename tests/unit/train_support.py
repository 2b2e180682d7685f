"""The training tests' data and their one way to train: plan the run, then train the plan."""

from __future__ import annotations

from secure_maas.training import train
from secure_maas.training.datasets import Dataset
from secure_maas.training.plan import TrainingRequest, make_plan


def fit(data: Dataset, arch: str, *, progress=None, delta=None, **fields) -> train.TrainResult:
    """Plan the run (the one validator, which accounts it) and train the plan."""
    request = TrainingRequest(dataset=data.source, model_name="m", arch=arch, **fields)
    return train.train(data, make_plan(request, data, delta=delta), progress=progress)


def digits_subset(ds: Dataset, n: int) -> Dataset:
    """The first `n` examples of `ds`, as a dataset of their own."""
    return Dataset(
        source=ds.source,
        x=ds.x[:n],
        y=ds.y[:n],
        classes=ds.classes,
        fingerprint="subset",
        value_range=ds.value_range,
    )
