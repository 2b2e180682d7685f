"""`secure-maas init`: keys and database in one idempotent step."""

from __future__ import annotations

import click

from secure_maas.cli.context import AppContext
from secure_maas.cli.keys_cmd import echo_init_report
from secure_maas.config import mask_url
from secure_maas.instance import InitResult, initialise


def echo_init_result(result: InitResult, database_url: str) -> None:
    echo_init_report(result.keys)
    url = mask_url(database_url)
    if result.revision_before == result.revision_after:
        click.echo(f"database {url} already at {result.revision_after}")
    else:
        click.echo(
            f"database {url}: {result.revision_before or 'empty'} -> {result.revision_after}"
        )


@click.command()
@click.option("--pq", is_flag=True, help="Create a post-quantum (ML-KEM-768 + X25519) service key.")
@click.pass_obj
def init(app: AppContext, pq: bool) -> None:
    """Create missing keys and migrate the database (safe to run again).

    \b
    Example:
        SECURE_MAAS_DATABASE_URL=sqlite:///var/secure_maas.db secure-maas init
    """
    settings = app.settings
    echo_init_result(initialise(settings, pq=pq), settings.database_url)
