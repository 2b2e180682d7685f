"""`secure-maas train`: DP-SGD on a registered dataset, sealed and published, in the ledger.

TensorFlow is imported inside the command only, so `secure-maas --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from secure_maas.audit import KeyringAuditKeys
from secure_maas.cli.context import AppContext
from secure_maas.cli.recording import os_user
from secure_maas.training import options

if TYPE_CHECKING:
    from secure_maas.training.ledger import Reservation
    from secure_maas.training.pipeline import Outcome
    from secure_maas.training.plan import Plan
    from secure_maas.training.train import EpochProgress


def _ints(_ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected integers separated by commas") from None
    if not numbers or any(n < 1 for n in numbers):
        raise click.BadParameter(f"{value!r}: sizes must be positive")
    return numbers


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _describe(progress: EpochProgress | None) -> str:
    if progress is None:
        return ""
    return (
        f"loss {progress.loss:.4f}  accuracy {progress.accuracy:.3f}  "
        f"elapsed {_clock(progress.elapsed_s)}  eta {_clock(progress.eta_s)}"
    )


def _announce(plan: Plan, reservation: Reservation) -> None:
    request = plan.request
    click.echo(
        f"run {reservation.run_id}: {request.arch} on {plan.dataset} ({plan.n_train} training, "
        f"{plan.n_test} held-out examples), batch {plan.batch_size}, {plan.epochs} epochs = "
        f"{plan.steps} steps, learning rate {plan.learning_rate:g} ({plan.optimizer})"
    )
    if plan.auto_reason:
        click.echo(f"--auto: {plan.auto_reason}")
    if plan.init is not None:
        click.echo(
            f"starting from public model {plan.init.ref} (sha256 {plan.init.plaintext_sha256}); "
            f"frozen: {', '.join(plan.frozen_layers) or 'none'}"
        )
    if plan.privacy is None:
        click.echo("WITHOUT differential privacy (--no-dp): the model will carry no guarantee")
        return
    if not plan.private:
        click.echo(
            f"DP-SGD with noise multiplier {plan.privacy.noise_multiplier:.4f} (nominal "
            f"ε={plan.privacy.epsilon:.4g}), but --noise-seed makes the noise known: the model "
            "will carry NO guarantee and nothing is reserved"
        )
        return
    after = reservation.after
    click.echo(
        f"DP-SGD: clip norm {plan.l2_norm_clip:g}, noise multiplier "
        f"{plan.privacy.noise_multiplier:.4f} -> ε={plan.privacy.epsilon:.4g} at "
        f"δ={plan.privacy.delta:g} reserved; dataset now at ε={after.epsilon_rdp:.4g} of "
        f"{after.budget:g} (RDP composition; plain sum {after.epsilon_sum:.4g})"
    )


def _report(outcome: Outcome) -> None:
    from secure_maas.training.pipeline import statement

    result, plan = outcome.result, outcome.plan
    click.echo(f"published {plan.request.model_name}:{outcome.version}")
    click.echo(
        f"test accuracy {result.test_accuracy:.4f} on {plan.n_test} held-out examples "
        "(computed without noise; not part of the guarantee)"
    )
    click.echo(f"clipping path: {result.path_used} ({result.path_reason})")
    click.echo(f"preprocessing: {result.preprocessing.description}")
    text = statement(plan, result)
    if text is None:
        why = "--no-dp" if plan.privacy is None else "a fixed --noise-seed"
        click.echo(f"privacy: NONE (trained with {why}; the model is marked non-private)")
    else:
        click.echo("privacy:")
        for line in text.splitlines():
            click.echo(f"  {line}")
    spend = outcome.spend
    click.echo(
        f"dataset {spend.dataset}: spent ε={spend.epsilon_rdp:.4g} of {spend.budget:g} "
        f"(RDP composition; plain sum {spend.epsilon_sum:.4g}), remaining "
        f"ε={spend.remaining:.4g}"
    )


def _work(app: AppContext, request: Any, trainer: Any) -> None:
    """A worker's part of `train --distributed`: train with the others, publish nothing."""
    from secure_maas.training.pipeline import run_worker
    from secure_maas.training.plan import ConflictingOptions

    try:
        result = run_worker(app.engine(), request, trainer=trainer)
    except ConflictingOptions as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(
        f"worker done: {result.plan.steps} global steps in {_clock(result.duration_s)}; the "
        "chief publishes the model"
    )


