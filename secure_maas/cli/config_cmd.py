"""`secure-maas config`: inspect the effective settings."""

from __future__ import annotations

import click

from secure_maas.cli.context import AppContext
from secure_maas.cli.output import emit, format_option


@click.group()
def config() -> None:
    """Inspect configuration."""


@config.command("show")
@format_option
@click.pass_obj
def show(app: AppContext, fmt: str) -> None:
    """Print the effective settings (passwords in URLs are masked).

    \b
    Example:
        SECURE_MAAS_STORE_DIR=/srv/store secure-maas config show --format json
    """
    rows = [{"variable": name, "value": value} for name, value in app.settings.describe()]
    emit(rows, ["variable", "value"], fmt)
