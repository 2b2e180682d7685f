"""`secure-maas principal`: the users and services that tokens are issued to, their roles, and
the external identities an admin links to them."""

from __future__ import annotations

from typing import Any

import click

from secure_maas.actions import AdminAction
from secure_maas.auth import tokens
from secure_maas.auth.external import external_name
from secure_maas.cli.context import AppContext
from secure_maas.cli.output import emit, format_option
from secure_maas.cli.recording import admin_change
from secure_maas.config import env_name
from secure_maas.db.session import session_factory, session_scope
from secure_maas.policy import directory, grants
from secure_maas.policy.index import rules_for
from secure_maas.policy.models import PrincipalRow
from secure_maas.timeutil import isoformat

COLUMNS = ["name", "status", "roles", "created_at", "created_by"]


def principal_row(principal: PrincipalRow) -> dict[str, Any]:
    return {
        "name": principal.name,
        "status": "disabled" if principal.disabled else "enabled",
        "roles": ",".join(principal.role_names) or None,
        "description": principal.description,
        "created_at": isoformat(principal.created_at),
        "created_by": principal.created_by,
        "updated_at": isoformat(principal.updated_at),
    }


@click.group()
def principal() -> None:
    """Manage principals (token subjects) and the roles they hold."""


@principal.command("add")
@click.argument("name")
@click.option("--role", "roles", multiple=True, help="A role to give it (repeatable).")
@click.option("--description", help="Who or what this principal is.")
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@click.pass_obj
def add(
    app: AppContext, name: str, roles: tuple[str, ...], description: str | None, disabled: bool
) -> None:
    """Add the principal NAME (roles that do not exist yet are created).

    \b
    Example:
        secure-maas principal add alice --role analyst --description "Data team"
    """
    with admin_change(app, AdminAction.PRINCIPAL_CHANGE) as change:
        created = directory.add_principal(
            change.session,
            name,
            actor=change.actor,
            roles=roles,
            disabled=disabled,
            description=description,
        )
        text = f"added principal {name} (roles: {','.join(created.role_names) or '-'})"
        change.note(text, code="add", principal=name, roles=",".join(created.role_names))
    click.echo(text + (", disabled" if disabled else ""))


@principal.command("list")
@format_option
@click.pass_obj
def list_principals(app: AppContext, fmt: str) -> None:
    """List principals with their status and roles.

    \b
    Example:
        secure-maas principal list --format json
    """
    with session_scope(session_factory(app.engine())) as session:
        rows = [principal_row(p) for p in directory.list_principals(session)]
    emit(rows, COLUMNS, fmt)


@principal.command("show")
@click.argument("name")
@format_option
@click.pass_obj
def show(app: AppContext, name: str, fmt: str) -> None:
    """Show NAME: status, roles, the rules naming it or its roles, its active tokens and the
    external subjects linked to it.

    \b
    Example:
        secure-maas principal show alice
    """
    with session_scope(session_factory(app.engine())) as session:
        found = directory.get_principal(session, name)
        data = principal_row(found)
        subjects = [f"user:{name}", "*", *(f"role:{r}" for r in found.role_names)]
        all_rules = grants.load_rules(session)
        data["rules"] = [
            f"{r.id}: {r.summary()}" for s in subjects for r in rules_for(all_rules, s, None)
        ]
        data["active_tokens"] = [
            t.jti for t in tokens.list_tokens(session, active=True, subject=name)
        ]
        data["external_subjects"] = [
            link.external_subject for link in directory.list_links(session, name)
        ]
    if fmt == "json":
        emit([data], [], fmt)
        return
    click.echo(name)
    for key, value in data.items():
        if key == "name":
            continue
        if isinstance(value, list):
            click.echo(f"  {key:14} {len(value)}")
            for item in value:
                click.echo(f"    {item}")
        else:
            click.echo(f"  {key:14} {value if value is not None else '-'}")


def _set_disabled(app: AppContext, name: str, disabled: bool) -> None:
    with admin_change(app, AdminAction.PRINCIPAL_CHANGE) as change:
        _row, changed = directory.set_disabled(change.session, name, disabled)
        state = "disabled" if disabled else "enabled"
        text = f"{name} {state}" if changed else f"{name} was already {state}"
        change.note(text, code="disable" if disabled else "enable", principal=name)
    click.echo(text)


