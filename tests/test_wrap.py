"""trimmer.wrap(client) over real HTTP: the SDK's objects, retries, budgets, fallback,
streaming, quotas."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion
from openai_server import FakeOpenAI, Reply, TokenLimiter
from sqlalchemy import create_engine, select

from context_trimmer import (
    QuotaExceeded,
    RateLimitBudgetExceeded,
    RateLimits,
    RetryPolicy,
    Trimmer,
    UserQuota,
    count_tokens,
)
from context_trimmer._store.ledger import ATTEMPTS, USAGE
from context_trimmer._store.ratelimit import (
    UNKNOWN_FOR,
    Governor,
    HeaderLimits,
    budget_key,
    parse_duration,
)

FAST = RetryPolicy(max_retries=4, base=0.01, cap=0.05)


def chat(turns: int = 1) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You help."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: " + "why " * 30})
        messages.append({"role": "assistant", "content": f"Answer {turn}: " + "because " * 30})
    messages.append({"role": "user", "content": "And now?"})
    return messages


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(
        default=lambda _b: Reply("Fine answer here", prompt_tokens=40, completion_tokens=3)
    ) as s:
        yield s


def client(server: FakeOpenAI, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test-key", **options)


def attempts(url: str) -> list[Any]:
    """How each request was sent (ct_attempts), read over our own connection."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(ATTEMPTS).order_by(ATTEMPTS.c.request_id)).all()
    finally:
        engine.dispose()


def usage_models(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(USAGE.c.model)).scalars())
    finally:
        engine.dispose()


def test_go_durations() -> None:
    assert parse_duration("6m0s") == 360
    assert parse_duration("1.428s") == pytest.approx(1.428)
    assert parse_duration("12ms") == pytest.approx(0.012)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("soon") is None
    seen = HeaderLimits.parse(
        {
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "2s",
        }
    )
    assert seen == HeaderLimits(None, 30000, None, 29000, None, 2.0)


