"""``context-trimmer status`` and ``context-trimmer compact``: folds seen from the store.

``status`` reports what the store knows of recent summaries: how many the LLM made,
how many the extractive fallback made instead, the failures and the last one, and the
Batch jobs pending in the state file. A circuit breaker lives in each process that
folds, so its state is not in the store: ask the process
(``Trimmer.summarizer_status()``, or the gateway's ``/healthz``).

``compact`` folds the due spans of idle conversations now, or through the Batch API
(``--batch``, then ``--collect``); see ``_jobs.batch``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select

from .._jobs.batch import BatchState, collect, default_state_path, idle_conversations, submit
from .._jobs.batch import last_request as last_request_of
from .._store.db import Database, as_utc
from .._store.summaries import FAILURES, SUMMARIES
from .._trimmer import Trimmer
from .._trimming.folding import is_fallback
from .._trimming.summarizers import OpenAISummarizer
from ._common import (
    db_option,
    duration,
    emit,
    existing_db,
    folding_options,
    json_option,
    user_errors,
)

PER_PROCESS = (
    "The circuit breaker lives in each process that folds: ask it "
    "(Trimmer.summarizer_status(), or the gateway's /healthz)."
)


state_option = click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Batch job state file (default: batches.json next to the default SQLite store).",
)


@click.command("status")
@db_option
@click.option("--since", "window", default="24h", show_default=True, help="Look back this far.")
@state_option
@json_option
@user_errors
def status(db_url: str | None, window: str, state_path: Path | None, as_json: bool) -> None:
    """Recent summaries, fallbacks and summarizer failures, from the store."""
    since = datetime.now(timezone.utc) - duration(window)
    with Database(existing_db(db_url, "status")) as store:
        data = store_health(store, since)
    state = BatchState(state_path or default_state_path())
    data["pending_batches"] = len(state.batches)
    data["pending_batch_folds"] = len(state.pending_ids())
    data["breaker"] = PER_PROCESS
    emit(data, as_json, _status_text(data, window))


def store_health(store: Database, since: datetime) -> dict[str, Any]:
    """Summaries, fallbacks and failures since ``since``; the last failure and the last
    summary the configured (non-fallback) summarizer made."""
    s, f = SUMMARIES.c, FAILURES.c
    with store.reading() as connection:
        labels = connection.execute(
            select(s.summarizer, func.count()).where(s.created_at >= since).group_by(s.summarizer)
        ).all()
        failures = connection.execute(
            select(func.count()).select_from(FAILURES).where(f.created_at >= since)
        ).scalar_one()
        last_failure = connection.execute(
            select(f.created_at, f.summarizer, f.error).order_by(f.id.desc()).limit(1)
        ).first()
        last_summary = connection.execute(
            select(s.created_at, s.summarizer).order_by(s.id.desc()).limit(1)
        ).first()
    fallbacks = sum(n for label, n in labels if is_fallback(label))
    return {
        "since": since.isoformat(),
        "summaries": sum(n for _, n in labels),
        "summary_fallbacks": fallbacks,
        "summary_failures": int(failures),
        "last_failure": None
        if last_failure is None
        else {
            "at": as_utc(last_failure.created_at).isoformat(),
            "summarizer": last_failure.summarizer,
            "error": last_failure.error,
        },
        "last_summary": None
        if last_summary is None
        else {
            "at": as_utc(last_summary.created_at).isoformat(),
            "summarizer": last_summary.summarizer,
            "fallback": is_fallback(last_summary.summarizer),
        },
    }


def _status_text(data: dict[str, Any], window: str) -> str:
    lines = [
        f"summaries (last {window}): {data['summaries']}, of which "
        f"{data['summary_fallbacks']} by the extractive fallback",
        f"summarizer failures (last {window}): {data['summary_failures']}",
    ]
    if data["last_summary"]:
        last = data["last_summary"]
        note = " (a fallback: the LLM summarizer is failing)" if last["fallback"] else ""
        lines.append(f"last summary: {last['at']} by {last['summarizer']}{note}")
    if data["last_failure"]:
        failure = data["last_failure"]
        lines.append(f"last failure: {failure['at']} {failure['summarizer']}: {failure['error']}")
    lines.append(
        f"pending Batch jobs: {data['pending_batches']} ({data['pending_batch_folds']} folds)"
    )
    lines.append(PER_PROCESS)
    return "\n".join(lines)


@click.command("compact")
@db_option
@click.option("--idle", default="10m", show_default=True, help="Idle at least this long.")
@click.option("--within", default="7d", show_default=True, help="Active within this long.")
@click.option("--batch", is_flag=True, help="Submit the due folds as one OpenAI Batch job.")
@click.option("--collect", "collect_", is_flag=True, help="Store the results of ended jobs.")
@state_option
@click.option(
    "--summarizer",
    type=click.Choice(["extractive", "openai"]),
    default=None,
    help="Without --batch: openai when OPENAI_API_KEY is set, else extractive.",
)
@click.option("--summarizer-model", default="gpt-4o-mini", show_default=True)
@folding_options
@json_option
@user_errors
def compact(
    db_url: str | None,
    idle: str,
    within: str,
    batch: bool,
    collect_: bool,
    state_path: Path | None,
    summarizer: str | None,
    summarizer_model: str,
    as_json: bool,
    **options: Any,
) -> None:
    """Fold the due spans of conversations idle for --idle: now, or as a Batch job.

    --batch submits them as one OpenAI Batch job (half price, within 24 h);
    --collect stores the summaries of the jobs that have ended. Use the trimming
    options your app uses.
    """
    if batch and collect_:
        raise click.UsageError("use --batch or --collect, not both")
    if (batch or collect_ or summarizer == "openai") and not os.environ.get("OPENAI_API_KEY"):
        raise click.ClickException(
            "the OpenAI summarizer needs OPENAI_API_KEY (and OPENAI_BASE_URL for a "
            "compatible server); or fold locally with --summarizer extractive"
        )
    llm = OpenAISummarizer(summarizer_model)
    chosen: Any = llm if batch or collect_ else summarizer
    with Trimmer(db_url, summarizer=chosen, background=False, **options) as trimmer:
        state = BatchState(state_path or default_state_path())
        if collect_ or batch:
            _batch_command(trimmer, llm, state, idle, within, as_json, collect_)
            return
        conversations = idle_conversations(trimmer, duration(idle), duration(within))
        data = _compact_now(trimmer, conversations)
        emit(
            data,
            as_json,
            f"{data['conversations']} idle conversations: {data['folded']} folded "
            f"({data['failures']} summarizer failures, folded by the extractive fallback)",
        )


def _batch_command(
    trimmer: Trimmer,
    llm: OpenAISummarizer,
    state: BatchState,
    idle: str,
    within: str,
    as_json: bool,
    collecting: bool,
) -> None:
    import openai

    try:
        if collecting:
            done = vars(collect(trimmer, llm, state))
            emit(done, as_json, _collected_text(done))
            return
        conversations = idle_conversations(trimmer, duration(idle), duration(within))
        sent = vars(submit(trimmer, llm, state, conversations))
        emit(sent, as_json, _submitted_text(sent))
    except openai.OpenAIError as error:
        raise click.ClickException(
            f"the Batch API call failed ({type(error).__name__}: {error}); "
            f"the job state in {state.path} is unchanged for this job"
        ) from error


def _compact_now(trimmer: Trimmer, conversations: list[str]) -> dict[str, Any]:
    folded = failures = 0
    for conversation_id in conversations:
        model = last_request_of(trimmer, conversation_id)[2]
        result = trimmer.compact(conversation_id=conversation_id, model=model)
        folded += result.summary_id is not None
        failures += result.failures
    return {"conversations": len(conversations), "folded": folded, "failures": failures}


def _submitted_text(data: dict[str, Any]) -> str:
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(data["skipped"].items()))
    head = (
        f"submitted batch {data['batch_id']}: {data['items']} folds"
        if data["batch_id"]
        else "nothing submitted"
    )
    return f"{head} ({data['conversations']} idle conversations; skipped: {skipped or 'none'})"


def _collected_text(data: dict[str, Any]) -> str:
    return (
        f"{data['finished_batches']} batches collected: {data['stored']} summaries stored, "
        f"{data['failures']} failed and folded by the extractive fallback "
        f"({data['fallbacks']} stored); {data['pending_batches']} still running"
    )
