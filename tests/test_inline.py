"""Async callers' SQLite work runs on the event loop itself unless it would wait: then
it goes to the store's lane, and the loop keeps serving (see ``_inline``).

Each way of waiting is really caused: another process holding the SQLite write lock,
another thread in a write transaction, a prepare() that must fold (a summarizer that
takes its time), a long new history, the app's own prompt compression, bookkeeping
that fails."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai_server import FakeOpenAI, Reply

from context_trimmer import (
    PromptTooLargeError,
    StoreError,
    SummaryRequest,
    SummaryResult,
    Trimmer,
    UserQuota,
)
from context_trimmer._client.failopen import keep_books
from context_trimmer._inline import MAX_NEW_MESSAGES
from context_trimmer._store.db import CHECKPOINT_EVERY, Database
from context_trimmer._text.encodings import get_encoding

LOOP_STALL = 0.5  # the longest the loop may go without running a ready coroutine
HELD = 1.0  # how long each injected wait lasts


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database(f"sqlite:///{tmp_path / 'inline.db'}") as database:
        yield database


def where() -> str:
    return threading.current_thread().name


async def longest_stall(work: Any) -> tuple[Any, float]:
    """``work``'s result, and the longest gap the event loop showed meanwhile."""
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.02)
    try:
        result = await work
    finally:
        ticker.cancel()
    return result, max(gaps)


def write_while_held(db: Database, release: Callable[[], None]) -> tuple[str, float]:
    """An async caller's write while the lock is held, ``release`` called after HELD
    seconds: the thread it ran on, and the event loop's longest stall meanwhile."""

    def write() -> str:
        with db.writing():
            return where()

    async def main() -> tuple[str, float]:
        asyncio.get_running_loop().call_later(HELD, release)
        return await longest_stall(db.offload(write))

    return asyncio.run(main())


def test_quick_work_runs_on_the_loop_and_writes(db: Database) -> None:
    def write() -> str:
        with db.writing() as connection:
            connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
        return where()

    assert asyncio.run(db.offload(write)) == threading.current_thread().name
    with db.reading() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1


def test_another_process_holding_the_write_lock_sends_the_work_to_the_lane(
    db: Database,
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.readline()",
            str(db.engine.url.database),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "locked"
    try:
        thread, stall = write_while_held(db, holder.stdin.close)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert thread == "ct-store"  # waited there for the lock
    assert stall < LOOP_STALL


def test_another_thread_writing_sends_the_work_to_the_lane(db: Database) -> None:
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.writing():
            inside.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    try:
        thread, stall = write_while_held(db, release.set)
    finally:
        release.set()
        holder.join()
    assert thread == "ct-store"
    assert stall < LOOP_STALL


def test_bookkeeping_that_fails_is_retried_on_the_lane(db: Database) -> None:
    """A failed step is retried after a pause: never on the loop."""
    tries: list[str] = []

    def step() -> None:
        tries.append(where())
        if len(tries) == 1:
            raise StoreError("the store went away for a moment")

    _, stall = asyncio.run(longest_stall(db.offload(keep_books, 1, [("usage", step)])))
    assert tries[0] == threading.current_thread().name
    assert tries[1:] == ["ct-store"]  # the lane's keep_books: once, then it worked
    assert stall < LOOP_STALL


class Recording:
    """A summarizer that notes where it ran, and takes its time."""

    name, prompt_version, input_tokens = "recording", "1", 100_000

    def __init__(self) -> None:
        self.threads: list[str] = []

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        self.threads.append(where())
        time.sleep(HELD)
        return SummaryResult("- The user asked many questions.")


def chat(turns: int, words: int = 5) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for turn in range(turns):
        messages += [
            {"role": "user", "content": f"question {turn} " + "why " * words},
            {"role": "assistant", "content": f"answer {turn} " + "because " * words},
        ]
    return messages


def run_wrapped(trimmer: Trimmer, calls: list[list[dict[str, Any]]]) -> float:
    """Send each list through a wrapped AsyncOpenAI; the loop's longest stall."""

    async def main(base_url: str) -> float:
        client = trimmer.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="k"))

        async def send_all() -> None:
            for messages in calls:
                await client.chat.completions.create(model="gpt-4o", messages=messages)

        _, stall = await longest_stall(send_all())
        await client.close()
        return stall

    with FakeOpenAI(lambda _body: Reply("An answer.")) as server:
        return asyncio.run(main(server.base_url))


