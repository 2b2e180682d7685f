"""`secure-maas demo`: the README's main job.

Today it does what exists (keys and database) and shows them; training, sealing, policies and
serving join it as their issues land.
"""

from __future__ import annotations

import click

from secure_maas.cli.context import AppContext
from secure_maas.cli.init_cmd import echo_init_result
from secure_maas.cli.keys_cmd import COLUMNS, key_row
from secure_maas.cli.output import emit
from secure_maas.db import migrate
from secure_maas.instance import initialise

NEXT_STEPS = """\
Next, as their pieces land: train a DP model on sklearn:digits and seal it to the service key,
apply policies/, issue a token, and serve the model with a working curl command."""


@click.command()
@click.pass_obj
def demo(app: AppContext) -> None:
    """Set up a local instance from nothing and show what is in place.

    \b
    Example:
        make demo          # creates .venv, then runs: secure-maas demo
    """
    settings = app.settings
    click.echo("== secure-maas demo ==")
    click.echo("-- initialising keys and database")
    echo_init_result(initialise(settings), settings.database_url)
    click.echo("-- keyring")
    emit([key_row(r) for r in app.keyring().records], COLUMNS, "table")
    click.echo("-- schema check")
    migrate.check(app.engine())
    click.echo(f"schema at {migrate.head()}, models match migrations")
    click.echo("-- what comes next")
    click.echo(NEXT_STEPS)
