"""Folds as jobs on the PostgreSQL task queue: ``Trimmer(folds="queue")`` defers them,
``context-trimmer worker`` (a separate process, or the same code in-process) runs them.

The summaries come over HTTP from tests/openai_server.py. The PostgreSQL tests skip on
SQLite-only runs; the configuration errors are checked on SQLite.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply
from sqlalchemy import create_engine, text

from context_trimmer import ConfigurationError, OpenAISummarizer, Trimmer
from context_trimmer._jobs.worker import FoldWorker, cron_every, worker_app
from context_trimmer._store.db import Database
from context_trimmer._trimming.queue import FOLD_TASK, QUEUE, QueueDispatch, apply_schema
from context_trimmer.gateway._config import GatewayConfig

SUMMARY = "- The user books a table in Lisbon every day."
FALLBACK = "extractive (fallback for openai:gpt-4o-mini)"
OPTIONS: dict[str, Any] = {
    "keep_last": 4,
    "fold_every": 4,
    "summary_share": None,
    "summary_tokens": 200,
    "recall_tokens": 0,
}
SCRIPT = Path(sys.executable).with_name("context-trimmer")


def turns(n: int, label: str = "") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a travel agent."}]
    for i in range(n):
        messages.append({"role": "user", "content": f"{label}Day {i}: a table for 2 in Lisbon."})
        messages.append({"role": "assistant", "content": f"Booked table {i} at 8pm."})
    return messages


def rows(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql)).all())
    finally:
        engine.dispose()


def summaries(url: str) -> list[Any]:
    return rows(url, "SELECT conversation_id, summarizer, covers_depth FROM ct_summaries")


def waiting_jobs(url: str) -> int:
    sql = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    return int(rows(url, sql)[0][0])


def wait_for_queue(url: str, worker: subprocess.Popen[bytes], log: Path) -> None:
    """Until the worker has run every waiting job (it must stay alive meanwhile)."""
    deadline = time.monotonic() + 300
    while waiting_jobs(url):
        assert worker.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def llm(server: FakeOpenAI) -> OpenAISummarizer:
    return OpenAISummarizer(base_url=server.base_url, api_key="test-key", max_retries=0)


def run_queue_here(url: str, summarizer: Any) -> None:
    """The worker's code in this process: run the jobs waiting now, then return."""
    with Trimmer(url, summarizer=summarizer, background=False, recall_tokens=0) as trimmer:
        worker_app(FoldWorker(trimmer)).run_worker(
            queues=[QUEUE], wait=False, install_signal_handlers=False
        )


def queue_one_fold(url: str, conversation: str = "c1", n: int = 12) -> None:
    """Prepare a conversation with a fold due: its job waits on the queue."""
    with Trimmer(url, folds="queue", summarizer="extractive", **OPTIONS) as trimmer:
        prepared = trimmer.prepare(turns(n), model="gpt-4o", conversation_id=conversation)
        assert prepared.fold_pending
        trimmer.wait_for_background()
    assert waiting_jobs(url) == 1
    assert summaries(url) == []


def job_args(url: str) -> list[dict[str, Any]]:
    return [row[0] for row in rows(url, "SELECT args FROM procrastinate_jobs ORDER BY id")]


# -- configuration ----------------------------------------------------------------------


def test_queue_folds_on_sqlite_are_a_configuration_error(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
        Trimmer(sqlite_url, folds="queue")
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        GatewayConfig(db_url=sqlite_url, folds="queue")
    with pytest.raises(ConfigurationError, match="folds must be one of thread, queue"):
        Trimmer(sqlite_url, folds="celery")
    with Trimmer(sqlite_url) as trimmer:
        assert trimmer.options.folds == "thread"


def test_the_compaction_period_becomes_a_cron_line() -> None:
    assert cron_every(30) == "* * * * * */30"
    assert cron_every(600) == "*/10 * * * *"
    assert cron_every(6 * 3600) == "0 */6 * * *"
    with pytest.raises(ConfigurationError, match="divide"):
        cron_every(7 * 60)


# -- PostgreSQL -------------------------------------------------------------------------


@pytest.fixture
def pg(postgres_schema_url: str) -> str:
    return postgres_schema_url


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=lambda _body: Reply(SUMMARY, prompt_tokens=80)) as fake:
        yield fake


