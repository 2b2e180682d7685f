"""The choices training offers are written once (`training.options`) and the command line
offers exactly those, without importing TensorFlow to know them."""

from __future__ import annotations

import click

from secure_maas.cli.train_cmd import train
from secure_maas.training import options


def choices(name: str) -> tuple[str, ...]:
    (param,) = [p for p in train.params if p.name == name]
    assert isinstance(param.type, click.Choice)
    return tuple(param.type.choices)


def test_the_train_command_offers_the_options_of_training() -> None:
    assert choices("arch") == options.ARCHITECTURES == tuple(options.DEFAULT_SIZES)
    assert choices("optimizer") == options.OPTIMIZERS
    assert choices("preprocessing") == options.PREPROCESSING
    assert choices("clipping_path") == options.CLIPPING_PATHS
    assert set(options.COVERED_PREPROCESSING) < set(options.PREPROCESSING)
