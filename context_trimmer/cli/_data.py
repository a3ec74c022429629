"""The data's life on the command line: ``export``, ``forget`` and ``prune``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .._store.erasure import Erasure
from .._trimmer import Trimmer
from ._common import db_option, duration, existing_db, user_errors


def _open(db_url: str | None, command: str) -> Trimmer:
    url = existing_db(db_url, command)
    return Trimmer(url, summarizer="extractive", background=False)


@click.command("export")
@click.option("--user", required=True, help="Whose conversations.")
@click.option("--conversation", "conversation_id", default=None, help="Only this one.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@db_option
@user_errors
def export_command(
    user: str, conversation_id: str | None, output: Path | None, db_url: str | None
) -> None:
    """Write a user's conversations as JSONL: one line per conversation with its messages
    in order, their timestamps, the current summary and the request times."""
    with _open(db_url, "export") as trimmer:
        lines = [
            json.dumps(item, ensure_ascii=False) for item in trimmer.export(user, conversation_id)
        ]
    text = "".join(line + "\n" for line in lines)
    if not lines:
        click.echo(f"no conversations stored for user {user!r}", err=True)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, "utf-8")
        click.echo(f"wrote {len(lines)} conversation(s) to {output}", err=True)


@click.command("forget")
@click.option(
    "--user",
    default=None,
    help="Erase this one stored user: a library user, a gateway tenant's own requests, "
    "or one end user as stored (acme:alice). A tenant's end users are NOT included.",
)
@click.option(
    "--tenant",
    default=None,
    help="Erase a gateway tenant (the key's --user) AND all its end users (acme:alice, "
    "acme:bob...). Another tenant is never touched, even one named acme:bob.",
)
@click.option("--conversation", "conversation_id", default=None, help="Only this one.")
@click.option("--yes", is_flag=True, help="Confirm: the text cannot be brought back.")
@db_option
@user_errors
def forget_command(
    user: str | None, tenant: str | None, conversation_id: str | None, yes: bool, db_url: str | None
) -> None:
    """Erase a user's (--user) or a whole tenant's (--tenant) messages and everything
    derived from them. The savings ledger keeps its figures under opaque identifiers, so
    report totals do not change."""
    if (user is None) == (tenant is None):
        raise click.UsageError("give --user or --tenant (one of them)")
    if not yes:
        raise click.ClickException("forget erases for good: add --yes to confirm")
    with _open(db_url, "forget") as trimmer:
        erasure = trimmer.forget(user, conversation_id, tenant=tenant)
    click.echo(_said(erasure))


@click.command("prune")
@click.option(
    "--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m: unused for so long."
)
@db_option
@user_errors
def prune_command(older_than: str, db_url: str | None) -> None:
    """Erase the conversations nobody has used for AGE, as forget does."""
    age = duration(older_than)
    with _open(db_url, "prune") as trimmer:
        erasure = trimmer.prune(age)
    click.echo(_said(erasure))


def _said(erasure: Erasure) -> str:
    lines = [
        f"conversations erased          {erasure.conversations:,}",
        f"messages removed              {erasure.messages:,}",
        f"shared messages kept          {erasure.messages_kept_shared:,}",
        f"summaries emptied             {erasure.summaries:,}",
        f"summary failures emptied      {erasure.summary_failures:,}",
        f"prompt rewrites emptied       {erasure.compressions:,}",
        f"leases removed                {erasure.leases:,}",
        f"quota windows removed         {erasure.quota_windows:,}",
        f"ledger rows anonymised        {erasure.requests_anonymised:,}",
    ]
    return "\n".join(lines)