def test_create_returns_the_sdks_object_and_sends_the_trimmed_request(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    original = client(server)
    wrapped = trimmer.wrap(original)
    messages = chat(6)
    trimmer.prepare(messages)
    trimmer.compact(messages, force=True)
    response = wrapped.chat.completions.create(model="gpt-4o", messages=messages, temperature=0.2)
    assert isinstance(response, ChatCompletion)
    sent = server.requests[-1]
    assert len(sent["messages"]) < len(messages)
    assert sent["messages"][1]["content"].startswith("Summary of the earlier conversation")
    assert (sent["max_tokens"], sent["temperature"]) == (1024, 0.2)
    assert count_tokens(sent["messages"]) < count_tokens(messages)
    with trimmer._db.engine.connect() as connection:
        usage = connection.execute(select(USAGE)).one()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (40, 3, False)
    assert isinstance(wrapped, openai.OpenAI)
    assert type(wrapped.models) is openai.resources.Models  # the rest is the client's own


def test_conversation_and_user_from_context_or_headers(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    wrapped = trimmer.wrap(client(server))
    with trimmer.conversation("support-42", user="ann"):
        wrapped.chat.completions.create(model="gpt-4o", messages=chat())
    wrapped.chat.completions.create(
        model="gpt-4o",
        messages=chat(2),
        extra_headers={"X-Conversation-Id": "c-7", "X-User-Id": "bob", "X-Other": "1"},
    )
    rows = {row.group: row for row in trimmer.report(group_by="conversation").rows}
    assert set(rows) == {"support-42", "c-7"}
    assert {row.group for row in trimmer.report(group_by="user").rows} == {"ann", "bob"}
    assert "x-conversation-id" not in server.headers[-1]
    assert server.headers[-1]["x-other"] == "1"


def test_a_429_storm_with_retry_after_never_reaches_the_app(
    trimmer: Trimmer, server: FakeOpenAI, db_url: str
) -> None:
    storm = Reply(status=429, headers={"retry-after-ms": "30"}, error="Rate limit reached")
    server.enqueue(storm, storm, storm)
    slept: list[float] = []
    wrapped = trimmer.wrap(client(server), retry=FAST, sleep=slept.append)
    response = wrapped.chat.completions.create(model="gpt-4o", messages=chat())
    assert response.choices[0].message.content == "Fine answer here"
    assert slept == [0.03, 0.03, 0.03]  # the server's retry-after-ms, honoured exactly
    (row,) = attempts(db_url)
    assert (row.attempts, row.rate_limited, row.outcome) == (4, 3, "ok")
    totals = trimmer.report().totals
    assert (totals.rate_limited_429s, totals.wait_seconds) == (3, 0.09)


def test_sdk_retries_are_off_so_nothing_is_retried_twice_over(
    trimmer: Trimmer, server: FakeOpenAI, db_url: str
) -> None:
    server.enqueue(*[Reply(status=500)] * 10)
    wrapped = trimmer.wrap(
        client(server, max_retries=5), retry=RetryPolicy(max_retries=2, base=0.001, cap=0.001)
    )
    with pytest.raises(openai.InternalServerError):
        wrapped.chat.completions.create(model="gpt-4o", messages=chat())
    assert server.statuses[500] == 3  # ours: 1 + 2 retries; the SDK added none
    assert attempts(db_url)[0].outcome == "error"


def test_full_jitter_without_retry_after() -> None:
    policy = RetryPolicy(base=0.5, cap=8.0, random=lambda: 0.5)
    assert [policy.delay(n, None) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert RetryPolicy(random=lambda: 0.0).delay(3, {}) == 0.0


def test_headers_drive_throttling_so_no_429_reaches_the_app(trimmer: Trimmer, db_url: str) -> None:
    cost = lambda body: count_tokens(body["messages"]) + body["max_tokens"]  # noqa: E731
    limiter = TokenLimiter(limit=2500, window=1.0, cost=cost)
    with FakeOpenAI(limiter=limiter) as server:
        wrapped = trimmer.wrap(client(server, max_retries=0), retry=RetryPolicy(max_retries=0))
        for _ in range(6):
            wrapped.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=900)
    assert server.statuses == {200: 6}
    assert sum(row.waited_ms for row in attempts(db_url)) > 0


def test_configured_limits_apply_before_any_header(
    trimmer: Trimmer, server: FakeOpenAI, db_url: str
) -> None:
    wrapped = trimmer.wrap(client(server), limits={"gpt-4o": RateLimits(tokens_per_minute=500)})
    with pytest.raises(RateLimitBudgetExceeded, match="more than the whole limit of 500"):
        wrapped.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=900)
    assert server.requests == []
    assert attempts(db_url)[0].outcome == "budget_exceeded"


def test_a_spent_budget_raises_when_the_wait_is_too_long(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    wrapped = trimmer.wrap(
        client(server), max_wait=0.5, limits={"gpt-4o": RateLimits(tokens_per_minute=1500)}
    )
    wrapped.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=900)
    with pytest.raises(RateLimitBudgetExceeded) as caught:
        wrapped.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=900)
    assert 50 < caught.value.wait_seconds <= 60
    assert len(server.requests) == 1


async def test_async_budgets_hold_with_the_reservation_made_beside_prepare(
    trimmer: Trimmer, server: FakeOpenAI, db_url: str
) -> None:
    """The async client reserves its first budget in prepare()'s hand-off: an
    over-limit call still raises before anything is sent, and a spent budget whose
    reset is further than max_wait still raises, recorded as such."""
    over = trimmer.wrap(
        openai.AsyncOpenAI(base_url=server.base_url, api_key="k"),
        limits={"gpt-4o": RateLimits(tokens_per_minute=500)},
    )
    with pytest.raises(RateLimitBudgetExceeded, match="more than the whole limit of 500"):
        await over.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=900)
    assert server.requests == []
    assert attempts(db_url)[0].outcome == "budget_exceeded"
    limits = {"gpt-4o": RateLimits(tokens_per_minute=1500)}
    spent = trimmer.wrap(
        openai.AsyncOpenAI(base_url=server.base_url, api_key="k"), max_wait=0.5, limits=limits
    )
    await spent.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=900)
    with pytest.raises(RateLimitBudgetExceeded) as caught:
        await spent.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=900)
    assert 50 < caught.value.wait_seconds <= 60
    assert len(server.requests) == 1
    assert [row.outcome for row in attempts(db_url)] == ["budget_exceeded", "ok", "budget_exceeded"]
    await over.close()
    await spent.close()


