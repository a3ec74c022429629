"""The ``context-trimmer`` command line. Data goes to stdout, progress to stderr.

Every command takes ``--db URL`` (default: ``$CONTEXT_TRIMMER_DB``, else the SQLite file
under ``~/.local/share/context-trimmer``) and ``--json`` for machine-readable output.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from .. import __version__
from .._jobs.replay import ReplayResult, load_conversations, replay, request_points
from .._models import ModelTable
from .._options import TrimmerOptions
from .._reports.formats import FORMATS, render
from .._reports.html import render_html
from .._reports.report import GROUPS, Report, build_report
from .._store.db import Database, resolve_url, sqlite_file
from .._store.ledger import Ledger
from .._text.compress import Compression, compress_safe
from .._text.tokens import count_tokens, counter_for
from .._trimmer import Trimmer
from .._trimming.summarizers import OpenAISummarizer
from .._trimming.system_prompt import PromptRewriter, SystemPrompts
from . import _data as _cli_data
from . import _folds as _cli_folds
from . import _gateway as _cli_gateway
from . import _worker as _cli_worker
from ._common import (
    db_option,
    emit,
    existing_db,
    json_option,
    share,
    terminal_width,
    user_errors,
)

OPTIONS = TrimmerOptions()  # the replay command's defaults are the library's


@click.group()
@click.version_option(__version__, prog_name="context-trimmer")
def main() -> None:
    """Make every OpenAI chat request lighter: summaries, exact tokens, a savings report."""


@main.group()
def db() -> None:
    """Manage the history database."""


@db.command("upgrade")
@db_option
@json_option
@user_errors
def db_upgrade(db_url: str | None, as_json: bool) -> None:
    """Create or migrate the schema to the newest version (a no-op when current)."""
    with Database(db_url, migrate=False) as store:
        changed = store.upgrade()
        revision, url = store.revision(), store.display_url
    status = "upgraded" if changed else "already current"
    emit(
        {"database": url, "revision": revision, "changed": changed},
        as_json,
        f"{url}: {status} (revision {revision})",
    )


@db.command("current")
@db_option
@json_option
@user_errors
def db_current(db_url: str | None, as_json: bool) -> None:
    """Show the schema revision of the database and the newest one available (none for a
    database not created yet: it is not created here)."""
    resolved = resolve_url(db_url)
    missing = sqlite_file(resolved)
    if missing is not None and not missing.exists():
        revision, url = None, resolved
    else:
        with Database(resolved, migrate=False) as store:
            revision, url = store.revision(), store.display_url
    from .._store.migrate import head_revision  # alembic loads only for the commands that use it

    head = head_revision()
    emit(
        {"database": url, "revision": revision, "head": head},
        as_json,
        f"revision {revision or '(none)'}, newest {head}",
    )


@main.command("count")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default="gpt-4o", show_default=True)
@json_option
@user_errors
def count(file: Path, model: str, as_json: bool) -> None:
    """Count the prompt tokens of a request: a JSON list of messages, or an object with
    "messages" (and optionally "tools")."""
    data = _read_json(file)
    messages: Any = data.get("messages") if isinstance(data, dict) else data
    tools = data.get("tools") if isinstance(data, dict) else None
    tokens = count_tokens(messages, model, tools)
    emit({"model": model, "prompt_tokens": tokens}, as_json, str(tokens))


@main.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@db_option
@click.option(
    "--summarizer",
    type=click.Choice(["extractive", "openai"]),
    default="extractive",
    show_default=True,
    help="openai uses OPENAI_API_KEY and OPENAI_BASE_URL.",
)
@click.option("--summarizer-model", default="gpt-4o-mini", show_default=True)
@click.option("--keep-last", default=OPTIONS.keep_last, show_default=True, help="Verbatim tail.")
@click.option("--fold-every", default=OPTIONS.fold_every, show_default=True, help="Per fold.")
@click.option("--summary-tokens", default=OPTIONS.summary_tokens, show_default=True)
@click.option(
    "--summary-share",
    type=share,
    default=OPTIONS.summary_share,
    show_default=True,
    help="Grow the summary budget to this share of the history it replaces "
    "(never above --summary-tokens); off: a fixed --summary-tokens.",
)
@click.option(
    "--recall-tokens", default=OPTIONS.recall_tokens, show_default=True, help="0: no recall."
)
@click.option(
    "--recall-share",
    type=share,
    default=OPTIONS.recall_share,
    show_default=True,
    help="Recall at most this share of the history's tokens too; off: --recall-tokens alone.",
)
@click.option("--model", default="gpt-4o", show_default=True, help="Model the app calls.")
@json_option
@user_errors
def replay_command(
    file: Path,
    db_url: str | None,
    summarizer: str,
    summarizer_model: str,
    keep_last: int,
    fold_every: int,
    summary_tokens: int,
    summary_share: float | None,
    recall_tokens: int,
    recall_share: float | None,
    model: str,
    as_json: bool,
) -> None:
    """Replay logged conversations turn by turn through prepare() and report the savings.

    FILE is JSONL (one message list, or {"messages": [...]}, per line) or LoCoMo JSON.
    Offline by default: the extractive summarizer needs no network. The replay runs in
    a fresh temporary database (so every run prints the same figures) unless --db is given.
    """
    if summarizer == "openai" and not os.environ.get("OPENAI_API_KEY"):
        raise click.ClickException(
            "--summarizer openai needs OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible "
            "server); or replay offline with --summarizer extractive"
        )
    conversations = load_conversations(file)
    chosen: Any = summarizer if summarizer == "extractive" else OpenAISummarizer(summarizer_model)
    total = sum(len(list(request_points(c.messages))) for c in conversations)
    started = datetime.now(timezone.utc)
    with (
        tempfile.TemporaryDirectory(prefix="context-trimmer-replay-") as scratch,
        Trimmer(
            db_url or f"sqlite:///{scratch}/replay.db",
            keep_last=keep_last,
            fold_every=fold_every,
            summarizer=chosen,
            summary_tokens=summary_tokens,
            summary_share=summary_share,
            recall_tokens=recall_tokens,
            recall_share=recall_share,
            background=False,
        ) as trimmer,
        click.progressbar(length=total, label="replaying", file=sys.stderr) as bar,
    ):
        result = replay(trimmer, conversations, model=model, progress=bar.update)
        report = trimmer.report(since=started, group_by="conversation")
    emit(
        {"replay": result.as_dict(), "report": report.as_dict()},
        as_json,
        _replay_text(result, model) + "\n\n" + render(report, "table", width=terminal_width()),
    )


def _replay_text(result: ReplayResult, model: str) -> str:
    rows = [
        ("conversations", f"{result.conversations:,}"),
        ("requests", f"{result.requests:,}"),
        ("prompt tokens as given", f"{result.baseline_tokens_as_given:,}"),
        ("requests over the window", f"{result.over_window_requests:,}"),
        ("baseline (cut to window)", f"{result.baseline_tokens:,}"),
        ("prompt tokens sent", f"{result.prompt_tokens:,}"),
        ("saved", f"{result.saved_tokens:,} ({result.saved_percent:.1f}%)"),
        ("last request, baseline", f"{sum(result.final_baseline_tokens):,}"),
        ("last request, sent", f"{sum(result.final_prompt_tokens):,}"),
        ("summaries made", f"{result.summaries:,}"),
        (
            "summarizer tokens in/out",
            f"{result.summarizer_tokens_in:,} / {result.summarizer_tokens_out:,}",
        ),
        ("summary failures", f"{result.summary_failures:,}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"Replay through prepare() for {model}:"]
    lines += [f"  {name:<{width}}  {value:>14}" for name, value in rows]
    return "\n".join(lines)


@main.command("compress")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--mode",
    type=click.Choice(["safe", "llm"]),
    default="safe",
    show_default=True,
    help="llm asks a model (OPENAI_API_KEY, OPENAI_BASE_URL) and checks its rewrite.",
)
@click.option(
    "--model",
    "rewriter_model",
    default="gpt-4o-mini",
    show_default=True,
    help="Model for --mode llm.",
)
@click.option(
    "--protect",
    multiple=True,
    metavar="REGEX",
    help="Lines matching REGEX are kept byte for byte (repeatable).",
)
@db_option
@json_option
@user_errors
def compress_command(
    file: Path,
    mode: str,
    rewriter_model: str,
    protect: tuple[str, ...],
    db_url: str | None,
    as_json: bool,
) -> None:
    """Compress a system prompt: the result to stdout, the token counts to stderr."""
    text = file.read_text("utf-8")
    count = counter_for("gpt-4o").text
    if mode == "safe":
        safe = compress_safe(text, protect)
        result = Compression(safe, "safe", count(text), count(safe))
    else:
        with Database(db_url) as store:
            prompts = SystemPrompts(
                "llm",
                db=store,
                count=count,
                schedule=lambda work: work(),
                protect=protect,
                rewriter=PromptRewriter(rewriter_model),
            )
            try:
                result = prompts.rewrite_now(text)
            finally:
                prompts.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "mode": result.mode,
                    "original_tokens": result.original_tokens,
                    "tokens": result.tokens,
                    "saved_tokens": result.saved_tokens,
                    "rejected_because": result.reason,
                    "text": result.text,
                },
                indent=2,
            )
        )
        return
    click.echo(result.text)
    share = result.saved_tokens / result.original_tokens if result.original_tokens else 0.0
    click.echo(
        f"{result.mode}: {result.original_tokens} -> {result.tokens} tokens (-{share:.1%})",
        err=True,
    )
    if result.reason:
        click.echo(f"LLM rewrite not used: {result.reason}", err=True)


_DATES = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


@main.command("report")
@db_option
@click.option("--since", type=_DATES, help="From this UTC date or time (inclusive).")
@click.option("--until", type=_DATES, help="Up to this UTC date or time (exclusive).")
@click.option("--group-by", type=click.Choice(GROUPS), help="One row per day/model/...")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here instead of stdout.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML report with charts.",
)
@json_option
@user_errors
def report_command(
    db_url: str | None,
    since: datetime | None,
    until: datetime | None,
    group_by: str | None,
    fmt: str,
    output: Path | None,
    html_path: Path | None,
    as_json: bool,
) -> None:
    """The token savings report: tokens and dollars, as given vs sent, net of summaries."""
    since, until = _utc(since), _utc(until)
    with Database(existing_db(db_url, "report")) as store:
        ledger = Ledger(store)

        def grouped(by: str | None) -> Report:
            return build_report(ledger, ModelTable(), since=since, until=until, group_by=by)

        report = grouped(group_by)
        if html_path is not None:
            overall = report if group_by is None else grouped(None)
            html_path.write_text(
                render_html(overall, grouped("model"), grouped("conversation")), "utf-8"
            )
            click.echo(f"wrote {html_path}", err=True)
    width = terminal_width() if output is None else None
    _write(render(report, "json" if as_json else fmt, width=width), output)


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=timezone.utc)


def _write(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n", "utf-8")
        click.echo(f"wrote {output}", err=True)


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise click.ClickException(f"{file}: not readable JSON ({error})") from error


main.add_command(_cli_data.export_command)
main.add_command(_cli_data.forget_command)
main.add_command(_cli_data.prune_command)
main.add_command(_cli_folds.status)
main.add_command(_cli_folds.compact)
main.add_command(_cli_gateway.keys)
main.add_command(_cli_gateway.serve)
main.add_command(_cli_worker.worker)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
