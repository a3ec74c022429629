"""Several app servers on one PostgreSQL: no span summarized twice, no message lost."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply
from sqlalchemy import func, select
from warm_workers import warm_workers

from context_trimmer import OpenAISummarizer, Trimmer
from context_trimmer._store.history import MESSAGES
from context_trimmer._store.summaries import SUMMARIES


def conversation() -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You help."}]
    for turn in range(12):
        messages += [
            {"role": "user", "content": f"Fact {turn}: Ana paid {turn * 10} euros."},
            {"role": "assistant", "content": f"Saved fact {turn}."},
        ]
    return messages


def app_server(url: str, base_url: str, start: Any, suffix: str) -> tuple[int, str]:
    summarizer = OpenAISummarizer(base_url=base_url, api_key="k", max_retries=0)
    with Trimmer(
        url,
        keep_last=4,
        fold_every=2,
        summarizer=summarizer,
        summary_share=None,  # a fixed budget: the span is due at once, whatever its size
        background=False,
    ) as trimmer:
        messages = conversation()
        start.wait()
        trimmer.prepare(messages)
        result = trimmer.compact(messages)
        trimmer.prepare([*messages, {"role": "user", "content": f"new from {suffix}"}])
        return (result.summary_id or 0), result.reason


@pytest.fixture
def slow_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=lambda _b: Reply("- Ana paid for facts 0 to 7.", delay=1.0)) as s:
        yield s


def test_two_processes_never_summarize_the_same_span(
    postgres_schema_url: str, slow_server: FakeOpenAI
) -> None:
    Trimmer(postgres_schema_url, summarizer="extractive").close()  # migrate once
    context = warm_workers()
    with context.Manager() as manager:
        start = manager.Barrier(3)
        with context.Pool(3) as pool:
            runs = [
                pool.apply_async(
                    app_server, (postgres_schema_url, slow_server.base_url, start, f"p{i}")
                )
                for i in range(3)
            ]
            results = [run.get(timeout=60) for run in runs]
    assert sum(1 for summary_id, _ in results if summary_id) == 1
    assert len(slow_server.requests) == 1
    with (
        Trimmer(postgres_schema_url, summarizer="extractive") as trimmer,
        trimmer._db.engine.connect() as connection,
    ):
        assert connection.execute(select(func.count()).select_from(SUMMARIES)).scalar() == 1
        stored = connection.execute(select(func.count()).select_from(MESSAGES)).scalar()
    assert stored == len(conversation()) + 3
