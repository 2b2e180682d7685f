"""`secure-maas demo`: the README's main job, from nothing to a served DP model.

It runs the same commands an operator would, in order: init (keys + database), register two
bundled real datasets with privacy budgets, train a DP model on each (sealed and published),
apply `policies/`, issue tokens for an analyst and an auditor, print working `curl` commands
(one allowed, one denied), where to look in the audit log and the web console's address with
the auditor's token to paste there, then serve. A second run reuses
what exists: datasets and models already there are not registered or trained again.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from secure_maas.cli import dataset_cmd, policy_cmd, serve_cmd, train_cmd
from secure_maas.cli.context import AppContext
from secure_maas.cli.init_cmd import echo_init_result
from secure_maas.cli.token_cmd import issue_token
from secure_maas.db.session import session_factory, session_scope
from secure_maas.instance import initialise
from secure_maas.registry import catalog
from secure_maas.training import dataset_catalog

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@dataclass(frozen=True)
class DemoModel:
    dataset: str
    source: str
    budget: float
    delta: float | None
    model: str
    train: dict[str, Any]


# The utility targets of docs/training.md (bench/utility.py's figures there); `--quick` cuts
# the epochs for tests.
MODELS = (
    DemoModel(
        "digits",
        "sklearn:digits",
        8.0,
        1e-5,
        "digits-mlp",
        {
            "arch": "mlp",
            "target_epsilon": 3.0,
            "batch_size": 256,
            "epochs": 60,
            "learning_rate": 0.05,
            "optimizer": "momentum",
            "clip_norm": 1.0,
            "units": (128,),
            "activation": "tanh",
        },
    ),
    DemoModel(
        "breast_cancer",
        "sklearn:breast_cancer",
        3.0,
        None,
        "breast_cancer-mlp",
        {
            "arch": "mlp",
            "target_epsilon": 1.0,
            "batch_size": 128,
            "epochs": 10,
            "learning_rate": 0.1,
            "units": (16,),
        },
    ),
)


def _has_dataset(app: AppContext, name: str) -> bool:
    with session_scope(session_factory(app.engine())) as session:
        try:
            dataset_catalog.get_dataset(session, name)
        except dataset_catalog.UnknownDataset:
            return False
    return True


def _has_model(app: AppContext, name: str) -> bool:
    with session_scope(session_factory(app.engine())) as session:
        try:
            catalog.get_model(session, name)
        except catalog.ModelNotFound:
            return False
    return True


def _curl(url: str, token: str, body: str | None = None) -> str:
    parts = ["curl", "-s", "-H", f"Authorization: Bearer {token}"]
    if body is not None:
        parts += ["-H", "Content-Type: application/json", "-d", body]
    return " ".join(shlex.quote(part) for part in [*parts, url])


@click.command()
@click.option("--port", default=8501, show_default=True, help="Port to serve on (127.0.0.1).")
@click.option("--no-serve", is_flag=True, help="Set everything up and print, but do not serve.")
@click.option("--quick", is_flag=True, help="Train for 2 epochs (for tests; lower accuracy).")
@click.pass_context
def demo(ctx: click.Context, port: int, no_serve: bool, quick: bool) -> None:
    """Set up a local instance from nothing, train and seal DP models, and serve them.

    \b
    Example:
        make demo          # creates .venv, then runs: secure-maas demo
        secure-maas demo --no-serve
    """
    app: AppContext = ctx.obj
    settings = app.settings
    click.echo("== secure-maas demo ==")
    click.echo("-- 1. keys and database")
    echo_init_result(initialise(settings), settings.database_url)

    for item in MODELS:
        click.echo(f"-- 2. dataset {item.dataset} ({item.source})")
        if _has_dataset(app, item.dataset):
            click.echo(f"already registered: {item.dataset}")
        else:
            ctx.invoke(
                dataset_cmd.register,
                name=item.dataset,
                source=item.source,
                epsilon_budget=item.budget,
                delta=item.delta,
            )
        click.echo(f"-- 3. DP training: {item.model}")
        if _has_model(app, item.model):
            click.echo(f"already trained: {item.model} (secure-maas models show {item.model})")
        else:
            options = dict(item.train)
            if quick:
                options["epochs"] = 2
            ctx.invoke(train_cmd.train, dataset_name=item.dataset, model_name=item.model, **options)

    click.echo("-- 4. access policy: policy apply policies/")
    ctx.invoke(policy_cmd.apply, paths=(POLICIES,), dry_run=False, prune=False)

    click.echo("-- 5. tokens (1 hour)")
    analyst = issue_token(app, "alice", timedelta(hours=1), ())
    auditor = issue_token(app, "bob", timedelta(hours=1), ())
    click.echo(f"alice (analyst): jti {analyst.jti}; bob (auditor): jti {auditor.jti}")

    base = f"http://127.0.0.1:{port}"
    # One 8x8 digit (sklearn's digits are 8x8 images, pixel values 0..16).
    image = [[0, 0, 5, 13, 9, 1, 0, 0]] + [[0, 0, 13, 15, 10, 15, 5, 0]] * 6 + [[0] * 8]
    row = json.dumps([[float(v) for v in line] for line in image], separators=(",", ":"))
    body = '{"instances": [' + row + "]}"
    click.echo("-- 6. try it (in another terminal while the server runs)")
    click.echo("# allowed: alice predicts with the DP digits model (epsilon <= 3)")
    click.echo(_curl(f"{base}/v1/models/digits-mlp:predict", analyst.token, body))
    click.echo("# denied: bob is an auditor, not an analyst: the model is invisible to him (404)")
    click.echo(_curl(f"{base}/v1/models/digits-mlp:predict", auditor.token, body))
    click.echo("# the guarantee: metadata carries epsilon, delta, noise multiplier, clip norm")
    click.echo(_curl(f"{base}/v1/models/digits-mlp/metadata", analyst.token))
    click.echo("# the auditor reviews who asked what, and proves the log intact")
    click.echo(_curl(f"{base}/admin/audit?since=1h", auditor.token))
    click.echo(_curl(f"{base}/admin/audit/verify", auditor.token))
    click.echo("# or from this machine: secure-maas audit tail -f; secure-maas audit verify")
    click.echo(f"-- 7. the web console: open {base}/console/ and sign in as the auditor by")
    click.echo("pasting bob's token (audit log, charts, privacy budgets, models and access):")
    click.echo(auditor.token)
    if no_serve:
        click.echo(f"-- 8. serve with: secure-maas serve --port {port} --preload digits-mlp")
        return
    click.echo(f"-- 8. serving on {base} (Ctrl-C to stop)")
    ctx.invoke(serve_cmd.serve, port=port, preload=("digits-mlp", "breast_cancer-mlp"))