def test_a_prepare_that_must_fold_folds_on_the_lane(tmp_path: Path) -> None:
    """The conversation grows a turn a call (two new messages: quick to store) until it
    is over the hard limit: the fold is made on the lane, the loop never waits for it."""
    summarizer = Recording()
    get_encoding("o200k_base")  # loaded: its first load holds the GIL, wherever it runs
    with Trimmer(
        f"sqlite:///{tmp_path / 'fold.db'}",
        keep_last=4,
        summarizer=summarizer,
        max_prompt_tokens=500,
        background=False,
    ) as trimmer:
        calls = [
            [*chat(turns, words=20), {"role": "user", "content": "so?"}] for turns in range(12)
        ]
        stall = run_wrapped(trimmer, calls)
        assert summarizer.threads  # it folded (HELD seconds a call) ...
        assert stall < LOOP_STALL  # ... while the loop kept running
        totals = trimmer.report().totals
        assert (totals.requests, totals.failed_requests) == (12, 0)


def test_the_apps_prompt_compression_runs_on_the_lane(tmp_path: Path) -> None:
    compressed: list[str] = []

    def compress(text: str) -> str:  # may take its time: notes where it ran
        compressed.append(where())
        return text.strip()

    with Trimmer(f"sqlite:///{tmp_path / 'prompt.db'}", system_prompt=compress) as trimmer:
        run_wrapped(trimmer, [chat(1), chat(2)])
        assert compressed == ["ct-store"]  # once per prompt, and not on the loop
        assert trimmer.report().totals.requests == 2


def test_a_long_new_history_is_stored_on_the_lane(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'long.db'}"
    history = chat(MAX_NEW_MESSAGES)  # 2 * 16 + 1 messages, all new

    def prepare(messages: list[dict[str, Any]]) -> str:
        trimmer.prepare(messages)
        return where()

    with Trimmer(url, background=False) as trimmer, Database(url) as db:  # no fold writing
        assert asyncio.run(db.offload(prepare, history)) == "ct-store"
        grown = [*history, {"role": "user", "content": "and?"}]  # one new message
        assert asyncio.run(db.offload(prepare, grown)) == threading.current_thread().name
        assert trimmer.report().totals.requests == 2


def test_the_first_use_of_an_encoding_loads_it_on_the_lane(db: Database) -> None:
    def count() -> str:
        assert get_encoding("o200k_base").encode_ordinary("hello") == [24912]
        return where()

    get_encoding.cache_clear()  # as in a new process: 0.4 to 0.8 s to load
    assert asyncio.run(db.offload(count)) == "ct-store"
    assert asyncio.run(db.offload(count)) == threading.current_thread().name  # loaded


def where_prepared(url: str, messages: list[dict[str, Any]], **options: Any) -> str:
    """The thread an async caller's prepare() of ``messages`` ran on."""
    get_encoding("o200k_base")  # loaded: not the reason to leave the loop
    with Trimmer(url, background=False, **options) as trimmer, Database(url) as db:

        def prepare() -> str:
            trimmer.prepare(messages)
            return where()

        return asyncio.run(db.offload(prepare))


def test_a_history_seen_but_never_stored_is_stored_on_the_lane(tmp_path: Path) -> None:
    """A call refused before storing (its newest turn too large) leaves the history
    hashed in memory, not stored: the retry stores all of it, off the loop."""
    url = f"sqlite:///{tmp_path / 'seen.db'}"
    history = chat(MAX_NEW_MESSAGES)
    huge = {"role": "user", "content": "word " * 3000}
    with Trimmer(url, background=False, max_prompt_tokens=2000) as trimmer, Database(url) as db:
        with pytest.raises(PromptTooLargeError):
            trimmer.prepare([*history, huge])

        def prepare() -> str:
            trimmer.prepare([*history, {"role": "user", "content": "shorter"}])
            return where()

        assert asyncio.run(db.offload(prepare)) == "ct-store"


def test_an_image_or_a_long_turn_is_handled_on_the_lane(tmp_path: Path) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    pictured = [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}]
    assert where_prepared(f"sqlite:///{tmp_path / 'image.db'}", pictured) == "ct-store"
    long_turn = [{"role": "user", "content": "word " * 600}]  # counted: near the limit
    url = f"sqlite:///{tmp_path / 'turn.db'}"
    assert where_prepared(url, long_turn, max_prompt_tokens=2000) == "ct-store"
    short = [{"role": "user", "content": "word " * 60}]
    here = threading.current_thread().name
    assert where_prepared(url, short, max_prompt_tokens=2000) == here