@click.command()
@click.option("--dataset", "dataset_name", required=True, help="A registered dataset.")
@click.option("--model-name", required=True, help="Publish as the next version of this model.")
@click.option(
    "--arch", type=click.Choice(options.ARCHITECTURES), required=True, help="Architecture."
)
@click.option(
    "--noise-multiplier", type=float, help="DP-SGD noise multiplier (noise std / clip norm)."
)
@click.option("--target-epsilon", type=float, help="Calibrate the noise to this ε before training.")
@click.option(
    "--auto",
    is_flag=True,
    help="Choose batch size, epochs and learning rate for --target-epsilon (flags given win).",
)
@click.option("--no-dp", is_flag=True, help="Train WITHOUT privacy; the model is marked so.")
@click.option("--clip-norm", type=float, help="Per-example gradient clip norm.  [default: 1.0]")
@click.option("--batch-size", type=int, help="Expected batch size.  [default: ~6·sqrt(n)]")
@click.option("--epochs", type=int, help="Epochs.  [default: 60]")
@click.option("--learning-rate", type=float, help="Learning rate.  [default: 0.05]")
@click.option(
    "--optimizer",
    type=click.Choice(options.OPTIMIZERS),
    help="sgd, momentum (SGD, 0.9) or adam.  [default: momentum]",
)
@click.option("--units", callback=_ints, help="mlp: widths (128 or 64,32); lstm/gru: one width.")
@click.option("--activation", help="mlp/cnn/transformer activation.  [default: tanh; gelu]")
@click.option("--filters", callback=_ints, help="cnn: filters per convolution (16,32).")
@click.option("--kernel-size", type=int, help="cnn: convolution kernel size.")
@click.option("--dense-units", type=int, help="cnn: width of the dense layer (0: none).")
@click.option("--model-dim", type=int, help="transformer: model width.")
@click.option("--heads", type=int, help="transformer: attention heads.")
@click.option("--ff-units", type=int, help="transformer: feed-forward width.")
@click.option("--blocks", type=int, help="transformer: encoder blocks.")
@click.option("--seed", type=int, default=0, show_default=True, help="Split and initial weights.")
@click.option(
    "--noise-seed",
    type=int,
    help="Fix batch sampling and noise to reproduce a figure. A known noise seed lets anyone "
    "subtract the noise, so the model is published NON-PRIVATE (and needs a dataset "
    "registered with --allow-non-private).",
)
@click.option("--test-fraction", type=float, default=0.2, show_default=True, help="Held out.")
@click.option(
    "--preprocessing",
    type=click.Choice(options.PREPROCESSING),
    default="auto",
    show_default=True,
    help="Input scaling. auto: the public range when known (format or --feature-range at "
    "registration), else dp-standardize (statistics released with DP, in the run's ε). "
    "standardize uses exact statistics: --no-dp only.",
)
@click.option(
    "--stats-noise-multiplier",
    type=float,
    help="dp-standardize: noise multiplier of the statistics' Gaussian release.  [default: 8]",
)
@click.option(
    "--clipping-path",
    type=click.Choice(options.CLIPPING_PATHS),
    default="auto",
    show_default=True,
    help="fast (ghost) clipping when every layer allows it, else per-example; logged.",
)
@click.option(
    "--init-from",
    metavar="NAME[:V|@LABEL]",
    help="Start from this PUBLIC model's weights (`models import --public`); same --arch and "
    "sizes. Only the fine-tuning spends the dataset's budget.",
)
@click.option(
    "--freeze-layers",
    type=int,
    help="With --init-from: keep the first N layers with weights at their public values.",
)
@click.option(
    "--train-head-only",
    is_flag=True,
    help="With --init-from: train the head (logits) only; every other layer stays frozen.",
)
@click.option(
    "--distributed",
    is_flag=True,
    help="Train on the workers TF_CONFIG names (MultiWorkerMirroredStrategy): run the same "
    "command in every process; the chief reserves, publishes and audits.",
)
@click.pass_obj
def train(
    app: AppContext,
    dataset_name: str,
    model_name: str,
    arch: str,
    noise_multiplier: float | None,
    target_epsilon: float | None,
    auto: bool,
    no_dp: bool,
    clip_norm: float | None,
    batch_size: int | None,
    epochs: int | None,
    learning_rate: float | None,
    optimizer: str | None,
    units: tuple[int, ...] | None,
    activation: str | None,
    filters: tuple[int, ...] | None,
    kernel_size: int | None,
    dense_units: int | None,
    model_dim: int | None,
    heads: int | None,
    ff_units: int | None,
    blocks: int | None,
    seed: int,
    noise_seed: int | None,
    test_fraction: float,
    preprocessing: str,
    stats_noise_multiplier: float | None,
    clipping_path: str,
    init_from: str | None,
    freeze_layers: int | None,
    train_head_only: bool,
    distributed: bool,
) -> None:
    """Train a model with DP-SGD on a registered dataset and publish it sealed.

    Give --noise-multiplier or --target-epsilon (calibrated before training). The run's ε is
    checked against the dataset's remaining budget and reserved before any training; a run
    that would exceed it is refused. Prints an epoch bar (loss, accuracy, elapsed, ETA), the
    privacy statement, the test accuracy, the clipping path and the published version.

    \b
    Example:
        secure-maas train --dataset digits --model-name digits-dp --arch mlp \\
            --target-epsilon 3 --batch-size 256 --epochs 60 --learning-rate 0.05
        secure-maas train --dataset digits --model-name digits-cnn --arch cnn \\
            --target-epsilon 3 --auto
        secure-maas train --dataset digits-private --model-name digits-ft --arch cnn \\
            --target-epsilon 1 --init-from digits-base:1 --freeze-layers 1
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cluster = None
    if distributed:  # before TensorFlow runs anything: the strategy must come first
        from secure_maas.training.cluster import from_environment

        cluster = from_environment()
    from secure_maas.training.pipeline import run_training
    from secure_maas.training.plan import ConflictingOptions, TrainingRequest

    given_sizes = {
        "units": units,
        "activation": activation,
        "filters": filters,
        "kernel_size": kernel_size,
        "dense_units": dense_units,
        "model_dim": model_dim,
        "heads": heads,
        "ff_units": ff_units,
        "blocks": blocks,
    }
    if noise_seed is not None and not no_dp:
        click.echo(
            "warning: --noise-seed fixes the DP noise, so anyone who knows it can subtract the "
            "noise: the model will be published as non-private",
            err=True,
        )
    request = TrainingRequest(
        dataset=dataset_name,
        model_name=model_name,
        arch=arch,
        dp=not no_dp,
        noise_multiplier=noise_multiplier,
        target_epsilon=target_epsilon,
        auto=auto,
        l2_norm_clip=clip_norm,
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=learning_rate,
        optimizer=optimizer,
        seed=seed,
        noise_seed=noise_seed,
        test_fraction=test_fraction,
        preprocessing=preprocessing,
        stats_noise_multiplier=stats_noise_multiplier,
        clipping_path=clipping_path,
        init_from=init_from,
        freeze_layers=freeze_layers,
        train_head_only=train_head_only,
        distributed=distributed,
        sizes={key: value for key, value in given_sizes.items() if value is not None},
    )
    trainer: Any = None
    if cluster is not None:
        import functools

        from secure_maas.training.distributed import (
            check_same_request,
            make_strategy,
            train_distributed,
        )

        click.echo(
            f"{cluster.task_type} {cluster.task_index} of {cluster.size} processes: waiting "
            "for every worker to join"
        )
        strategy = make_strategy()
        check_same_request(strategy, request)
        trainer = functools.partial(train_distributed, strategy=strategy, cluster=cluster)
        if not cluster.is_chief:
            _work(app, request, trainer)
            return
    keyring = app.keyring()
    interactive = sys.stdout.isatty()
    bar: Any = None

    def announce(plan: Plan, reservation: Reservation) -> None:
        nonlocal bar
        _announce(plan, reservation)
        if interactive:
            bar = click.progressbar(
                length=plan.epochs,
                label="training",
                show_eta=False,
                show_pos=True,
                item_show_func=_describe,
            )
            bar.__enter__()

    def progress(update: EpochProgress) -> None:
        if bar is not None:
            bar.update(1, update)
        else:
            click.echo(f"epoch {update.epoch}/{update.epochs}  {_describe(update)}")

    try:
        outcome = run_training(
            app.engine(),
            app.store(),
            keyring,
            KeyringAuditKeys(keyring),
            request,
            created_by=os_user(),
            progress=progress,
            announce=announce,
            **({} if trainer is None else {"trainer": trainer}),
        )
    except ConflictingOptions as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    _report(outcome)