def test_the_queue_schema_is_applied_once_beside_ours(pg: str) -> None:
    with Trimmer(pg, folds="queue"):
        pass
    with Database(pg) as db:
        assert apply_schema(db) is False  # there already: nothing done
        revision = db.revision()
    tables = {row[0] for row in rows(pg, "SELECT tablename FROM pg_tables")}
    assert {"procrastinate_jobs", "context_trimmer_alembic_version"} <= tables
    assert "alembic_version" not in tables  # a host app's Alembic table is not ours to make
    assert revision is not None


def test_a_worker_process_trims_a_40_turn_conversation(
    pg: str, server: FakeOpenAI, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    env = {**os.environ, "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": server.base_url}
    command = [str(SCRIPT), "worker", "--db", pg, "--summarizer", "openai"]
    with log.open("wb") as out:
        worker = subprocess.Popen(command, stderr=out, env=env)
    try:
        with Trimmer(pg, folds="queue", summarizer="extractive", **OPTIONS) as trimmer:
            messages = turns(40)
            for turn in range(1, 41):
                prepared = trimmer.prepare(
                    messages[: 1 + 2 * turn], model="gpt-4o", conversation_id="c40"
                )
                if prepared.fold_pending:
                    trimmer.wait_for_background()  # the job is deferred from there
                    wait_for_queue(pg, worker, log)
            final = trimmer.prepare(messages, model="gpt-4o", conversation_id="c40")
    finally:
        worker.terminate()
        worker.wait(60)
    lines = [line for line in log.read_text().splitlines() if " fold conversation=c40 " in line]
    stored = summaries(pg)
    assert len(stored) >= 5
    assert all(label == "openai:gpt-4o-mini" for _, label, _ in stored)  # by the worker
    assert len(lines) == len(stored) == len(server.requests)
    assert all("outcome=summarized" in line and "summary_tokens=" in line for line in lines)
    assert final.messages_folded > 60
    assert final.prompt_tokens < final.baseline_tokens / 3
    assert SUMMARY in final.messages[1]["content"]
    assert all("Day 0:" not in str(request) for request in server.requests[1:])


def test_the_same_job_twice_folds_once(pg: str, server: FakeOpenAI) -> None:
    queue_one_fold(pg)
    job = job_args(pg)[0]
    assert set(job) == {"head", "user", "conversation", "model", "start", "options"}
    assert "Lisbon" not in str(job)  # identifiers only, never the text
    with Trimmer(pg, summarizer=llm(server), background=False) as trimmer:
        worker = FoldWorker(trimmer)
        first = worker.run(job)
        second = worker.run(job)
    assert first.outcome == "summarized" and first.span.startswith("0-")
    assert first.summary_tokens > 0
    assert second.outcome.startswith("skipped: span already folded")
    assert len(summaries(pg)) == 1 and len(server.requests) == 1


def test_two_workers_do_not_summarize_a_span_twice(pg: str, tmp_path: Path) -> None:
    conversations = [f"w{i}" for i in range(6)]
    with Trimmer(pg, folds="queue", summarizer="extractive", **OPTIONS) as trimmer:
        for conversation in conversations:
            trimmer.prepare(turns(12, conversation), model="gpt-4o", conversation_id=conversation)
        trimmer.wait_for_background()
        dispatch = trimmer._folder.dispatch
        assert isinstance(dispatch, QueueDispatch)
        for job in job_args(pg):  # each job again, free to run beside the first
            dispatch.app.configure_task(FOLD_TASK, queue=QUEUE).defer(**job)
    assert waiting_jobs(pg) == 12
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    slow = FakeOpenAI(default=lambda _body: Reply(SUMMARY, delay=0.3))
    with slow:
        env = {**os.environ, "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": slow.base_url}
        command = [str(SCRIPT), "worker", "--db", pg, "--summarizer", "openai", "--once"]
        workers = []
        for log in logs:
            with log.open("wb") as out:
                workers.append(
                    subprocess.Popen([*command, "--concurrency", "3"], stderr=out, env=env)
                )
        for worker, log in zip(workers, logs, strict=True):
            assert worker.wait(300) == 0, log.read_text()
        requests = len(slow.requests)
    lines = [line for log in logs for line in log.read_text().splitlines() if " fold " in line]
    assert len(lines) == 12
    assert sum("outcome=summarized" in line for line in lines) == 6
    assert sum("outcome=skipped" in line for line in lines) == 6
    stored = summaries(pg)
    assert sorted(conversation for conversation, _, _ in stored) == conversations
    assert requests == 6


def test_a_failing_summarizer_falls_back_to_extractive_in_the_job(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue_one_fold(pg)
    with (
        FakeOpenAI(default=lambda _body: Reply(status=500, error="upstream broke")) as broken,
        caplog.at_level(logging.INFO, logger="context_trimmer.worker"),
    ):
        run_queue_here(pg, llm(broken))
    assert [label for _, label, _ in summaries(pg)] == [
        "extractive (fallback for openai:gpt-4o-mini)"
    ]
    failures = rows(pg, "SELECT summarizer, error FROM ct_summary_failures")
    assert len(failures) == 1 and "upstream broke" in failures[0][1]
    assert rows(pg, "SELECT status FROM procrastinate_jobs") == [("succeeded",)]
    assert any("outcome=fallback" in record.getMessage() for record in caplog.records)


def test_a_429_puts_the_job_back_instead_of_failing_it(pg: str, server: FakeOpenAI) -> None:
    queue_one_fold(pg)
    server.enqueue(Reply(status=429, error="Rate limit reached for requests"))
    summarizer = llm(server)
    run_queue_here(pg, summarizer)
    status = rows(pg, "SELECT status, attempts, scheduled_at > now() FROM procrastinate_jobs")
    assert status == [("todo", 1, True)]  # back on the queue, later
    assert summaries(pg) == [] and rows(pg, "SELECT * FROM ct_summary_failures") == []
    assert summarizer.breaker.status().state == "closed"  # a 429 is not a broken LLM
    _due_now(pg)  # rather than wait for the backoff
    run_queue_here(pg, summarizer)
    assert [label for _, label, _ in summaries(pg)] == ["openai:gpt-4o-mini"]
    assert rows(pg, "SELECT status FROM procrastinate_jobs") == [("succeeded",)]
    assert len(server.requests) == 2


def _due_now(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE procrastinate_jobs SET scheduled_at = now()"))
    engine.dispose()


def test_on_its_last_attempt_a_429_follows_the_failure_policy(pg: str) -> None:
    queue_one_fold(pg)
    job = job_args(pg)[0]
    with (
        FakeOpenAI(default=lambda _body: Reply(status=429, error="slow down")) as limited,
        Trimmer(pg, summarizer=llm(limited), background=False) as trimmer,
    ):
        outcome = FoldWorker(trimmer).run(job, last_attempt=True)
    assert outcome.outcome == "fallback"
    assert [label for _, label, _ in summaries(pg)] == [
        "extractive (fallback for openai:gpt-4o-mini)"
    ]
    assert len(rows(pg, "SELECT * FROM ct_summary_failures")) == 1


def test_the_worker_runs_the_idle_compaction_as_a_periodic_job(pg: str, tmp_path: Path) -> None:
    with Trimmer(pg, background=False, summarizer="extractive", **OPTIONS) as trimmer:
        assert trimmer.prepare(turns(12), model="gpt-4o", conversation_id="idle").fold_pending
    log = tmp_path / "worker.log"
    command = [str(SCRIPT), "worker", "--db", pg, "--summarizer", "extractive"]
    command += ["--compact-every", "1s", "--idle", "0s", "--keep-last", "4", "--fold-every", "4"]
    with log.open("wb") as out:
        worker = subprocess.Popen(command, stderr=out)
    try:
        deadline = time.monotonic() + 300
        while "compact 1 idle conversations: 1 folded" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(60)
    assert [label for _, label, _ in summaries(pg)] == ["extractive"]


def _execute(url: str, sql: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(sql))
    engine.dispose()


def test_a_fold_that_cannot_be_queued_is_logged_and_queued_later(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Trimmer(pg, folds="queue", summarizer="extractive", **OPTIONS) as trimmer:
        _execute(pg, "ALTER TABLE procrastinate_jobs RENAME TO procrastinate_jobs_away")
        with caplog.at_level(logging.ERROR, logger="context_trimmer"):
            prepared = trimmer.prepare(turns(12), model="gpt-4o", conversation_id="c1")
            trimmer.wait_for_background()
        assert prepared.fold_pending  # prepare() answered all the same
        assert "could not queue the fold of conversation c1" in caplog.text
        _execute(pg, "ALTER TABLE procrastinate_jobs_away RENAME TO procrastinate_jobs")
        assert waiting_jobs(pg) == 0
        trimmer.prepare(turns(12), model="gpt-4o", conversation_id="c1")
        trimmer.wait_for_background()
    assert waiting_jobs(pg) == 1


# -- a worker killed mid-fold ----------------------------------------------------------


def doing_jobs(url: str) -> int:
    return int(rows(url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'")[0][0])


def test_a_worker_killed_mid_fold_is_replaced_and_the_folds_finish(pg: str, tmp_path: Path) -> None:
    """kill -9 on a worker while it folds two conversations (its summarizer stalls):
    a new worker takes both over and finishes every fold of both within 60 s, among
    them a later job of one conversation queued behind the stalled one. Each span is
    summarized once (the leases of the dead worker's jobs are dropped, not shared)."""
    stalled = [True]

    def reply(_body: dict[str, Any]) -> Reply:
        return Reply(SUMMARY, delay=600 if stalled[0] else 0)

    with Trimmer(pg, folds="queue", summarizer="extractive", **OPTIONS) as trimmer:
        for conversation in ("k1", "k2"):
            prepared = trimmer.prepare(
                turns(12, conversation), model="gpt-4o", conversation_id=conversation
            )
            assert prepared.fold_pending
        trimmer.wait_for_background()
    assert waiting_jobs(pg) == 2
    with FakeOpenAI(default=reply) as slow:
        env = {**os.environ, "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": slow.base_url}
        command = [str(SCRIPT), "worker", "--db", pg, "--summarizer", "openai"]
        first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
        with first_log.open("wb") as out:
            first = subprocess.Popen([*command, "--concurrency", "2"], stderr=out, env=env)
        second = None
        try:
            deadline = time.monotonic() + 120
            while len(slow.requests) < 2 or doing_jobs(pg) < 2:  # both folds in the LLM
                assert first.poll() is None, first_log.read_text()
                assert time.monotonic() < deadline, first_log.read_text()
                time.sleep(0.1)
            first.kill()  # SIGKILL: no goodbye, its jobs stay "doing", its leases held
            first.wait(30)
            stalled[0] = False
            with Trimmer(pg, folds="queue", summarizer="extractive", **OPTIONS) as trimmer:
                trimmer.prepare(turns(16, "k2"), model="gpt-4o", conversation_id="k2")
                trimmer.wait_for_background()
            assert waiting_jobs(pg) == 3  # two stalled, one queued behind k2's
            killed = time.monotonic()
            with second_log.open("wb") as out:
                second = subprocess.Popen(command, stderr=out, env=env)
            while waiting_jobs(pg):
                assert second.poll() is None, second_log.read_text()
                assert time.monotonic() - killed < 60, second_log.read_text()
                time.sleep(0.2)
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(60)
    text_ = second_log.read_text()
    assert "stalled job" in text_, text_
    stored = summaries(pg)
    assert {conversation for conversation, _, _ in stored} == {"k1", "k2"}
    assert all(label == "openai:gpt-4o-mini" for _, label, _ in stored)
    spans = [(conversation, depth) for conversation, _, depth in stored]
    assert len(spans) == len(set(spans))  # no span summarized twice
    assert rows(pg, "SELECT count(*) FROM ct_leases")[0][0] == 0