def test_fallback_to_a_cheaper_model(trimmer: Trimmer, db_url: str) -> None:
    def answer(body: dict[str, Any]) -> Reply:
        if body["model"] == "gpt-4o":
            return Reply(status=429, error="Rate limit reached for gpt-4o")
        return Reply("from mini")

    with FakeOpenAI(default=answer) as server:
        wrapped = trimmer.wrap(
            client(server),
            fallback_model="gpt-4o-mini",
            retry=RetryPolicy(max_retries=1, base=0.001, cap=0.001),
        )
        response = wrapped.chat.completions.create(model="gpt-4o", messages=chat())
    assert (response.model, response.choices[0].message.content) == ("gpt-4o-mini", "from mini")
    (row,) = attempts(db_url)
    assert (row.fallback_model, row.rate_limited, row.outcome) == ("gpt-4o-mini", 2, "ok")
    with trimmer._db.engine.connect() as connection:
        assert connection.execute(select(USAGE.c.model)).scalar() == "gpt-4o-mini"
    assert trimmer.report().totals.fallbacks == 1


def test_streaming_passes_chunks_through_and_records_usage(
    trimmer: Trimmer, server: FakeOpenAI
) -> None:
    wrapped = trimmer.wrap(client(server))
    stream = wrapped.chat.completions.create(
        model="gpt-4o", messages=chat(), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(type(c).__name__ == "ChatCompletionChunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Fine answer here"
    )
    with wrapped.chat.completions.create(model="gpt-4o", messages=chat(2), stream=True) as s:
        text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    assert text == "Fine answer here"
    with trimmer._db.engine.connect() as connection:
        rows = connection.execute(select(USAGE).order_by(USAGE.c.request_id)).all()
    # the second did not ask for usage: asked on its behalf, recorded exactly, not shown
    assert [(r.completion_tokens, r.estimated) for r in rows] == [(3, False), (3, False)]


async def test_async_client_and_async_streaming(trimmer: Trimmer, server: FakeOpenAI) -> None:
    wrapped = trimmer.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="k"))
    response = await wrapped.chat.completions.create(model="gpt-4o", messages=chat())
    assert isinstance(response, ChatCompletion)
    stream = await wrapped.chat.completions.create(
        model="gpt-4o", messages=chat(2), stream=True, stream_options={"include_usage": True}
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "Fine answer here"
    with trimmer._db.engine.connect() as connection:
        assert len(connection.execute(select(USAGE)).all()) == 2
    await wrapped.close()


def async_client(server: FakeOpenAI, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test-key", **options)


async def test_async_retries_429s_and_500s_with_the_servers_delays(
    trimmer: Trimmer, server: FakeOpenAI, db_url: str
) -> None:
    storm = Reply(status=429, headers={"retry-after-ms": "30"}, error="Rate limit reached")
    server.enqueue(storm, storm, Reply(status=500))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # awaited, or nothing is recorded
        slept.append(seconds)

    policy = RetryPolicy(max_retries=4, base=0.01, cap=0.05, random=lambda: 0.5)
    wrapped = trimmer.wrap(async_client(server, max_retries=5), retry=policy, sleep=sleep)
    response = await wrapped.chat.completions.create(model="gpt-4o", messages=chat())
    assert response.choices[0].message.content == "Fine answer here"
    # retry-after-ms twice; then no header: full jitter, 0.5 x min(cap, 0.01 x 2**2)
    assert slept == [0.03, 0.03, 0.02]
    assert server.statuses == {429: 2, 500: 1, 200: 1}  # the SDK's own retries stay off
    (row,) = attempts(db_url)
    assert (row.attempts, row.rate_limited, row.outcome) == (4, 2, "ok")
    totals = trimmer.report().totals
    assert (totals.rate_limited_429s, totals.failed_requests) == (2, 0)
    assert totals.wait_seconds == pytest.approx(0.08)
    await wrapped.close()


async def test_async_retries_give_up_after_max_retries(
    trimmer: Trimmer, server: FakeOpenAI, db_url: str
) -> None:
    server.enqueue(*[Reply(status=500)] * 10)
    wrapped = trimmer.wrap(
        async_client(server, max_retries=5),
        retry=RetryPolicy(max_retries=2, base=0.001, cap=0.001),
    )
    with pytest.raises(openai.InternalServerError):
        await wrapped.chat.completions.create(model="gpt-4o", messages=chat())
    assert server.statuses == {500: 3}
    assert [(r.attempts, r.outcome) for r in attempts(db_url)] == [(3, "error")]
    await wrapped.close()


async def test_async_fallback_to_a_cheaper_model(trimmer: Trimmer, db_url: str) -> None:
    def answer(body: dict[str, Any]) -> Reply:
        if body["model"] == "gpt-4o":
            return Reply(status=429, error="Rate limit reached for gpt-4o")
        return Reply("from mini")

    with FakeOpenAI(default=answer) as server:
        wrapped = trimmer.wrap(
            async_client(server),
            fallback_model="gpt-4o-mini",
            retry=RetryPolicy(max_retries=1, base=0.001, cap=0.001),
        )
        response = await wrapped.chat.completions.create(model="gpt-4o", messages=chat())
        await wrapped.close()
    assert (response.model, response.choices[0].message.content) == ("gpt-4o-mini", "from mini")
    assert [body["model"] for body in server.requests] == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    (row,) = attempts(db_url)
    assert (row.fallback_model, row.rate_limited, row.outcome) == ("gpt-4o-mini", 2, "ok")
    assert usage_models(db_url) == ["gpt-4o-mini"]
    assert trimmer.report().totals.fallbacks == 1


async def test_async_fallback_that_stays_rate_limited_raises(trimmer: Trimmer, db_url: str) -> None:
    with FakeOpenAI(default=lambda _b: Reply(status=429, error="Rate limit reached")) as server:
        wrapped = trimmer.wrap(
            async_client(server),
            fallback_model="gpt-4o-mini",
            retry=RetryPolicy(max_retries=0),
        )
        with pytest.raises(openai.RateLimitError):
            await wrapped.chat.completions.create(model="gpt-4o", messages=chat())
        await wrapped.close()
    assert [body["model"] for body in server.requests] == ["gpt-4o", "gpt-4o-mini"]
    (row,) = attempts(db_url)
    assert (row.fallback_model, row.rate_limited, row.outcome) == ("gpt-4o-mini", 2, "rate_limited")
    assert usage_models(db_url) == []


def test_user_quotas(trimmer: Trimmer, server: FakeOpenAI) -> None:
    wrapped = trimmer.wrap(
        client(server),
        user_quota=UserQuota(tokens_per_minute=1500),
        user_quotas={"vip": UserQuota(tokens_per_minute=100_000)},
    )
    with trimmer.conversation(user="ann"):
        wrapped.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=900)
        with pytest.raises(QuotaExceeded, match="user 'ann' has used 43 of 1,500 tokens") as e:
            wrapped.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=1400)
    assert (e.value.user, e.value.window, e.value.used) == ("ann", "minute", 43)
    with trimmer.conversation(user="vip"):
        wrapped.chat.completions.create(model="gpt-4o", messages=chat(), max_tokens=1400)
    by_user = {row.group: row for row in trimmer.report(group_by="user").rows}
    assert by_user["ann"].quota_rejections == 1 and by_user["vip"].quota_rejections == 0
    assert trimmer.quota_usage("ann")["minute"] == 43  # settled to the real usage


