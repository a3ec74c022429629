"""``context-trimmer worker``: runs the folds that ``Trimmer(folds="queue")`` and
``serve --folds queue`` put on the PostgreSQL task queue (``_trimming.queue``), on any number of
hosts, and optionally the idle compaction (``compact``) as a periodic job.

It chooses its summarizer as ``compact`` does (``--summarizer``, ``--summarizer-model``,
``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``); the trimming options of each fold travel
in its job. It logs one line per fold to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .._jobs.batch import BatchState, collect, default_state_path, idle_conversations, submit
from .._jobs.worker import FoldWorker, add_compaction, run_worker, worker_app
from .._trimmer import Trimmer
from .._trimming.summarizers import OpenAISummarizer
from ._common import db_option, duration, folding_options, user_errors
from ._folds import _collected_text, _compact_now, _submitted_text, state_option


@click.command("worker")
@db_option
@click.option("--concurrency", default=1, show_default=True, help="Folds run at once.")
@click.option(
    "--summarizer",
    type=click.Choice(["extractive", "openai"]),
    default=None,
    help="Who writes the summaries: openai when OPENAI_API_KEY is set, else extractive.",
)
@click.option("--summarizer-model", default="gpt-4o-mini", show_default=True)
@click.option("--once", is_flag=True, help="Run the jobs waiting now, then exit.")
@click.option(
    "--compact-every",
    default=None,
    help="Also run `compact` this often (30s, 10m, 6h), on one worker of all.",
)
@click.option("--idle", default="10m", show_default=True, help="With --compact-every.")
@click.option("--within", default="7d", show_default=True, help="With --compact-every.")
@click.option("--batch", is_flag=True, help="With --compact-every: collect, then submit a Batch.")
@state_option
@folding_options
@user_errors
def worker(
    db_url: str | None,
    concurrency: int,
    summarizer: str | None,
    summarizer_model: str,
    once: bool,
    compact_every: str | None,
    idle: str,
    within: str,
    batch: bool,
    state_path: Path | None,
    **options: Any,
) -> None:
    """Run the folds queued by Trimmer(folds="queue") or `serve --folds queue`.

    Start as many as you like, on any hosts, against the same PostgreSQL: each fold
    runs once, under the fold lease. One log line per fold.
    """
    if concurrency < 1:
        raise click.BadParameter("must be at least 1", param_hint="--concurrency")
    chosen = _summarizer(summarizer, summarizer_model, batch)
    _log_to_stderr()
    with Trimmer(db_url, summarizer=chosen, background=False, recall_tokens=0, **options) as trim:
        folds = FoldWorker(trim)
        app = worker_app(folds)
        if compact_every is not None:
            state = BatchState(state_path or default_state_path())
            work = _compaction(trim, idle, within, state, summarizer_model if batch else None)
            add_compaction(app, duration(compact_every).total_seconds(), work)
        click.echo(
            f"context-trimmer worker on {trim.url}: {trim.summarizer.name}, "
            f"concurrency {concurrency}",
            err=True,
        )
        run_worker(app, folds, concurrency=concurrency, wait=not once)


def _summarizer(summarizer: str | None, model: str, batch: bool) -> Any:
    has_key = bool(os.environ.get("OPENAI_API_KEY"))
    if (batch or summarizer == "openai") and not has_key:
        raise click.ClickException(
            "the OpenAI summarizer needs OPENAI_API_KEY (and OPENAI_BASE_URL for a "
            "compatible server); or fold locally with --summarizer extractive"
        )
    if summarizer == "openai" or (summarizer is None and has_key):
        return OpenAISummarizer(model)
    return "extractive"


def _compaction(
    trimmer: Trimmer, idle: str, within: str, state: BatchState, batch_model: str | None
) -> Callable[[], str]:
    """What each compaction tick does: fold idle conversations now, or (``--batch``)
    collect the ended Batch jobs, then submit the due folds as a new one."""

    def compact() -> str:
        conversations = idle_conversations(trimmer, duration(idle), duration(within))
        if batch_model is None:
            data = _compact_now(trimmer, conversations)
            return f"{data['conversations']} idle conversations: {data['folded']} folded"
        llm = OpenAISummarizer(batch_model)
        try:
            collected = _collected_text(vars(collect(trimmer, llm, state)))
            submitted = _submitted_text(vars(submit(trimmer, llm, state, conversations)))
            return f"{collected}; {submitted}"
        finally:
            llm.close()

    return compact


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("context_trimmer.worker")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
