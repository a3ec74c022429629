"""Folds of idle conversations through OpenAI's Batch API: half price, done within 24 h.

``submit``: the conversations whose last prepared request is older than ``idle`` (and
newer than ``within``) are planned as ``compact()`` would plan them; their due folds go
out as one JSONL of chat requests (``custom_id`` = ``fold-<covered hash>``) uploaded to
``/v1/files`` (purpose ``batch``), then one ``/v1/batches`` job (``completion_window``
24h). ``collect``: every job that has ended is downloaded; each answer is checked and
cut to its budget like any summary and stored; a failed or missing answer is recorded
as a failure and the extractive summarizer folds that span instead.

The job state is a small JSON file (``--state``; by default ``batches.json`` next to
the default SQLite store), not a table: ``{"batches": {id: {"submitted_at", "items":
{custom_id: item}}}}``, where each item holds the summary row it will become and its
request (previous summary, transcript, budget, model), so collecting needs nothing
else. It is written atomically (temporary file, then rename); collect where you
submitted, or put the file on shared storage. A span in a pending job is not
submitted again. Summaries are content-addressed by the hash of the last message they
cover, so a fold whose conversation moved on meanwhile is still valid, and one whose
span was summarized meanwhile is dropped by the idempotent insert.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from .._exceptions import ConfigurationError, SummarizerError
from .._store.db import as_utc, default_db_path
from .._store.ledger import REQUESTS
from .._store.summaries import Summaries
from .._text.tokens import counter_for
from .._trimmer import Trimmer
from .._trimming.extractive import ExtractiveSummarizer
from .._trimming.folding import FoldPlan, failure_row, fallback_label
from .._trimming.path import deepest_summary, load_bodies, start_of
from .._trimming.path import store as store_path
from .._trimming.plan import fold_due
from .._trimming.summarizers import (
    OpenAISummarizer,
    SummaryRequest,
    SummaryResult,
    accepted,
    fold,
    formatted,
)

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


def default_state_path() -> Path:
    """``batches.json`` next to the default SQLite store."""
    return default_db_path().with_name("batches.json")


@dataclass
class Submitted:
    """What ``submit`` did: the job (None when nothing was due) and what it holds."""

    batch_id: str | None = None
    items: int = 0
    conversations: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class Collected:
    """What ``collect`` did: summaries stored from answers and by the fallback."""

    stored: int = 0
    fallbacks: int = 0
    failures: int = 0
    finished_batches: int = 0
    pending_batches: int = 0


class BatchState:
    """The pending jobs, kept in a JSON file."""

    def __init__(self, path: Path):
        self.path = path
        self.batches: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                self.batches = dict(json.loads(path.read_text("utf-8"))["batches"])
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ConfigurationError(f"{path}: not a batch state file ({error})") from error

    def pending_ids(self) -> set[str]:
        return {custom_id for job in self.batches.values() for custom_id in job["items"]}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({"batches": self.batches}, indent=1), "utf-8")
        os.replace(temporary, self.path)


def idle_conversations(
    trimmer: Trimmer, idle: timedelta, within: timedelta, now: datetime | None = None
) -> list[str]:
    """Conversations whose last prepared request is older than ``idle``, newer than
    ``within``."""
    now = now or datetime.now(timezone.utc)
    c = REQUESTS.c
    with trimmer._db.reading() as connection:
        rows = connection.execute(
            select(c.conversation_id, func.max(c.created_at).label("last"))
            .where(c.created_at >= now - within)
            .group_by(c.conversation_id)
        ).all()
    return sorted(row.conversation_id for row in rows if as_utc(row.last) < now - idle)


def last_request(trimmer: Trimmer, conversation_id: str) -> tuple[str, str | None, str]:
    """The head hash, user and model of a conversation's last prepared request."""
    c = REQUESTS.c
    with trimmer._db.reading() as connection:
        row = connection.execute(
            select(c.head_hash, c.user, c.model)
            .where(c.conversation_id == conversation_id)
            .order_by(c.id.desc())
            .limit(1)
        ).one()
    return row.head_hash, row.user, row.model


def due_plan(trimmer: Trimmer, conversation_id: str) -> tuple[FoldPlan | None, str]:
    """The fold ``compact()`` would run now for this conversation, with its model."""
    head, user, model = last_request(trimmer, conversation_id)
    with trimmer._db.reading() as connection:
        messages = load_bodies(connection, head)
    path = trimmer._path(messages, model, user, conversation_id)
    with trimmer._db.writing() as connection:
        stored = store_path(connection, path)
        start = start_of(deepest_summary(connection, trimmer._summaries, stored))
    folder = trimmer._folder
    if not fold_due(stored, start, folder.tail_tokens(stored, start), trimmer.options):
        return None, model
    plan = folder.plan(stored, keep_last=trimmer.options.keep_last)
    return (None if isinstance(plan, str) else plan), model


