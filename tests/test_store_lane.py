"""The store lane: async callers' SQLite work on one thread, in order, and never stuck
behind a slow job (a synchronous fold)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from pathlib import Path

import openai
import pytest
from openai_server import FakeOpenAI, Reply

from context_trimmer import StoreError, Trimmer
from context_trimmer._store.lane import StoreLane

REQUEST = contextvars.ContextVar("REQUEST", default="none")


def test_jobs_run_in_order_on_one_thread_with_their_results_and_errors() -> None:
    lane = StoreLane()
    seen: list[tuple[int, str]] = []

    def job(number: int) -> int:
        seen.append((number, threading.current_thread().name))
        return number * 10

    def fails() -> None:
        raise StoreError("the store went away")

    async def main() -> list[int]:
        results = await asyncio.gather(*(lane.run(job, n) for n in range(20)))
        with pytest.raises(StoreError, match="went away"):
            await lane.run(fails)
        return list(results)

    assert asyncio.run(main()) == [n * 10 for n in range(20)]
    assert [number for number, _ in seen] == list(range(20))
    assert {thread for _, thread in seen} == {"ct-store"}


def test_a_job_sees_the_callers_context_variables() -> None:
    lane = StoreLane()

    async def main() -> str:
        REQUEST.set("req-42")
        return await lane.run(REQUEST.get)

    assert asyncio.run(main()) == "req-42"


def test_work_goes_around_a_job_that_holds_the_lane() -> None:
    """A slow job (a fold waiting on its summarizer) holds the lane: the job queued
    behind it and the ones sent after run on the default pool, before it ends."""
    lane = StoreLane(stall=0.05)
    release, slow_started = threading.Event(), threading.Event()

    def slow() -> str:
        slow_started.set()
        assert release.wait(30), "never released"
        return "slow"

    async def main() -> list[str]:
        held = asyncio.ensure_future(lane.run(slow))
        await asyncio.to_thread(slow_started.wait, 30)
        queued = asyncio.ensure_future(lane.run(lambda: "queued"))  # behind the slow one
        while not lane._stalled():
            await asyncio.sleep(0.01)
        later = await asyncio.wait_for(lane.run(lambda: "later"), 30)
        done_while_held = [later, await asyncio.wait_for(queued, 30)]
        assert not held.done()
        release.set()
        return [*done_while_held, await held]

    assert asyncio.run(main()) == ["later", "queued", "slow"]


def test_the_async_wrapper_prepares_and_records_concurrent_calls(tmp_path: Path) -> None:
    """Eight concurrent calls of a wrapped AsyncOpenAI on SQLite: each prepared and
    recorded (stream or not), on the event loop or the lane (see ``test_inline``)."""
    trimmer = Trimmer(f"sqlite:///{tmp_path / 'lane.db'}")

    async def main(base_url: str) -> None:
        client = trimmer.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="k"))
        chat = [{"role": "user", "content": "hello"}]

        async def call(number: int) -> None:
            messages = [*chat, {"role": "user", "content": f"question {number}"}]
            if number % 2:
                await client.chat.completions.create(model="gpt-4o", messages=messages)
                return
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=messages, stream=True
            )
            async for _chunk in stream:
                pass

        await asyncio.gather(*(call(n) for n in range(8)))
        await client.close()

    try:
        with FakeOpenAI(lambda _body: Reply("An answer.")) as server:
            asyncio.run(main(server.base_url))
        totals = trimmer.report().totals
        assert (totals.requests, totals.failed_requests) == (8, 0)
    finally:
        trimmer.close()
