"""Faults injected for real: broken SQLite files and paths, and a PostgreSQL server of
the test's own that is stopped, restarted and frozen (SIGSTOP). Each fault must reach
the caller as StoreError (never a driver's or the OS's error) and everything must work
again once the database is back.

Waits are checked for liveness only (a generous bound on a worker thread, so a hang
fails the test instead of stalling the suite); their speed belongs in benchmarks/.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from openai_server import FakeOpenAI, Reply
from pg_server import PgServer, free_port, fresh_schema_url, own_server
from sqlalchemy import text

from context_trimmer import StoreError, Trimmer, UserQuota
from context_trimmer._store.history import token_rows

T = TypeVar("T")
HANG = 90.0  # seconds: far beyond any bounded wait below; reaching it means a hang


def chat(text_: str = "Hello there") -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text_}]


def finishes(work: Callable[[], T]) -> T:
    """``work()`` on a thread; fails the test if it is still waiting after HANG seconds."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG)
    assert not worker.is_alive(), f"still waiting after {HANG} s: the wait is not bounded"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def back_within(seconds: float, work: Callable[[], T]) -> T:
    """``work()`` once the store answers again: a store that timed out fails fast until
    its background probe reaches it (about a second after it is back)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return finishes(work)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def store_error(work: Callable[[], Any]) -> StoreError:
    with pytest.raises(StoreError) as caught:
        finishes(work)
    return caught.value


# -- SQLite ---------------------------------------------------------------------------


def test_parent_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("not a folder")
    url = f"sqlite:///{tmp_path / 'plain-file' / 'history.db'}"
    error = store_error(lambda: Trimmer(url))
    assert "plain-file" in str(error) and "folder" in str(error)
    assert error.url is not None and error.url.startswith("sqlite:///")


def test_uncreatable_folder() -> None:
    url = "sqlite:////proc/context-trimmer-test/history.db"
    error = store_error(lambda: Trimmer(url))
    assert "/proc/context-trimmer-test" in str(error)


def test_database_path_is_a_folder(tmp_path: Path) -> None:
    error = store_error(lambda: Trimmer(f"sqlite:///{tmp_path}"))
    assert "Check that" in str(error)


def test_corrupt_file_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"this is not an SQLite database, just bytes\n" * 200)
    url = f"sqlite:///{path}"
    error = store_error(lambda: Trimmer(url))
    assert "not a database" in str(error) and "corrupt" in str(error)
    path.unlink()
    with Trimmer(url, summarizer="extractive", background=False) as trimmer:
        assert trimmer.prepare(chat()).request_id > 0


def test_file_corrupted_while_open_then_restored(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    url = f"sqlite:///{path}"
    with Trimmer(url, summarizer="extractive", background=False) as trimmer:
        trimmer.prepare(chat())
        trimmer.close()
        good = path.read_bytes()
        path.write_bytes(b"\0garbage" * (len(good) // 8))
        store_error(lambda: trimmer.prepare(chat("Again")))
        trimmer._db.close()
        path.write_bytes(good)
        assert trimmer.prepare(chat("Again")).request_id > 0


def test_read_only_database_then_writable_again(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with Trimmer(f"sqlite:///{path}", summarizer="extractive", background=False) as trimmer:
        trimmer.prepare(chat())
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"
    with Trimmer(read_only, summarizer="extractive", background=False) as trimmer:
        error = store_error(lambda: trimmer.prepare(chat("A new question")))
        assert "readonly" in str(error) and "writable" in str(error)
        assert len(trimmer.report().requests) == 1  # reading still works
    with Trimmer(f"sqlite:///{path}", summarizer="extractive", background=False) as trimmer:
        assert trimmer.prepare(chat("A new question")).request_id == 2


def test_unreachable_server_never_shows_the_password() -> None:
    url = f"postgresql+psycopg://app:s3cret-pw@127.0.0.1:{free_port()}/store"
    error = store_error(lambda: Trimmer(url, store_timeout=2))
    assert "s3cret-pw" not in str(error) and "s3cret-pw" not in (error.url or "")
    assert "app:***@127.0.0.1" in str(error)
    assert "server is running" in str(error)


# -- a PostgreSQL server of this test's own -------------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PgServer]:
    yield from own_server()


@pytest.fixture
def pg(own_postgres: PgServer) -> Iterator[PgServer]:
    """The server, running and thawed again after each test whatever it did."""
    yield own_postgres
    own_postgres.thaw()
    if not (own_postgres.directory / "postmaster.pid").exists():
        own_postgres.start()


@pytest.fixture
def pg_url(pg: PgServer) -> str:
    """A URL on the test's own server whose connections use a fresh, empty schema."""
    return fresh_schema_url(pg)