def test_concurrent_reservations_never_exceed_the_budget(db_url: str) -> None:
    with Trimmer(db_url, summarizer="extractive") as trimmer:
        governor = Governor(
            trimmer._db, limits={"gpt-4o": RateLimits(tokens_per_minute=1000)}, max_wait=0
        )
        key = budget_key("http://x", "key", "gpt-4o")
        granted: list[float] = []

        def worker() -> None:
            granted.append(governor.try_reserve(key, "gpt-4o", 100))

        threads = [threading.Thread(target=worker) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert granted.count(0.0) == 10  # exactly the budget: 10 x 100 tokens
    assert all(wait > 0 for wait in granted if wait)


def test_a_limit_another_process_learns_is_used_within_a_second(db_url: str) -> None:
    """A budget found without limits is not read again for UNKNOWN_FOR seconds (one
    read a request saved); what this process learns counts at once, another's soon."""
    headers = {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "30s",
    }
    key = budget_key("http://x", "key", "gpt-4o")
    with Trimmer(db_url, summarizer="extractive") as trimmer:
        here, there = Governor(trimmer._db), Governor(trimmer._db)
        assert here.try_reserve(key, "gpt-4o", 100) == 0.0  # nothing known yet
        assert there.try_reserve(key, "gpt-4o", 100) == 0.0
        there.observe(key, headers)  # another worker reads a spent budget
        assert there.try_reserve(key, "gpt-4o", 100) > 0  # its own finding: at once
        assert here.try_reserve(key, "gpt-4o", 100) == 0.0  # not read again so soon
        deadline = time.monotonic() + UNKNOWN_FOR + 5
        while here.try_reserve(key, "gpt-4o", 100) == 0.0:
            assert time.monotonic() < deadline, "another worker's limit never seen"
            time.sleep(0.05)
        here_too = Governor(trimmer._db)
        assert here_too.try_reserve(key, "gpt-4o", 100) > 0