@principal.command("disable")
@click.argument("name")
@click.pass_obj
def disable(app: AppContext, name: str) -> None:
    """Disable NAME: every token of it is refused within a second (tokens stay listed).

    \b
    Example:
        secure-maas principal disable carol
    """
    _set_disabled(app, name, True)


@principal.command("enable")
@click.argument("name")
@click.pass_obj
def enable(app: AppContext, name: str) -> None:
    """Enable NAME again (its unexpired, unrevoked tokens work again).

    \b
    Example:
        secure-maas principal enable carol
    """
    _set_disabled(app, name, False)


@principal.group("role")
def role() -> None:
    """Give principals roles or take them away."""


@role.command("add")
@click.argument("name")
@click.argument("role_name", metavar="ROLE")
@click.pass_obj
def role_add(app: AppContext, name: str, role_name: str) -> None:
    """Give NAME the role ROLE (created if it does not exist).

    \b
    Example:
        secure-maas principal role add alice analyst
    """
    with admin_change(app, AdminAction.PRINCIPAL_CHANGE) as change:
        _row, changed = directory.grant_role(change.session, name, role_name)
        text = f"{name} now holds {role_name}" if changed else f"{name} already holds {role_name}"
        change.note(text, code="role-add", principal=name, role=role_name)
    click.echo(text)


@role.command("remove")
@click.argument("name")
@click.argument("role_name", metavar="ROLE")
@click.pass_obj
def role_remove(app: AppContext, name: str, role_name: str) -> None:
    """Take the role ROLE from NAME (applies to its tokens within a second).

    \b
    Example:
        secure-maas principal role remove alice analyst
    """
    with admin_change(app, AdminAction.PRINCIPAL_CHANGE) as change:
        _row, changed = directory.take_role(change.session, name, role_name)
        text = (
            f"{name} no longer holds {role_name}" if changed else f"{name} did not hold {role_name}"
        )
        change.note(text, code="role-remove", principal=name, role=role_name)
    click.echo(text)


def _external(app: AppContext, subject: str) -> str:
    """`ext:<alias>:SUBJECT` for the configured external identity provider."""
    issuer = app.settings.external_issuer
    if issuer is None:
        raise click.UsageError(
            f"no external identity provider is configured ({env_name('external_issuer')})"
        )
    return external_name(issuer, subject)


external_option = click.option(
    "--external-subject",
    "subject",
    required=True,
    help="The `sub` claim of the external identity provider's tokens (as the provider sends it).",
)


@principal.command("external-name")
@click.argument("subject")
@click.pass_obj
def show_external_name(app: AppContext, subject: str) -> None:
    """Print the principal name of SUBJECT (a `sub` of the external identity provider).

    External subjects are namespaced by issuer, ext:<alias>:<sub>: never a local principal.
    Rules name them as user:ext:<alias>:<sub>; `principal add` of that name gives them roles
    or, with --disabled, refuses their tokens.

    \b
    Example:
        secure-maas policy grant --subject "user:$(secure-maas principal external-name bob)" \\
            --model digits --action model:predict
    """
    click.echo(_external(app, subject))


@principal.command("link")
@click.argument("name")
@external_option
@click.pass_obj
def link(app: AppContext, name: str, subject: str) -> None:
    """Let the external subject --external-subject speak for the local principal NAME.

    Its tokens then get exactly NAME's roles and grants (and those naming the external subject
    itself), count against NAME's quotas and are refused when NAME is disabled; the audit log
    records NAME with the external subject beside it. Undo with `principal unlink`.

    \b
    Example:
        secure-maas principal link alice --external-subject 248289761001
    """
    external = _external(app, subject)
    with admin_change(app, AdminAction.PRINCIPAL_CHANGE) as change:
        changed = directory.link(change.session, name, external, actor=change.actor)
        text = f"linked {external} to {name}" if changed else f"{external} was already linked"
        change.note(
            text, code="link" if changed else "unchanged", principal=name, external=external
        )
    click.echo(text)


@principal.command("unlink")
@external_option
@click.pass_obj
def unlink(app: AppContext, subject: str) -> None:
    """Remove the link of the external subject --external-subject (applies within a second).

    \b
    Example:
        secure-maas principal unlink --external-subject 248289761001
    """
    external = _external(app, subject)
    with admin_change(app, AdminAction.PRINCIPAL_CHANGE) as change:
        local = directory.unlink(change.session, external)
        text = f"unlinked {external} from {local}"
        change.note(text, code="unlink", principal=local, external=external)
    click.echo(text)