@pytest.fixture
def pg_trimmer(pg_url: str) -> Iterator[Trimmer]:
    with Trimmer(pg_url, summarizer="extractive", background=False, store_timeout=1) as trimmer:
        yield trimmer


def test_stopped_server_then_restarted(pg: PgServer, pg_trimmer: Trimmer) -> None:
    pg_trimmer.prepare(chat())
    pg.stop()
    error = store_error(lambda: pg_trimmer.prepare(chat("While it is down")))
    assert "127.0.0.1" in str(error) and "server is running" in str(error)
    store_error(lambda: Trimmer(pg.url, store_timeout=1))
    pg.start()
    assert finishes(lambda: pg_trimmer.prepare(chat("Back again"))).request_id > 0


def test_frozen_server_then_thawed(pg: PgServer, pg_trimmer: Trimmer) -> None:
    pg_trimmer.prepare(chat())
    pg.freeze()
    store_error(lambda: pg_trimmer.prepare(chat("While it is frozen")))
    store_error(lambda: Trimmer(pg.url, store_timeout=1))
    pg.thaw()
    assert back_within(10, lambda: pg_trimmer.prepare(chat("Thawed"))).request_id > 0


def test_a_frozen_server_fails_fast_until_a_probe_finds_it_back(
    pg: PgServer, pg_trimmer: Trimmer
) -> None:
    """Once a call has timed out on the frozen server, later calls fail at once (the
    background probe pays the waits), and work again within seconds of the thaw."""
    pg_trimmer.prepare(chat())
    pg.freeze()
    store_error(lambda: pg_trimmer.prepare(chat("The first pays the timeout")))
    for turn in range(5):
        began = time.monotonic()
        error = store_error(lambda t=turn: pg_trimmer.prepare(chat(f"Fast {t}")))  # type: ignore[misc]
        assert time.monotonic() - began < 1.5, "a known outage must fail at once"
        assert "failing at once" in str(error)
    pg.thaw()
    thawed = time.monotonic()
    assert back_within(10, lambda: pg_trimmer.prepare(chat("Thawed"))).request_id > 0
    assert time.monotonic() - thawed < 10


def test_server_frozen_in_the_middle_of_a_transaction(pg: PgServer, pg_trimmer: Trimmer) -> None:
    def frozen_mid_transaction() -> None:
        with pg_trimmer._db.writing() as connection:
            connection.execute(text("SELECT 1"))
            pg.freeze()
            connection.execute(text("SELECT 2"))

    error = store_error(frozen_mid_transaction)
    assert "no answer within 1 s" in str(error)
    pg.thaw()
    assert back_within(10, lambda: pg_trimmer.prepare(chat("Thawed"))).request_id > 0


def test_frozen_before_a_statement_run_on_the_drivers_cursor(
    pg: PgServer, pg_trimmer: Trimmer
) -> None:
    """The request path's statements (``_store.fastsql``, recall's search) run on the DBAPI
    cursor, past SQLAlchemy's events: the watchdog must guard them too."""
    pg_trimmer.prepare(chat())

    def frozen_before_a_fast_statement() -> None:
        with pg_trimmer._db.writing() as connection:
            connection.execute(text("SELECT 1"))
            pg.freeze()
            token_rows(connection, "cl100k_base", ["00" * 32])

    error = store_error(frozen_before_a_fast_statement)
    assert "no answer within 1 s" in str(error)
    pg.thaw()
    assert back_within(10, lambda: pg_trimmer.prepare(chat("Thawed"))).request_id > 0


def test_statement_timeout_applies_on_a_live_server(pg_trimmer: Trimmer) -> None:
    def slow() -> None:
        with pg_trimmer._db.reading() as connection:
            connection.execute(text("SELECT pg_sleep(30)"))

    error = store_error(slow)
    assert "statement timeout" in str(error)
    assert pg_trimmer.prepare(chat()).request_id > 0


