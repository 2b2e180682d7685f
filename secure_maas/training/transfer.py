"""DP transfer learning: what a run takes from a public model, and which of its layers stay put.

`train --init-from NAME[:V|@LABEL]` starts DP-SGD from the weights of a published model whose
privacy class is `public` (`models import --public`: trained elsewhere on data its importer
declared public). Those weights are public, so using them costs nothing: the run's ε is that of
the fine-tuning alone, accounted on the dataset being trained on, exactly as a run from random
weights is. A model of any other class is refused: a DP model's weights already spent budget on
*its* data (reusing them is not public pre-training, and the new guarantee would not describe
the composition), and an `imported` or `non-private` model's data is unknown or private.

The contract between the init model and the new one is by layer name. The run builds its model
as always (`--arch` and the size options, the preprocessing of THIS dataset); its layers with
weights, leaving out the `preprocessing` layer, must be the init model's, in the same order and
with the same weight shapes, except the head (`logits`), which is copied when the number of
classes matches and freshly initialised otherwise. The preprocessing layer is never copied: it
belongs to the data being trained on and is made (and accounted) by the run's plan.
`--freeze-layers N` keeps the first N of those layers at their public values (training does not
change them: checked after training, like every non-trainable weight); `--train-head-only`
freezes all but the head.

This module holds what the plan needs (no TensorFlow); `pretrained` loads and applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray

from secure_maas.errors import SecureMaasError

#: Layers of the model every architecture builds (see `architectures`); repeated here so the
#: plan needs no TensorFlow.
PREPROCESSING_LAYER = "preprocessing"
HEAD_LAYER = "logits"


class InitRefused(SecureMaasError):
    """The model named by --init-from cannot be the starting point of this run."""


@dataclass(frozen=True, eq=False)
class InitLayer:
    """One layer of the init model that has weights, with its weights (in the layer's order)."""

    name: str
    weights: tuple[NDArray[Any], ...]

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(int(d) for d in w.shape) for w in self.weights)


@dataclass(frozen=True, eq=False)
class PublicInit:
    """A public model's weights, opened from the registry (verified, decrypted in memory).

    `layers`: its layers with weights, in model order, the preprocessing layer left out.
    """

    name: str
    version: int
    plaintext_sha256: str
    layers: tuple[InitLayer, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def layer(self, name: str) -> InitLayer:
        return next(layer for layer in self.layers if layer.name == name)

    def record(self) -> dict[str, Any]:
        """What the run's config, the ledger and the signed provenance keep of it."""
        return {
            "name": self.name,
            "version": self.version,
            "plaintext_sha256": self.plaintext_sha256,
        }


def frozen_layers(init: PublicInit, freeze_layers: int | None, head_only: bool) -> tuple[str, ...]:
    """The names of the layers that keep their public weights, by the options given.

    At least the head trains: freezing every layer would publish the public model unchanged.
    """
    names = init.layer_names
    if not names or names[-1] != HEAD_LAYER:
        raise InitRefused(
            f"{init.ref} does not end in a layer named {HEAD_LAYER!r} (a model built by "
            "secure-maas's architectures does): it cannot be fine-tuned here"
        )
    if head_only:
        return names[:-1]
    count = 0 if freeze_layers is None else freeze_layers
    if not 0 <= count < len(names):
        raise InitRefused(
            f"--freeze-layers {count}: {init.ref} has {len(names)} layers with weights "
            f"({', '.join(names)}); freeze between 0 and {len(names) - 1} (the head trains)"
        )
    return names[:count]