def submit(
    trimmer: Trimmer,
    summarizer: OpenAISummarizer,
    state: BatchState,
    conversations: list[str],
) -> Submitted:
    """One Batch job with the due folds of ``conversations``, remembered in ``state``."""
    result = Submitted(conversations=len(conversations))
    pending = state.pending_ids()
    items: dict[str, dict[str, Any]] = {}
    lines = []
    for conversation_id in conversations:
        plan, model = due_plan(trimmer, conversation_id)
        reason = _skip_reason(plan, summarizer, pending | set(items))
        if reason:
            result.skipped[reason] = result.skipped.get(reason, 0) + 1
            continue
        assert plan is not None
        custom_id = _custom_id(plan)
        items[custom_id] = _item(plan, model)
        body = summarizer.request_body(plan.request)
        line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
        lines.append(json.dumps({**line, "body": body}))
    if not items:
        return result
    client = summarizer.chat.client
    upload = client.files.create(
        file=("context-trimmer-folds.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    state.batches[batch.id] = {
        "submitted_at": datetime.now(timezone.utc).isoformat(),
        "summarizer": summarizer.name,
        "prompt_version": summarizer.prompt_version,
        "items": items,
    }
    state.save()
    result.batch_id, result.items = batch.id, len(items)
    return result


def _skip_reason(plan: FoldPlan | None, summarizer: OpenAISummarizer, pending: set[str]) -> str:
    if plan is None:
        return "no fold due"
    if _custom_id(plan) in pending:
        return "already in a pending batch"
    if plan.request.count_tokens(plan.request.transcript) > summarizer.input_tokens:
        return "too large for one request (fold it without --batch)"
    return ""


def _custom_id(plan: FoldPlan) -> str:
    return f"fold-{plan.row()['covers_hash']}"


def _item(plan: FoldPlan, model: str) -> dict[str, Any]:
    request = plan.request
    return {
        "row": plan.row(),
        "model": model,
        "previous": request.previous,
        "transcript": request.transcript,
        "budget": request.budget,
    }


def collect(trimmer: Trimmer, summarizer: OpenAISummarizer, state: BatchState) -> Collected:
    """Store the summaries of every ended job in ``state``, then forget the job."""
    result = Collected()
    client = summarizer.chat.client
    summaries = Summaries(trimmer._db)
    for batch_id, job in list(state.batches.items()):
        batch = client.batches.retrieve(batch_id)
        if batch.status not in ENDED:
            result.pending_batches += 1
            continue
        answers = dict(_answers(client, batch.output_file_id, batch.error_file_id))
        for custom_id, item in job["items"].items():
            answer = answers.get(custom_id) or SummarizerError(
                f"the batch ended ({batch.status}) without an answer for this fold"
            )
            _store(summaries, job, item, answer, result)
        del state.batches[batch_id]
        state.save()
        result.finished_batches += 1
    return result


def _answers(
    client: Any, *file_ids: str | None
) -> Iterator[tuple[str, SummaryResult | SummarizerError]]:
    for file_id in file_ids:
        if not file_id:
            continue
        for line in client.files.content(file_id).text.splitlines():
            if line.strip():
                record = json.loads(line)
                yield record["custom_id"], _answer(record)


def _answer(record: Mapping[str, Any]) -> SummaryResult | SummarizerError:
    response = record.get("response") or {}
    body = response.get("body") or {}
    if record.get("error") or response.get("status_code") != 200:
        problem = record.get("error") or body.get("error") or response.get("status_code")
        return SummarizerError(f"the batch answered with an error: {problem}")
    try:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return SummaryResult(
            choice["message"]["content"] or "",
            usage.get("prompt_tokens", 0),
            usage.get("completion_tokens", 0),
            choice.get("finish_reason") == "length",
        )
    except (KeyError, IndexError, TypeError) as error:
        return SummarizerError(f"the batch answer is not a chat completion ({error!r})")


def _store(
    summaries: Summaries,
    job: Mapping[str, Any],
    item: Mapping[str, Any],
    answer: SummaryResult | SummarizerError,
    result: Collected,
) -> None:
    """Store one answer as a summary, or the extractive fold of its span instead."""
    request = SummaryRequest(
        item["previous"], item["transcript"], item["budget"], counter_for(item["model"]).text
    )
    row, name = item["row"], job["summarizer"]
    try:
        if isinstance(answer, SummarizerError):
            raise answer
        spent = answer.tokens_in, answer.tokens_out
        text = accepted(replace(answer, text=formatted(answer.text, *spent)), request, *spent)
        values = {"text": text, "summarizer": f"{name} (batch)", "tokens_in": answer.tokens_in}
        values.update(prompt_version=job["prompt_version"], tokens_out=answer.tokens_out)
        result.stored += summaries.add({**row, **values}) is not None
    except SummarizerError as error:
        result.failures += 1
        summaries.add_failure(failure_row(row, f"{name} (batch)", error))
        local = ExtractiveSummarizer()
        folded = fold(local, request)
        values = {"text": folded.text, "summarizer": fallback_label(name), "tokens_in": 0}
        values.update(prompt_version=local.prompt_version, tokens_out=0)
        result.fallbacks += summaries.add({**row, **values}) is not None
