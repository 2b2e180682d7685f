"""`secure-maas db`: migrate and check the database schema (Alembic under the hood)."""

from __future__ import annotations

import click

from secure_maas.cli.context import AppContext
from secure_maas.config import mask_url
from secure_maas.db import migrate


@click.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_obj
def upgrade(app: AppContext, revision: str) -> None:
    """Migrate the database to REVISION (default: head).

    \b
    Example:
        SECURE_MAAS_DATABASE_URL=postgresql+psycopg://maas@db/maas secure-maas db upgrade
    """
    engine = app.engine()
    before = migrate.current(engine)
    migrate.upgrade(engine, revision)
    after = migrate.current(engine)
    url = mask_url(app.settings.database_url)
    if before == after:
        click.echo(f"{url}: already at {after}; nothing to do")
    else:
        click.echo(f"{url}: upgraded {before or 'empty'} -> {after}")


@db.command("current")
@click.pass_obj
def current(app: AppContext) -> None:
    """Print the revision the database is at, and the newest one available.

    \b
    Example:
        secure-maas db current
    """
    at = migrate.current(app.engine())
    newest = migrate.head()
    state = "up to date" if at == newest else "behind: run `secure-maas db upgrade`"
    click.echo(f"current: {at or 'empty'}  head: {newest}  ({state})")


@db.command("check")
@click.pass_obj
def check(app: AppContext) -> None:
    """Fail unless the database is at head and the models match the migrations.

    \b
    Example:
        secure-maas db check && echo schema ok
    """
    migrate.check(app.engine())
    click.echo(f"schema ok: at {migrate.head()}, models match migrations")
