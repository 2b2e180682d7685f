"""`secure-maas token`: issue, revoke and list bearer tokens.

`issue` prints the token on stdout and nothing else there (so `TOKEN=$(secure-maas token issue
...)` works); what was issued goes to stderr. The token is never stored or logged: the database
and the audit log hold its `jti`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from secure_maas.actions import AdminAction
from secure_maas.auth import tokens
from secure_maas.auth.models import IssuedToken
from secure_maas.cli.context import AppContext
from secure_maas.cli.output import emit, format_option
from secure_maas.cli.recording import admin_change
from secure_maas.db.session import session_factory, session_scope
from secure_maas.timeutil import isoformat, parse_duration, utcnow

LIST_COLUMNS = ["jti", "subject", "roles", "issued_at", "expires_at", "status"]


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def token() -> None:
    """Issue, revoke and list bearer tokens (JWTs signed with the keyring's JWT key)."""


def issue_token(
    app: AppContext, subject: str, ttl: timedelta, roles: tuple[str, ...]
) -> tokens.Issued:
    """Issue a token and record it (by jti) with its audit event; shared with the demo."""
    keyring = app.keyring()
    with admin_change(app, AdminAction.TOKEN_ISSUE) as change:
        issued = tokens.issue(
            change.session,
            keyring,
            app.settings,
            subject=subject,
            ttl=ttl,
            roles=roles or None,
            actor=change.actor,
        )
        change.note(
            f"issued token {issued.jti} to {subject}",
            jti=issued.jti,
            subject=subject,
            roles=",".join(issued.roles) if issued.roles is not None else None,
            expires_at=isoformat(issued.expires_at),
            key_id=issued.key_id,
        )
    return issued


@token.command("issue")
@click.option("--subject", required=True, help="The principal the token speaks for.")
@click.option(
    "--ttl",
    default="1h",
    show_default=True,
    callback=_duration,
    help="Lifetime: 90s, 15m, 1h, 7d (at most SECURE_MAAS_MAX_TOKEN_TTL).",
)
@click.option(
    "--role",
    "roles",
    multiple=True,
    help="Limit the token to this role of the principal (repeatable; default: all its roles).",
)
@click.pass_obj
def issue(app: AppContext, subject: str, ttl: timedelta, roles: tuple[str, ...]) -> None:
    """Issue a token for SUBJECT and print it on stdout (and only it).

    \b
    Example:
        TOKEN=$(secure-maas token issue --subject alice --ttl 1h --role analyst)
    """
    issued = issue_token(app, subject, ttl, roles)
    click.echo(issued.token)
    click.echo(
        f"issued jti {issued.jti} to {subject}, expires {isoformat(issued.expires_at)}", err=True
    )


@token.command("revoke")
@click.argument("jti", required=False)
@click.option(
    "--subject",
    help="Revoke every token of this principal that could still verify (see `list --active`).",
)
@click.pass_obj
def revoke(app: AppContext, jti: str | None, subject: str | None) -> None:
    """Revoke the token JTI, or every active token of --subject (refused within a second).

    Active means the service could still accept it: unrevoked and not past its expiry plus the
    verifier's clock leeway (30 s), so a token that expired a moment ago is revoked too.

    \b
    Example:
        secure-maas token revoke 3q2-7Xf1bQ9ZkL0pWm4aYcTr
        secure-maas token revoke --subject alice
    """
    if (jti is None) == (subject is None):
        raise click.UsageError("give a JTI or --subject, not both")
    with admin_change(app, AdminAction.TOKEN_REVOKE) as change:
        if jti is not None:
            row, changed = tokens.revoke(change.session, jti, actor=change.actor)
            message = f"revoked {jti}" if changed else f"{jti} was already revoked"
            change.note(message, jti=jti, subject=row.subject)
        else:
            rows = tokens.revoke_subject(change.session, str(subject), actor=change.actor)
            message = f"revoked {len(rows)} active token(s) of {subject}"
            change.note(message, subject=subject, count=len(rows))
    click.echo(message)


def token_row(row: IssuedToken) -> dict[str, Any]:
    return {
        "jti": row.jti,
        "subject": row.subject,
        "roles": row.roles,
        "key_id": row.key_id,
        "issued_at": isoformat(row.issued_at),
        "expires_at": isoformat(row.expires_at),
        "issued_by": row.issued_by,
        "revoked_at": isoformat(row.revoked_at) if row.revoked_at else None,
        "revoked_by": row.revoked_by,
        "status": tokens.status(row, utcnow()),
    }


@token.command("list")
@click.option(
    "--active",
    is_flag=True,
    help="Only tokens the service could still accept: unrevoked, not past expiry + 30 s leeway.",
)
@click.option("--subject", help="Only this principal's tokens.")
@format_option
@click.pass_obj
def list_tokens(app: AppContext, active: bool, subject: str | None, fmt: str) -> None:
    """List issued tokens by jti, newest first (the tokens themselves are never stored).

    Status is active, leeway (past its expiry, still accepted within the verifier's clock
    leeway), expired or revoked.

    \b
    Example:
        secure-maas token list --active --format json
    """
    with session_scope(session_factory(app.engine())) as session:
        rows = [token_row(r) for r in tokens.list_tokens(session, active=active, subject=subject)]
    emit(rows, LIST_COLUMNS, fmt)
