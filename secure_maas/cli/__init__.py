"""The `secure-maas` command: a thin click layer over the library.

Library errors (`SecureMaasError`) become one line on stderr and exit status 1; click's usage
errors exit 2; `--debug` shows the traceback instead. Command groups live in one module each and
are registered here.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from secure_maas import __version__
from secure_maas.cli.context import AppContext
from secure_maas.db.engine import describe_error
from secure_maas.errors import SecureMaasError


class SecureMaasGroup(click.Group):
    """Translates library errors into clean CLI errors unless `--debug` is on."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except SecureMaasError as exc:
            if _debug(ctx):
                raise
            raise click.ClickException(str(exc)) from None
        except DBAPIError as exc:
            if _debug(ctx):
                raise
            raise click.ClickException(f"database error: {describe_error(exc)}") from None
        except OSError as exc:
            if _debug(ctx):
                raise
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.obj and ctx.obj.debug)


@click.group(cls=SecureMaasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(__version__, prog_name="secure-maas")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """secure-maas: train models with differential privacy and serve them securely.

    Settings come from SECURE_MAAS_* environment variables (see `secure-maas config show`).

    \b
    Example:
        secure-maas init && secure-maas keys list
    """
    ctx.obj = AppContext(debug=debug)


def _register() -> None:
    from secure_maas.cli import (
        audit_cmd,
        config_cmd,
        dataset_cmd,
        db_cmd,
        demo_cmd,
        derive_cmd,
        init_cmd,
        keys_cmd,
        models_cmd,
        policy_cmd,
        principal_cmd,
        privacy_cmd,
        serve_cmd,
        token_cmd,
        train_cmd,
    )

    cli.add_command(audit_cmd.audit)
    cli.add_command(config_cmd.config)
    cli.add_command(dataset_cmd.dataset)
    cli.add_command(db_cmd.db)
    cli.add_command(keys_cmd.keys)
    cli.add_command(models_cmd.models)
    models_cmd.models.add_command(derive_cmd.quantize)
    models_cmd.models.add_command(derive_cmd.distill)
    cli.add_command(policy_cmd.policy)
    cli.add_command(principal_cmd.principal)
    cli.add_command(serve_cmd.serve)
    cli.add_command(token_cmd.token)
    cli.add_command(train_cmd.train)
    cli.add_command(privacy_cmd.privacy)
    cli.add_command(init_cmd.init)
    cli.add_command(demo_cmd.demo)


_register()


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="secure-maas")
    sys.exit(0)
