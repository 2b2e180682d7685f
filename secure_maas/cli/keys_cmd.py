"""`secure-maas keys`: the keyring (service, publisher, JWT and audit keys)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from secure_maas.actions import AdminAction
from secure_maas.audit.rotation import rotate_audit_key
from secure_maas.cli.context import AppContext
from secure_maas.cli.output import emit, format_option
from secure_maas.cli.recording import os_event, os_user, record_now
from secure_maas.crypto import Algorithm
from secure_maas.keys import InitReport, KeyKind, KeyRecord, Keyring
from secure_maas.keys.keyring import is_kem_downgrade
from secure_maas.timeutil import isoformat

COLUMNS = ["id", "kind", "algorithm", "status", "created_at", "fingerprint"]


def key_row(record: KeyRecord) -> dict[str, object]:
    return record.to_json()


def echo_init_report(report: InitReport) -> None:
    if report.tightened:
        click.echo(f"tightened {report.folder} to mode 0700")
    for record in report.created:
        click.echo(f"created {record.kind} key {record.id} ({record.fingerprint})")
    if not report.changed:
        click.echo(f"keyring in {report.folder} already initialised; nothing changed")


@click.group()
def keys() -> None:
    """Manage the keyring in the keys folder (SECURE_MAAS_KEYS_DIR)."""


PQ_OPTION = click.option(
    "--pq",
    is_flag=True,
    help="Make the service key post-quantum: ML-KEM-768 + X25519 hybrid HPKE.",
)


@keys.command("init")
@PQ_OPTION
@click.pass_obj
def init(app: AppContext, pq: bool) -> None:
    """Create the keys folder and any missing key; never replaces an existing key.

    \b
    Example:
        secure-maas keys init --pq
    """
    _keyring, report = Keyring.init(app.settings.keys_dir, pq=pq)
    echo_init_report(report)


@keys.command("list")
@format_option
@click.option("--kind", type=click.Choice([k.value for k in KeyKind]), help="Only this kind.")
@click.pass_obj
def list_keys(app: AppContext, fmt: str, kind: str | None) -> None:
    """List keys with id, kind, status, creation time and fingerprint (never key material).

    \b
    Example:
        secure-maas keys list --format json
    """
    records = [r for r in app.keyring().records if kind is None or r.kind == kind]
    emit([key_row(r) for r in records], COLUMNS, fmt)


@keys.command("check")
@click.pass_obj
def check(app: AppContext) -> None:
    """Load every usable key: permissions, formats and fingerprints.

    \b
    Example:
        secure-maas keys check
    """
    keyring = app.keyring()
    keyring.check()
    missing = [
        k for k in KeyKind if not any(r.kind is k and r.status == "active" for r in keyring.records)
    ]
    if missing:
        raise click.ClickException(f"no active key of kind: {', '.join(missing)}")
    click.echo(f"{len(keyring.records)} keys in {keyring.folder}: all readable and intact")


@keys.command("rotate")
@click.option(
    "--kind",
    required=True,
    type=click.Choice([k.value for k in KeyKind]),
    help="Which kind of key to rotate.",
)
@PQ_OPTION
@click.option(
    "--classical",
    is_flag=True,
    help="Make the new service key classical X25519, even replacing a post-quantum one.",
)
@click.pass_obj
def rotate(app: AppContext, kind: str, pq: bool, classical: bool) -> None:
    """Make a new active key of KIND; the old one is kept to decrypt and verify.

    A new service key is of the same family as the one it replaces (post-quantum hybrid or
    classical X25519): --pq moves to the hybrid, and only --classical moves back, with a
    warning, since artifacts re-wrapped to it lose their post-quantum protection. After
    rotating the service key, run `secure-maas models rewrap`.

    \b
    Example:
        secure-maas keys rotate --kind service --pq && secure-maas models rewrap
    """
    if (pq or classical) and kind != KeyKind.SERVICE:
        flag = "--pq" if pq else "--classical"
        raise click.UsageError(f"{flag} applies to service keys only, not {kind} keys")
    if pq and classical:
        raise click.UsageError("--pq and --classical contradict each other: give one of them")
    keyring = app.keyring()
    previous = keyring.active(KeyKind(kind))
    if classical and is_kem_downgrade(previous.algorithm, Algorithm.X25519):
        click.echo(
            f"warning: {previous.id} is a post-quantum hybrid key (ML-KEM-768 + X25519) and "
            "--classical replaces it with classical X25519: models sealed or re-wrapped "
            "(`models rewrap`) to the new key lose their post-quantum protection. To keep it, "
            "rotate with --pq instead.",
            err=True,
        )
    if kind == KeyKind.AUDIT:
        # The event first, then the old key's rotation point, written under the chain's lock
        # with the new key's first event (secure_maas.audit.rotation).
        done = rotate_audit_key(app.engine(), keyring, actor=os_user())
        click.echo(
            f"new active audit key {done.key.id} ({done.key.fingerprint}); {previous.id} kept "
            f"to verify events up to seq {done.last_seq} only"
        )
        return

    def recorded(created: KeyRecord) -> None:
        reason = f"new active {kind} key {created.id}"
        if is_kem_downgrade(previous.algorithm, created.algorithm):
            reason += (
                f"; post-quantum protection dropped ({previous.algorithm} -> "
                f"{created.algorithm}, --classical)"
            )
        event = os_event(
            AdminAction.KEYS_ROTATE,
            reason,
            previous=previous.id,
            key=created.id,
            previous_algorithm=str(previous.algorithm),
            algorithm=str(created.algorithm),
        )
        record_now(app, event)

    record = keyring.rotate(KeyKind(kind), pq=pq, classical=classical, before_save=recorded)
    click.echo(
        f"new active {kind} key {record.id} ({record.algorithm}, {record.fingerprint}); "
        f"{previous.id} kept as previous"
    )


@keys.command("retire")
@click.argument("key_id")
@click.pass_obj
def retire(app: AppContext, key_id: str) -> None:
    """Stop trusting KEY_ID for anything (rotate the active key away first).

    \b
    Example:
        secure-maas keys retire jwt-3f9a1c0b2d4e
    """

    def recorded(retired: KeyRecord) -> None:
        reason = f"retired {retired.kind} key {key_id}"
        record_now(app, os_event(AdminAction.KEYS_RETIRE, reason, key=key_id))

    record = app.keyring().retire(key_id, before_save=recorded)
    when = isoformat(record.retired_at) if record.retired_at else "now"
    click.echo(f"retired {record.kind} key {record.id} at {when}")


@keys.command("trust")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--label", help="Who this publisher is, e.g. the team that trains.")
@click.pass_obj
def trust(app: AppContext, public_key: Path, label: str | None) -> None:
    """Trust artifacts signed by another publisher's PUBLIC_KEY (a PEM file).

    \b
    Example:
        secure-maas keys trust radiology-publisher.pub --label radiology
    """

    def recorded(added: KeyRecord) -> None:
        event = os_event(
            AdminAction.KEYS_TRUST,
            f"trusting publisher key {added.id}",
            key=added.id,
            fingerprint=added.fingerprint,
        )
        record_now(app, event)

    record = app.keyring().trust_publisher(
        public_key.read_bytes(), label=label, before_save=recorded
    )
    click.echo(f"trusting publisher key {record.id} ({record.fingerprint})")


@keys.command("jwks")
@click.pass_obj
def jwks(app: AppContext) -> None:
    """Print the JSON Web Key Set that verifies tokens this service issues.

    \b
    Example:
        secure-maas keys jwks > jwks.json
    """
    click.echo(json.dumps(app.keyring().jwks(), indent=2, sort_keys=True))