# -- the wrapped client: fail-open, no answer lost ------------------------------------


def test_passthrough_while_the_server_is_down(
    pg: PgServer, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        FakeOpenAI() as api,
        Trimmer(
            pg_url,
            summarizer="extractive",
            background=False,
            store_timeout=1,
            on_store_error="passthrough",
            max_tokens=300,
        ) as trimmer,
    ):
        wrapped = trimmer.wrap(openai.OpenAI(base_url=api.base_url, api_key="k", max_retries=0))
        pg.stop()
        with caplog.at_level(logging.WARNING, logger="context_trimmer"):
            for question in ("One?", "Two?"):
                answer = finishes(
                    lambda q=question: wrapped.chat.completions.create(  # type: ignore[misc]
                        model="gpt-4o", messages=chat(q)
                    )
                )
                assert answer.choices[0].message.content == "OK"
            assert api.requests[-1]["messages"] == chat("Two?")  # sent as given
            assert api.requests[-1]["max_tokens"] == 300  # the max_tokens policy applied
            assert trimmer.passthrough_requests == 2
            warned = [r for r in caplog.records if "store is unavailable" in r.message]
            assert len(warned) == 1  # once per outage
            pg.start()
            finishes(lambda: wrapped.chat.completions.create(model="gpt-4o", messages=chat()))
            assert any("store is back" in r.message for r in caplog.records)
        assert trimmer.passthrough_requests == 2
        assert len(trimmer._ledger.rows(None, None)) == 1  # prepared once it was back


def test_the_default_policy_raises_store_error(pg: PgServer, pg_url: str) -> None:
    with (
        FakeOpenAI() as api,
        Trimmer(pg_url, summarizer="extractive", background=False, store_timeout=1) as trimmer,
    ):
        wrapped = trimmer.wrap(openai.OpenAI(base_url=api.base_url, api_key="k"))
        pg.stop()
        store_error(lambda: wrapped.chat.completions.create(model="gpt-4o", messages=chat()))
        assert api.requests == []  # nothing sent