def test_a_quota_being_written_after_prepare_never_records_it_twice(tmp_path: Path) -> None:
    """prepare() ran inline and recorded the request; then the quota's write would wait
    (another thread took the lock just then): the quota is taken on the lane, and the
    request is recorded once, not prepared again."""
    url = f"sqlite:///{tmp_path / 'quota.db'}"
    release = threading.Event()
    get_encoding("o200k_base")  # loaded, so that prepare() runs inline
    with Trimmer(url, background=False) as trimmer, Database(url) as other:

        def hold() -> None:
            with other.writing():
                held.set()
                release.wait(30)

        held = threading.Event()

        def prepare_then_lock(**arguments: Any) -> Any:
            prepared = trimmer.prepare(**arguments)
            threading.Thread(target=hold).start()  # the lock is taken right after
            assert held.wait(10)
            threading.Timer(HELD, release.set).start()
            return prepared

        async def main(base_url: str) -> str:
            client = trimmer.wrap(
                openai.AsyncOpenAI(base_url=base_url, api_key="k"),
                user_quota=UserQuota(tokens_per_minute=1_000_000),
            )
            client._context_trimmer.prepare = prepare_then_lock  # type: ignore[attr-defined]
            answer, stall = await longest_stall(
                client.chat.completions.create(model="gpt-4o", messages=chat(1), user="ana")
            )
            assert stall < LOOP_STALL
            await client.close()
            return str(answer.choices[0].message.content)

        try:
            with FakeOpenAI(lambda _body: Reply("An answer.")) as server:
                assert asyncio.run(main(server.base_url)) == "An answer."
        finally:
            release.set()
        totals = trimmer.report().totals
        assert (totals.requests, totals.failed_requests) == (1, 0)


def test_inline_and_lane_work_keep_every_write(tmp_path: Path) -> None:
    """Thirty concurrent calls, some inline, some sent to the lane by a writer thread
    that keeps taking the lock: every request and its usage is recorded once."""
    stop = threading.Event()
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    with Trimmer(url) as trimmer, Database(url) as other:

        def churn() -> None:
            while not stop.is_set():
                with other.writing():
                    time.sleep(0.002)

        writer = threading.Thread(target=churn)
        writer.start()

        async def main(base_url: str) -> None:
            client = trimmer.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="k"))
            await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="gpt-4o", messages=[*chat(2), {"role": "user", "content": f"q{n}"}]
                    )
                    for n in range(30)
                )
            )
            await client.close()

        try:
            with FakeOpenAI(lambda _body: Reply("An answer.")) as server:
                asyncio.run(main(server.base_url))
        finally:
            stop.set()
            writer.join()
        totals = trimmer.report().totals
        assert (totals.requests, totals.failed_requests) == (30, 0)


def test_the_wal_is_checkpointed_every_so_many_commits_inline_or_not(db: Database) -> None:
    """SQLite's own auto-checkpoint (inside a commit: on the loop, inline) is off; the
    store checkpoints every CHECKPOINT_EVERY commits, on the lane for inline work."""
    database_file = Path(str(db.engine.url.database))

    def write() -> None:
        with db.writing() as connection:
            connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x BLOB)")
            connection.exec_driver_sql("INSERT INTO t VALUES (randomblob(20000))")

    async def inline(count: int) -> None:
        for _ in range(count):
            await db.offload(write)
        await asyncio.gather(*db._tasks)  # the checkpoint handed to the lane

    for _ in range(CHECKPOINT_EVERY):  # to just past a checkpoint
        write()
        if database_file.stat().st_size > 100 * 20000:
            break
    size = database_file.stat().st_size
    for _ in range(CHECKPOINT_EVERY - 1):
        write()
    assert database_file.stat().st_size == size  # every page still in the WAL
    write()
    assert database_file.stat().st_size > size + 100 * 20000  # checkpointed
    size = database_file.stat().st_size
    asyncio.run(inline(CHECKPOINT_EVERY - 1))
    assert database_file.stat().st_size == size
    asyncio.run(inline(1))
    assert database_file.stat().st_size > size + 100 * 20000
