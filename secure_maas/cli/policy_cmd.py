"""`secure-maas policy`: access rules, one at a time or as `policies/` files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from secure_maas.actions import Action, AdminAction
from secure_maas.admin.explain import explain_access
from secure_maas.cli.context import AppContext
from secure_maas.cli.output import emit, format_option
from secure_maas.cli.recording import admin_change
from secure_maas.db.session import session_factory, session_scope
from secure_maas.policy import grants, sync
from secure_maas.policy.errors import InvalidRule
from secure_maas.policy.index import rules_for
from secure_maas.policy.rules import Effect, Quota, Rule, Window
from secure_maas.timeutil import isoformat, utcnow

F = TypeVar("F", bound=Callable[..., Any])

COLUMNS = ["id", "effect", "subject", "model", "actions", "conditions"]
ACTIONS = [a.value for a in Action]
WHEN = click.DateTime(["%Y-%m-%dT%H:%M:%S%z"])


def rule_row(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "effect": rule.effect.value,
        "subject": rule.subject,
        "model": rule.target(),
        "actions": ",".join(a.value for a in rule.actions),
        "conditions": " ".join(rule.conditions()) or None,
        "description": rule.description,
        **{k: v for k, v in sync.rule_mapping(rule).items() if k not in ("model", "actions")},
    }


def _quota(text: str, option: str) -> tuple[Window, int]:
    amount, _, per = text.partition("/")
    try:
        return Window(per), int(amount)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected COUNT/WINDOW, e.g. 600/minute (minute, hour, day)",
            param_hint=option,
        ) from None


def _quotas(requests: tuple[str, ...], rows: tuple[str, ...]) -> tuple[Quota, ...]:
    found = [Quota(per, requests=n) for per, n in (_quota(t, "--quota") for t in requests)]
    found += [Quota(per, rows=n) for per, n in (_quota(t, "--row-quota") for t in rows)]
    return tuple(found)


def scope_options(func: F) -> F:
    """--subject/--model/--version/--label/--action/--deny: what a rule is about."""
    options = [
        click.option(
            "--subject", help="user:NAME, role:NAME or '*' (external: user:ext:<alias>:<sub>)."
        ),
        click.option("--model", default="*", show_default=True, help="Model name or glob."),
        click.option("--version", type=int, help="Only this version of the model."),
        click.option("--label", help="Only the version with this label (e.g. stable)."),
        click.option(
            "--action",
            "actions",
            multiple=True,
            type=click.Choice(ACTIONS),
            help="An action (repeatable).",
        ),
        click.option("--deny", is_flag=True, help="An explicit deny rule instead of an allow."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group()
def policy() -> None:
    """Manage access rules and sync them with policies/ files."""


@policy.command("grant")
@scope_options
@click.option("--valid-from", type=WHEN, help="Valid from (e.g. 2027-01-01T00:00:00Z).")
@click.option("--valid-until", type=WHEN, help="Valid until, exclusive (same form).")
@click.option("--max-rows", type=int, help="Largest request (rows/instances) allowed.")
@click.option("--max-epsilon", type=float, help="Only model versions with a DP epsilon <= this.")
@click.option("--quota", "quota_requests", multiple=True, help="Requests per window: 600/minute.")
@click.option("--row-quota", "quota_rows", multiple=True, help="Rows per window: 100000/day.")
@click.option(
    "--finite-inputs",
    is_flag=True,
    help="Only requests whose float inputs are all finite (no NaN or Infinity).",
)
@click.option("--description", help="Why this rule exists.")
@click.pass_obj
def grant(app: AppContext, /, **options: Any) -> None:
    """Add an allow (or, with --deny, a deny) rule; prints its id.

    \b
    Example:
        secure-maas policy grant --subject role:analyst --model 'digits*' \\
            --action model:predict --action model:metadata --max-epsilon 3 --quota 600/minute
    """
    rule = _rule(options)
    with admin_change(app, AdminAction.POLICY_GRANT) as change:
        stored, created = grants.grant(change.session, rule, actor=change.actor)
        text = f"rule {stored.id}: {stored.summary()}" + ("" if created else " (already granted)")
        change.note(text, code="grant" if created else "unchanged", rule_id=stored.id)
    click.echo(text)


def _rule(options: dict[str, Any]) -> Rule:
    if not options.get("subject") or not options.get("actions"):
        raise click.UsageError("--subject and at least one --action are required")
    try:
        return Rule(
            effect=Effect.DENY if options["deny"] else Effect.ALLOW,
            subject=options["subject"],
            actions=tuple(Action(a) for a in options["actions"]),
            model=options["model"],
            version=options["version"],
            label=options["label"],
            valid_from=options.get("valid_from"),
            valid_until=options.get("valid_until"),
            max_rows=options.get("max_rows"),
            max_epsilon=options.get("max_epsilon"),
            quotas=_quotas(options.get("quota_requests", ()), options.get("quota_rows", ())),
            finite_inputs=bool(options.get("finite_inputs")),
            description=options.get("description"),
        )
    except InvalidRule as exc:
        raise click.UsageError(str(exc)) from None


@policy.command("revoke")
@click.argument("rule_ids", metavar="[RULE_ID]...", nargs=-1, type=int)
@scope_options
@click.pass_obj
def revoke(app: AppContext, /, rule_ids: tuple[int, ...], **options: Any) -> None:
    """Remove rules by id, or the rule that `policy grant` with the same options added.

    With --subject, --model, --version/--label, --action and --deny, the rule removed is the one
    with exactly that effect, subject, model scope and set of actions.

    \b
    Example:
        secure-maas policy revoke 12
        secure-maas policy revoke --subject user:bob --model digits --action model:predict
    """
    if bool(rule_ids) == bool(options.get("subject")):
        raise click.UsageError("give RULE_IDs or a scope (--subject ... --action ...), not both")
    with admin_change(app, AdminAction.POLICY_REVOKE) as change:
        if rule_ids:
            removed = grants.revoke(change.session, rule_ids)
            lines = [f"removed rule {r.id}: {r.summary()}" for r in removed]
        else:
            removed_rule = grants.revoke_like(change.session, _rule(options))
            lines = [f"removed rule {removed_rule.id}: {removed_rule.summary()}"]
        change.note("; ".join(lines), code="revoke")
    click.echo("\n".join(lines))


@policy.command("list")
@click.option("--subject", help="Only rules naming exactly this subject (user:NAME, role:NAME, *).")
@click.option("--model", help="Only rules whose model pattern covers this model name.")
@format_option
@click.pass_obj
def list_rules(app: AppContext, subject: str | None, model: str | None, fmt: str) -> None:
    """List rules in id order.

    \b
    Example:
        secure-maas policy list --subject role:analyst --model digits
    """
    with session_scope(session_factory(app.engine())) as session:
        rules = rules_for(grants.load_rules(session), subject, model)
    emit([rule_row(r) for r in rules], COLUMNS, fmt)


@policy.command("explain")
@click.option(
    "--subject",
    required=True,
    help="A principal name, or an external one, ext:<alias>:<sub> (its current roles are used).",
)
@click.option(
    "--model", "model_ref", help="NAME, NAME:VERSION or NAME@LABEL (none for audit:read)."
)
@click.option("--action", required=True, type=click.Choice(ACTIONS))
@click.option("--rows", type=int, default=1, show_default=True, help="Rows in the request.")
@click.option(
    "--non-finite", is_flag=True, help="The request holds NaN or Infinity (see finite_inputs)."
)
@format_option
@click.pass_obj
def explain(
    app: AppContext,
    subject: str,
    model_ref: str | None,
    action: str,
    rows: int,
    non_finite: bool,
    fmt: str,
) -> None:
    """Show the decision for SUBJECT, and every rule with whether it matched and why.

    \b
    Example:
        secure-maas policy explain --subject alice --model digits:2 --action model:predict
    """
    found = explain_access(
        app.engine(),
        app.store(),
        app.keyring(),
        subject=subject,
        action=Action(action),
        model_ref=model_ref,
        rows=rows,
        now=utcnow(),
        finite=not non_finite,
    )
    caller, result, notes = found.caller, found.explanation, list(found.notes)
    roles = caller.roles
    decision = result.decision
    checks = [{**rule_row(c.rule), "matched": c.matched, "why": c.why} for c in result.checks]
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "allowed": decision.allowed,
                    "reason": decision.reason,
                    "rule_ids": list(decision.rule_ids),
                    "quotas": [str(q) for q in decision.quotas],
                    "roles": list(roles),
                    "notes": notes,
                    "rules": checks,
                },
                indent=2,
            )
        )
        return
    verdict = "ALLOW" if decision.allowed else "DENY"
    click.echo(f"{verdict}: {decision.reason}")
    names = ", ".join(f"user:{name}" for name in caller.names)
    click.echo(f"subject {names}, roles: {','.join(roles) or '-'}; at {isoformat(found.at)}")
    for line in notes:
        click.echo(f"note: {line}")
    if decision.quotas:
        click.echo(f"quotas that apply: {', '.join(str(q) for q in decision.quotas)}")
    for row in checks:
        row["matched"] = "yes" if row["matched"] else "no"
    emit(checks, ["id", "effect", "subject", "model", "actions", "matched", "why"], "table")


@policy.command("apply")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--prune", is_flag=True, help="Also remove what the files no longer hold.")
@click.pass_obj
def apply(app: AppContext, paths: tuple[Path, ...], dry_run: bool, prune: bool) -> None:
    """Make the database match the policy files in PATHS (files or folders); print the diff.

    A malformed file is refused whole, with file, line and reason, and nothing changes.

    \b
    Example:
        secure-maas policy apply policies/ --dry-run
        secure-maas policy apply policies/ --prune
    """
    if dry_run:
        with session_scope(session_factory(app.engine())) as session:
            diff = sync.apply(session, list(paths), dry_run=True, prune=prune)
        _print_diff(diff)
        return
    with admin_change(app, AdminAction.POLICY_APPLY) as change:
        diff = sync.apply(change.session, list(paths), prune=prune, actor=change.actor)
        change.note(
            f"applied {', '.join(str(p) for p in paths)}: {diff.summary()}",
            code="prune" if prune else "apply",
            changes=len(diff.changes),
        )
    _print_diff(diff)


def _print_diff(diff: sync.PolicyDiff) -> None:
    for line in diff.lines():
        click.echo(line)
    click.echo(diff.summary() if not diff.empty else "no changes: the database matches the files")


@policy.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of stdout.",
)
@click.pass_obj
def export(app: AppContext, output: Path | None) -> None:
    """Write every role, principal and rule as one policy file that `apply` takes unchanged.

    \b
    Example:
        secure-maas policy export -o policies/exported.yaml
    """
    with session_scope(session_factory(app.engine())) as session:
        text = sync.export(session)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


@policy.command("diff")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def diff(app: AppContext, paths: tuple[Path, ...]) -> None:
    """Show every difference between the policy files in PATHS and the database.

    `+` is only in the files, `-` only in the database, `~` differs.

    \b
    Example:
        secure-maas policy diff policies/
    """
    with session_scope(session_factory(app.engine())) as session:
        changes = sync.diff(session, list(paths))
    for line in changes.lines():
        click.echo(line)
    if changes.empty:
        click.echo("no differences")