async def test_passthrough_on_a_corrupt_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with (
        FakeOpenAI() as api,
        Trimmer(
            f"sqlite:///{path}",
            summarizer="extractive",
            background=False,
            on_store_error="passthrough",
        ) as trimmer,
    ):
        wrapped = trimmer.wrap(openai.AsyncOpenAI(base_url=api.base_url, api_key="k"))
        trimmer._db.close()
        good = path.read_bytes()
        path.write_bytes(b"\0garbage" * (len(good) // 8))
        answer = await wrapped.chat.completions.create(model="gpt-4o", messages=chat())
        assert answer.choices[0].message.content == "OK"
        assert trimmer.passthrough_requests == 1 and api.requests[-1]["max_tokens"] == 1024
        trimmer._db.close()
        path.write_bytes(good)
        await wrapped.chat.completions.create(model="gpt-4o", messages=chat("Back"))
        assert trimmer.passthrough_requests == 1
        assert len(trimmer._ledger.rows(None, None)) == 1  # prepared once it was back
        await wrapped.close()


def test_an_answer_is_never_lost_to_bookkeeping(
    pg: PgServer, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def answer_then_lose_the_store(_body: dict[str, Any]) -> Reply:
        pg.stop()  # the API answers (and bills) while the store goes away
        return Reply("Billed answer", prompt_tokens=30, completion_tokens=4)

    with (
        FakeOpenAI(answer_then_lose_the_store) as api,
        Trimmer(pg_url, summarizer="extractive", background=False, store_timeout=1) as trimmer,
    ):
        wrapped = trimmer.wrap(openai.OpenAI(base_url=api.base_url, api_key="k"), governor=False)
        with caplog.at_level(logging.ERROR, logger="context_trimmer"):
            answer = finishes(
                lambda: wrapped.chat.completions.create(model="gpt-4o", messages=chat())
            )
        assert answer.choices[0].message.content == "Billed answer"
        (lost,) = [r for r in caplog.records if "could not record" in r.message]
        assert "usage, quota, attempt of request 1" in lost.message
        pg.start()
        (row,) = trimmer._ledger.rows(None, None)
        assert row.usage_prompt_tokens is None  # lost, and said so in the log


# -- streams that end badly -----------------------------------------------------------


@pytest.fixture
def streaming(db_url: str) -> Iterator[tuple[Trimmer, FakeOpenAI]]:
    with (
        FakeOpenAI(lambda _b: Reply("one two three four five six", prompt_tokens=40)) as api,
        Trimmer(db_url, summarizer="extractive", background=False) as trimmer,
    ):
        yield trimmer, api


def outcome_of(trimmer: Trimmer, request_id: int) -> tuple[str | None, bool | None, int | None]:
    """(attempt outcome, usage estimated?, completion tokens) of one request."""
    (row,) = [r for r in trimmer._ledger.rows(None, None) if r.id == request_id]
    return row.outcome, row.usage_estimated, row.completion_tokens


QUOTA = UserQuota(tokens_per_minute=100_000)


def test_a_stream_closed_early_is_recorded_and_settles_the_quota(
    streaming: tuple[Trimmer, FakeOpenAI],
) -> None:
    trimmer, api = streaming
    wrapped = trimmer.wrap(openai.OpenAI(base_url=api.base_url, api_key="k"), user_quota=QUOTA)
    stream = wrapped.chat.completions.create(
        model="gpt-4o", messages=chat(), stream=True, user="ann"
    )
    _first, second = next(stream), next(stream)
    assert second.choices[0].delta.content == "one"
    stream.close()
    outcome, estimated, completion = outcome_of(trimmer, 1)
    assert (outcome, estimated, completion) == ("stream_closed", True, 1)
    prompt = trimmer._ledger.rows(None, None)[0].prompt_tokens
    assert trimmer.quota_usage("ann")["minute"] == prompt + 1  # settled, not the reservation


def test_a_stream_cut_by_the_upstream_is_recorded(streaming: tuple[Trimmer, FakeOpenAI]) -> None:
    trimmer, api = streaming
    api.enqueue(Reply("one two three four", break_after=3))
    wrapped = trimmer.wrap(openai.OpenAI(base_url=api.base_url, api_key="k"), user_quota=QUOTA)
    stream = wrapped.chat.completions.create(
        model="gpt-4o", messages=chat(), stream=True, user="ann"
    )
    seen = []
    with pytest.raises(Exception) as cut:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert not isinstance(cut.value, AssertionError)
    assert seen == ["", "one", " two"]
    assert outcome_of(trimmer, 1) == ("stream_error", True, 2)
    assert trimmer.quota_usage("ann")["minute"] < 1000  # settled at the estimate


def test_an_abandoned_stream_is_recorded_when_collected(
    streaming: tuple[Trimmer, FakeOpenAI],
) -> None:
    trimmer, api = streaming
    wrapped = trimmer.wrap(openai.OpenAI(base_url=api.base_url, api_key="k"))
    stream = wrapped.chat.completions.create(model="gpt-4o", messages=chat(), stream=True)
    next(stream)
    del stream
    gc.collect()
    finishes(lambda: wait_for(lambda: outcome_of(trimmer, 1)[0] is not None))
    assert outcome_of(trimmer, 1) == ("stream_abandoned", True, 0)


async def test_async_streams_that_end_badly(streaming: tuple[Trimmer, FakeOpenAI]) -> None:
    trimmer, api = streaming
    wrapped = trimmer.wrap(openai.AsyncOpenAI(base_url=api.base_url, api_key="k"))
    stream = await wrapped.chat.completions.create(model="gpt-4o", messages=chat(), stream=True)
    await stream.__anext__()
    await stream.__anext__()
    await stream.close()
    assert outcome_of(trimmer, 1) == ("stream_closed", True, 1)
    api.enqueue(Reply("one two three four", break_after=2))
    stream = await wrapped.chat.completions.create(
        model="gpt-4o", messages=chat("Again"), stream=True
    )
    with pytest.raises(Exception) as cut:
        async for _chunk in stream:
            pass
    assert not isinstance(cut.value, AssertionError)
    assert outcome_of(trimmer, 2) == ("stream_error", True, 1)
    stream = await wrapped.chat.completions.create(
        model="gpt-4o", messages=chat("Once more"), stream=True
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(p or "" for p in pieces) == "one two three four five six"
    assert outcome_of(trimmer, 3)[0] == "ok"
    await wrapped.close()


def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        time.sleep(0.02)


def test_passthrough_when_the_store_goes_away_after_prepare(
    pg: PgServer, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    class StoreLostAfterPrepare(Trimmer):
        def prepare(self, *args: Any, **kwargs: Any) -> Any:
            prepared = super().prepare(*args, **kwargs)
            pg.stop()
            return prepared

    with (
        FakeOpenAI() as api,
        StoreLostAfterPrepare(
            pg_url,
            summarizer="extractive",
            background=False,
            store_timeout=1,
            on_store_error="passthrough",
        ) as trimmer,
    ):
        wrapped = trimmer.wrap(openai.OpenAI(base_url=api.base_url, api_key="k"))
        with caplog.at_level(logging.WARNING, logger="context_trimmer"):
            answer = finishes(
                lambda: wrapped.chat.completions.create(model="gpt-4o", messages=chat())
            )
        assert answer.choices[0].message.content == "OK"
        assert any("without the rate-limit budget" in r.message for r in caplog.records)
        assert any("could not record" in r.message for r in caplog.records)


# -- an upstream answer cut short ---------------------------------------------------------

CUT = b'{"id": "x", "object": "chat.completion", "choices": [' + b" " * 445 + b"]}"


def attempts_of(trimmer: Trimmer) -> list[Any]:
    with trimmer._db.engine.connect() as connection:
        return list(connection.execute(text("SELECT outcome, attempts FROM ct_attempts")).all())


def quota_used(trimmer: Trimmer) -> list[int]:
    with trimmer._db.engine.connect() as connection:
        return list(connection.execute(text("SELECT tokens FROM ct_user_windows")).scalars())


def test_a_cut_answer_through_a_wrapped_client_is_recorded(db_url: str) -> None:
    """Content-Length 500, 25 bytes, then the connection closes: the SDK's connection
    error (after the wrapper's retries), the attempt recorded as answer_cut, the quota
    reservation released."""
    with (
        FakeOpenAI(lambda _body: Reply(raw=CUT, raw_cut=25)) as api,
        Trimmer(db_url, summarizer="extractive", background=False) as trimmer,
    ):
        assert len(CUT) == 500
        wrapped = trimmer.wrap(
            openai.OpenAI(base_url=api.base_url, api_key="k"),
            user_quota=UserQuota(tokens_per_minute=100_000),
            governor=False,
        )
        with pytest.raises(openai.APIConnectionError):
            finishes(
                lambda: wrapped.chat.completions.create(
                    model="gpt-4o", messages=chat(), user="ann", max_tokens=900
                )
            )
        ((outcome, attempts),) = attempts_of(trimmer)
        assert outcome == "answer_cut" and attempts == len(api.requests) >= 1
        assert quota_used(trimmer) == [0]  # the minute window: nothing kept


async def test_a_cut_answer_through_an_async_wrapped_client_is_recorded(db_url: str) -> None:
    with (
        FakeOpenAI(lambda _body: Reply(raw=CUT, raw_cut=25)) as api,
        Trimmer(db_url, summarizer="extractive", background=False) as trimmer,
    ):
        wrapped = trimmer.wrap(
            openai.AsyncOpenAI(base_url=api.base_url, api_key="k"), governor=False
        )
        with pytest.raises(openai.APIConnectionError):
            await wrapped.chat.completions.create(model="gpt-4o", messages=chat())
        ((outcome, _attempts),) = attempts_of(trimmer)
        assert outcome == "answer_cut"
        await wrapped.close()


def test_an_outage_ends_when_its_probe_gets_through() -> None:
    """The Outage alone: one probe thread, however many failures; over at the first
    probe that answers; closed, it probes no more."""
    from context_trimmer._store.outage import Outage

    tries: list[int] = []

    def probe() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise StoreError("still frozen")

    outage = Outage(probe, every=0.01)
    assert outage.down_for() is None
    for _ in range(5):
        outage.begin("no answer within 1 s")
    assert outage.down_for() is not None and outage.reason == "no answer within 1 s"
    deadline = time.monotonic() + HANG
    while outage.down_for() is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(tries) == 3
    outage.close()
    outage.begin("after close")
    assert outage.down_for() is None
