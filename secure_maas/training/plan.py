"""A training run's plan: the request checked once, the noise calibrated once, ε computed once.

`make_plan` is the only place that validates what an operator asked for (every parameter and
every combination of flags), resolves the defaults and `--auto`'s choices, draws the split,
calibrates the noise from a target ε and computes the run's (ε, δ) with the accountant. Everyone
after it reads the frozen `Plan`: the command line prints it, the ledger reserves its ε, the
trainer (`train.train`) runs exactly its steps, and the published guarantee is its report. No
later step re-checks a parameter or recomputes ε by another path, so the figure reserved, the
figure published and the figure trained cannot drift apart.

Everything here uses public quantities only (n, batch size, epochs, δ, the statistics' noise)
and imports no TensorFlow, so the plan of a run is known, and refusable, before any training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secure_maas.errors import SecureMaasError
from secure_maas.training import accounting, auto, dpstats, options
from secure_maas.training.accounting import PrivacyReport
from secure_maas.training.dataset_catalog import default_delta
from secure_maas.training.datasets import Dataset, resolve_preprocessing, split
from secure_maas.training.transfer import PublicInit, frozen_layers

DEFAULT_EPOCHS = 60
DEFAULT_LEARNING_RATE = 0.05
DEFAULT_OPTIMIZER = "momentum"
DEFAULT_CLIP = 1.0


class TrainingError(SecureMaasError):
    """Training parameters that cannot be honoured, or a run that broke its own contract."""


class ConflictingOptions(TrainingError):
    """Options that cannot be given together, or one given without the option it needs.

    A usage error: the command line reports it as one (exit status 2).
    """


@dataclass(frozen=True)
class TrainingRequest:
    """What the operator asked for; None means "the default" (or `--auto`'s choice)."""

    dataset: str
    model_name: str
    arch: str
    dp: bool = True
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    auto: bool = False
    l2_norm_clip: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    seed: int = 0
    noise_seed: int | None = None
    test_fraction: float = 0.2
    preprocessing: str = "auto"
    clipping_path: str = "auto"
    sizes: dict[str, Any] = field(default_factory=dict)
    stats_noise_multiplier: float | None = None
    init_from: str | None = None  # a public model to start from (`transfer`)
    freeze_layers: int | None = None
    train_head_only: bool = False
    distributed: bool = False  # several workers (`distributed`, TF_CONFIG)


@dataclass(frozen=True)
class Plan:
    """The run as it will train, fixed before training; `privacy` is its exact (ε, δ).

    Made by `make_plan` for one dataset (`fingerprint`, and its split `train_indices` /
    `test_indices`); `train.train` takes it as it is.
    """

    request: TrainingRequest
    fingerprint: str
    n_train: int
    n_test: int
    batch_size: int
    epochs: int
    steps_per_epoch: int
    steps: int
    sampling_rate: float
    learning_rate: float
    optimizer: str
    l2_norm_clip: float
    privacy: PrivacyReport | None  # the mechanism's (ε, δ); None without DP-SGD
    preprocessing: str  # resolved: public-range, dp-standardize, standardize or none
    stats_noise_multiplier: float | None
    sizes: Mapping[str, Any]  # the architecture's options as given (defaults left out)
    train_indices: NDArray[np.int64] = field(compare=False, repr=False)
    test_indices: NDArray[np.int64] = field(compare=False, repr=False)
    auto_reason: str | None = None
    # The public model the run starts from (its weights are public: they cost no ε) and the
    # layers that keep its weights; see `transfer`.
    init: PublicInit | None = field(default=None, compare=False, repr=False)
    frozen_layers: tuple[str, ...] = ()

    @property
    def dataset(self) -> str:
        return self.request.dataset

    @property
    def dp(self) -> bool:
        return self.privacy is not None

    @property
    def noise_multiplier(self) -> float | None:
        """The DP-SGD noise multiplier (calibrated or given); None without DP-SGD."""
        return None if self.privacy is None else self.privacy.noise_multiplier

    @property
    def delta(self) -> float | None:
        return None if self.privacy is None else self.privacy.delta

    @property
    def private(self) -> bool:
        """Whether the model will carry the guarantee: DP-SGD with secret noise (a fixed
        noise seed publishes the noise) and preprocessing the guarantee covers."""
        return (
            self.privacy is not None
            and self.request.noise_seed is None
            and self.preprocessing in options.COVERED_PREPROCESSING
        )

    @property
    def guarantee(self) -> PrivacyReport | None:
        """The privacy report the model and the ledger carry: None unless `private`."""
        return self.privacy if self.private else None


def make_plan(
    request: TrainingRequest,
    data: Dataset,
    *,
    delta: float | None = None,
    init: PublicInit | None = None,
) -> Plan:
    """Check `request` against `data` and fix the run: hyperparameters, split, noise, (ε, δ).

    The one validator of a training run: raises `ConflictingOptions` for flags that do not go
    together, `TrainingError` for a value that cannot be honoured (and the accountant's and the
    data's own errors), before anything is trained or reserved. `delta` is the budget's δ
    (default: `default_delta` of the training split). With a target ε the noise is calibrated
    here, once, and the run's report computed from it, once; both cover the preprocessing
    statistics' release when there is one. `init` is the public model `request.init_from`
    names, opened by the caller (`pretrained.load_public_init`); its weights cost no ε, so
    the accounting is the same as from random weights.
    """
    sizes = _check_request(request)
    if (request.init_from is None) != (init is None):
        raise TrainingError("--init-from: plan the run with the public model it names, opened")
    frozen = (
        () if init is None else frozen_layers(init, request.freeze_layers, request.train_head_only)
    )
    train_idx, test_idx = split(data, test_fraction=request.test_fraction, seed=request.seed)
    n = len(train_idx)
    preprocessing = resolve_preprocessing(data, request.preprocessing)
    stats_noise = stats_noise_for(preprocessing, request.stats_noise_multiplier)
    if request.dp:
        if preprocessing not in options.COVERED_PREPROCESSING:
            raise TrainingError(
                f"preprocessing {preprocessing!r} stores exact statistics of the training data, "
                "which no DP guarantee covers: use dp-standardize (the default without a public "
                "range), declare public feature ranges at registration, or train with --no-dp"
            )
        delta = default_delta(n) if delta is None else delta
        if not 0 < delta < 1 / n:
            raise TrainingError(f"δ must be in (0, 1/n) = (0, {1 / n:.3g}) for {n} examples")
    suggestion = None
    if request.auto:
        if request.target_epsilon is None or delta is None:
            raise ConflictingOptions("--auto chooses hyperparameters for a target ε: give one")
        suggestion = auto.suggest(
            n, request.target_epsilon, delta, stats_noise_multiplier=stats_noise
        )
    batch = _first(request.batch_size, suggestion and suggestion.batch_size)
    batch = auto.auto_batch_size(n) if batch is None else int(batch)
    epochs = int(_first(request.epochs, suggestion and suggestion.epochs, DEFAULT_EPOCHS))
    rate = float(
        _first(
            request.learning_rate, suggestion and suggestion.learning_rate, DEFAULT_LEARNING_RATE
        )
    )
    optimizer = str(
        _first(request.optimizer, suggestion and suggestion.optimizer, DEFAULT_OPTIMIZER)
    )
    clip = float(_first(request.l2_norm_clip, suggestion and suggestion.l2_norm_clip, DEFAULT_CLIP))
    sampling_rate, steps_per_epoch, steps = plan_steps(n, batch, epochs)
    privacy = None
    if request.dp and delta is not None:
        privacy = _privacy(request, sampling_rate, steps, delta, clip, batch, n, stats_noise)
    return Plan(
        request=request,
        fingerprint=data.fingerprint,
        n_train=n,
        n_test=len(test_idx),
        batch_size=batch,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        steps=steps,
        sampling_rate=sampling_rate,
        learning_rate=rate,
        optimizer=optimizer,
        l2_norm_clip=clip,
        privacy=privacy,
        preprocessing=preprocessing,
        stats_noise_multiplier=stats_noise,
        sizes=MappingProxyType(sizes),
        train_indices=train_idx,
        test_indices=test_idx,
        auto_reason=suggestion.why if suggestion else None,
        init=init,
        frozen_layers=frozen,
    )


def plan_steps(n: int, batch_size: int, epochs: int) -> tuple[float, int, int]:
    """(sampling rate, steps per epoch, steps): an epoch is round(n / b) Poisson steps."""
    if not 1 <= batch_size <= n:
        raise TrainingError(f"batch size must be between 1 and {n} (training examples)")
    if epochs < 1:
        raise TrainingError("epochs must be at least 1")
    steps_per_epoch = max(1, round(n / batch_size))
    return batch_size / n, steps_per_epoch, steps_per_epoch * epochs


def stats_noise_for(kind: str, stats_noise_multiplier: float | None) -> float | None:
    """The statistics' noise multiplier of a run whose preprocessing is `kind` (resolved):
    the default for dp-standardize, none otherwise (giving one then is an error)."""
    if kind != "dp-standardize":
        if stats_noise_multiplier is not None:
            raise ConflictingOptions(
                f"a statistics noise multiplier applies to dp-standardize only, not {kind}"
            )
        return None
    if stats_noise_multiplier is None:
        return dpstats.DEFAULT_NOISE_MULTIPLIER
    if not _positive(stats_noise_multiplier):
        raise TrainingError("the statistics' noise multiplier must be a positive number")
    return float(stats_noise_multiplier)


def _privacy(
    request: TrainingRequest,
    sampling_rate: float,
    steps: int,
    delta: float,
    clip: float,
    batch: int,
    n: int,
    stats_noise: float | None,
) -> PrivacyReport:
    """The run's noise (calibrated from the target ε, or as given) and its one report."""
    if not _positive(clip):
        raise TrainingError("the clip norm must be a positive number")
    if request.target_epsilon is not None:
        sigma = accounting.calibrate_noise(
            request.target_epsilon, sampling_rate, steps, delta, stats_noise_multiplier=stats_noise
        )
    elif request.noise_multiplier is not None:
        sigma = float(request.noise_multiplier)
    else:  # `_check_request` refused this already; kept as code, never as an assert
        raise ConflictingOptions(NEEDS_ONE_NOISE)
    return accounting.epsilon(
        sigma,
        sampling_rate,
        steps,
        delta,
        l2_norm_clip=clip,
        batch_size=batch,
        number_of_examples=n,
        stats_noise_multiplier=stats_noise,
    )


NEEDS_ONE_NOISE = "give exactly one of --noise-multiplier and --target-epsilon (or --no-dp)"


def _check_request(request: TrainingRequest) -> dict[str, Any]:
    """Every check that needs no data; returns the architecture's options, normalised."""
    if request.arch not in options.ARCHITECTURES:
        raise TrainingError(
            f"unknown architecture {request.arch!r}; choose one of "
            f"{', '.join(options.ARCHITECTURES)}"
        )
    if request.dp:
        if (request.noise_multiplier is None) == (request.target_epsilon is None):
            raise ConflictingOptions(NEEDS_ONE_NOISE)
        if request.noise_multiplier is not None and not _positive(request.noise_multiplier):
            raise TrainingError("the noise multiplier must be positive (use --no-dp for none)")
        if request.target_epsilon is not None and not _positive(request.target_epsilon):
            raise TrainingError("the target ε must be a positive number")
    elif request.noise_multiplier is not None or request.target_epsilon is not None or request.auto:
        raise ConflictingOptions("--no-dp takes no noise multiplier, target ε or --auto")
    if request.optimizer is not None and request.optimizer not in options.OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {request.optimizer!r}; use {options.OPTIMIZERS}")
    if request.learning_rate is not None and not _positive(request.learning_rate):
        raise TrainingError("the learning rate must be a positive number")
    if request.clipping_path not in options.CLIPPING_PATHS:
        raise TrainingError(
            f"unknown clipping path {request.clipping_path!r}; use one of {options.CLIPPING_PATHS}"
        )
    if request.preprocessing not in options.PREPROCESSING:
        raise TrainingError(f"unknown preprocessing {request.preprocessing!r}")
    if request.init_from is None and (request.freeze_layers is not None or request.train_head_only):
        raise ConflictingOptions("--freeze-layers and --train-head-only need --init-from")
    if request.freeze_layers is not None and request.train_head_only:
        raise ConflictingOptions("give --freeze-layers or --train-head-only, not both")
    if request.freeze_layers is not None and request.freeze_layers < 0:
        raise TrainingError("--freeze-layers must be 0 or more")
    if request.distributed:
        if not request.dp:
            raise ConflictingOptions("--distributed trains with DP-SGD only (not --no-dp)")
        if request.clipping_path == "per-example":
            raise ConflictingOptions("--distributed trains on the fast clipping path only")
    return _sizes(request.arch, request.sizes)


def sizes_of(request: TrainingRequest) -> dict[str, Any]:
    """The architecture options of `request` as the plan will hold them (checked, normalised)."""
    return _sizes(request.arch, request.sizes)


def _sizes(arch: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The size options given for `arch`, with a recurrent layer's one width unpacked."""
    allowed = options.DEFAULT_SIZES[arch]
    unknown = set(given) - set(allowed)
    if unknown:
        raise ConflictingOptions(
            f"unknown option(s) {sorted(unknown)} for {arch}; it takes {sorted(allowed)}"
        )
    sizes = dict(given)
    units = sizes.get("units")
    if arch in ("lstm", "gru") and isinstance(units, tuple | list):
        if len(units) != 1:
            raise ConflictingOptions(f"{arch} takes one --units value")
        sizes["units"] = units[0]
    return sizes


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _first(*values: Any) -> Any:
    """The first value that is not None (an explicit flag beats `--auto`, which beats defaults)."""
    return next((value for value in values if value is not None), None)
