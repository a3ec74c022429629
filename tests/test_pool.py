"""trimmer.wrap(client_a, client_b, ...) over real HTTP: two local upstreams, failover on
a 429 and on a refused connection before any fallback model, cool-down and recovery,
the budget deciding, model names per upstream (an AzureOpenAI deployment), the ledger's
upstream column and the report by upstream, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from gateway_server import free_port
from openai_server import FakeOpenAI, Reply
from sqlalchemy import create_engine, func, select

from context_trimmer import (
    ConfigurationError,
    CoolDown,
    RateLimits,
    RetryPolicy,
    Trimmer,
    Upstream,
)
from context_trimmer._store.ledger import ATTEMPTS, REQUESTS
from context_trimmer.cli import main

FAST = RetryPolicy(max_retries=2, base=0.01, cap=0.02)
MESSAGES = [{"role": "user", "content": "Hello there"}]


def answer(text: str) -> Any:
    return lambda body: Reply(text, model=body.get("model"))


@pytest.fixture
def a() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(answer("from A")) as server:
        yield server


@pytest.fixture
def b() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(answer("from B")) as server:
        yield server


_made: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def closed_clients() -> Iterator[None]:
    """Every client a test made is closed after it (their copies share its pool)."""
    yield
    while _made:
        _made.pop().close()


def client(url: str, key: str = "key", **options: Any) -> openai.OpenAI:
    made = openai.OpenAI(base_url=url, api_key=key, **options)
    _made.append(made)
    return made


def host(server: FakeOpenAI) -> str:
    return server.base_url.split("//")[1].split("/")[0]


def rows(url: str, table: Any = ATTEMPTS) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            order = table.c.request_id if table is ATTEMPTS else table.c.id
            return list(connection.execute(select(table).order_by(order)).all())
    finally:
        engine.dispose()


def ask(wrapped: openai.OpenAI, model: str = "gpt-4o", conversation: str = "c") -> str:
    answered = wrapped.chat.completions.create(
        model=model, messages=MESSAGES, extra_headers={"X-Conversation-Id": conversation}
    )
    return str(answered.choices[0].message.content)


def test_a_429_moves_to_the_next_upstream_before_any_fallback_model(
    trimmer: Trimmer, db_url: str, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    a.default = lambda _b: Reply(status=429, error="Rate limit reached for requests")
    wrapped = trimmer.wrap(
        client(a.base_url, "key-a"),
        Upstream(client(b.base_url, "key-b"), name="second"),
        fallback_model="gpt-4o-mini",
        retry=FAST,
    )
    assert isinstance(wrapped, openai.OpenAI)
    assert ask(wrapped) == "from B"
    assert [r["model"] for r in a.requests] == ["gpt-4o"]
    assert [r["model"] for r in b.requests] == ["gpt-4o"]  # the same model: no fallback
    (row,) = rows(db_url)
    assert (row.attempts, row.rate_limited, row.fallback_model) == (2, 1, None)
    assert (row.outcome, row.upstream) == ("ok", f"second@{host(b)}")
    assert "key-b" not in row.upstream


def test_a_429_that_says_wait_ten_minutes_still_moves_on(
    trimmer: Trimmer, db_url: str, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    a.default = lambda _b: Reply(status=429, headers={"retry-after": "600"})
    wrapped = trimmer.wrap(client(a.base_url), client(b.base_url), retry=FAST)
    assert ask(wrapped) == "from B"
    b.default = a.default  # now both say so: not retried, the 429 reaches the caller
    with pytest.raises(openai.RateLimitError):
        ask(wrapped, conversation="again")
    assert len(a.requests) + len(b.requests) == 4


def test_the_fallback_model_comes_only_when_every_upstream_stays_rate_limited(
    trimmer: Trimmer, db_url: str, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    def limited(body: dict[str, Any]) -> Reply:
        if body["model"] == "gpt-4o":
            return Reply(status=429, error="Rate limit reached")
        return Reply("fallback answer", model=body["model"])

    a.default = b.default = limited
    wrapped = trimmer.wrap(
        client(a.base_url), client(b.base_url), fallback_model="gpt-4o-mini", retry=FAST
    )
    assert ask(wrapped) == "fallback answer"
    asked = [r["model"] for r in a.requests] + [r["model"] for r in b.requests]
    # Both upstreams tried once, then twice more after each retry wait: 6 429s, then
    # the fallback model on the upstream chosen first.
    assert asked.count("gpt-4o") == 6 and asked.count("gpt-4o-mini") == 1
    (row,) = rows(db_url)
    assert (row.attempts, row.rate_limited, row.fallback_model) == (7, 6, "gpt-4o-mini")


def test_a_refused_connection_moves_on_and_the_upstream_cools_down_then_recovers(
    trimmer: Trimmer, db_url: str, b: FakeOpenAI
) -> None:
    now = [1000.0]
    port = free_port()  # nothing listens there: connections are refused
    dead = client(f"http://127.0.0.1:{port}/v1", timeout=5)
    wrapped = trimmer.wrap(
        Upstream(dead, name="dead"),
        Upstream(client(b.base_url), name="live"),
        retry=FAST,
        cooldown=CoolDown(threshold=2, seconds=30, clock=lambda: now[0]),
    )
    answers = [ask(wrapped, conversation=f"c{n}") for n in range(6)]
    assert answers == ["from B"] * 6
    tried = [r.attempts for r in rows(db_url)]
    # Turns alternate: calls 1 and 3 tried the dead upstream first (two failures: it
    # cools down); from then on it is skipped.
    assert tried == [2, 1, 2, 1, 1, 1]
    assert {r.upstream for r in rows(db_url)} == {f"live@{host(b)}"}
    assert trimmer.report(group_by="upstream").rows[0].requests == 6
    now[0] += 31  # the cool-down is over: the dead upstream is tried again
    with FakeOpenAI(answer("from the revived one"), port=port):
        later = [ask(wrapped, conversation=f"d{n}") for n in range(2)]
    assert "from the revived one" in later
    assert rows(db_url)[-1].attempts == 1


def test_the_upstream_with_the_most_budget_left_serves(
    trimmer: Trimmer, db_url: str, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    wrapped = trimmer.wrap(
        Upstream(client(a.base_url, "key-a"), name="small", limits=RateLimits(20_000)),
        Upstream(client(b.base_url, "key-b"), name="large", limits=RateLimits(200_000)),
    )
    assert [ask(wrapped, conversation=f"c{n}") for n in range(4)] == ["from B"] * 4
    assert not a.requests
    # Once B's headers say it has less left than A, A serves.
    b.default = lambda _b: Reply(
        "from B",
        headers={"x-ratelimit-remaining-tokens": "3000", "x-ratelimit-limit-tokens": "200000"},
    )
    ask(wrapped, conversation="x")
    assert ask(wrapped, conversation="y") == "from A"


def test_model_names_per_upstream_and_an_azure_deployment(
    trimmer: Trimmer, db_url: str, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    azure = openai.AzureOpenAI(
        base_url=a.base_url.removesuffix("/v1") + "/openai",
        api_key="azure-key",
        api_version="2024-10-21",
    )
    wrapped = trimmer.wrap(
        Upstream(client(b.base_url), name="mini", models=["gpt-4o-mini"]),
        Upstream(azure, name="azure", models={"gpt-4o": "gpt4o-prod"}),
    )
    assert ask(wrapped, "gpt-4o") == "from A"
    assert a.paths == ["/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"]
    assert a.requests[0]["model"] == "gpt4o-prod" and a.headers[0]["api-key"] == "azure-key"
    assert ask(wrapped, "gpt-4o-mini") == "from B"
    assert [r.upstream for r in rows(db_url)] == [f"azure@{host(a)}", f"mini@{host(b)}"]
    with pytest.raises(ConfigurationError, match=r"no upstream serves model 'gpt-4\.1'"):
        ask(wrapped, "gpt-4.1")
    assert len(rows(db_url, REQUESTS)) == 2  # refused before anything was stored
    with pytest.raises(ConfigurationError, match="no upstream serves model 'o3'"):
        trimmer.wrap(Upstream(client(b.base_url), models=["gpt-4o"]), fallback_model="o3")


def test_the_report_and_the_cli_group_by_upstream(
    trimmer: Trimmer, db_url: str, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    wrapped = trimmer.wrap(
        Upstream(client(a.base_url), name="a"), Upstream(client(b.base_url), name="b")
    )
    for n in range(4):
        ask(wrapped, conversation=f"c{n}")
    plain = trimmer.wrap(client(a.base_url))
    ask(plain, conversation="alone")
    prepared = trimmer.prepare(MESSAGES, model="gpt-4o")  # never sent
    assert prepared.request_id
    report = trimmer.report(group_by="upstream")
    by_group = {row.group: row.requests for row in report.rows}
    assert by_group == {f"a@{host(a)}": 2, f"b@{host(b)}": 2, host(a): 1, "(not sent)": 1}
    assert report.totals.requests == 6
    result = CliRunner().invoke(
        main, ["report", "--db", db_url, "--group-by", "upstream", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    printed = {row["group"]: row["requests"] for row in json.loads(result.output)["rows"]}
    assert printed == by_group


async def test_async_clients_fail_over_too(trimmer: Trimmer, db_url: str, b: FakeOpenAI) -> None:
    dead = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k")
    live = openai.AsyncOpenAI(base_url=b.base_url, api_key="k")
    wrapped = trimmer.wrap(dead, live, retry=FAST)
    assert isinstance(wrapped, openai.AsyncOpenAI)
    answered = await wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert answered.choices[0].message.content == "from B"
    (row,) = rows(db_url)
    assert (row.attempts, row.upstream) == (2, host(b))
    stream = await wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await dead.close()
    await live.close()


def test_with_options_reaches_every_upstream(
    trimmer: Trimmer, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    wrapped = trimmer.wrap(client(a.base_url, "key-a"), client(b.base_url, "key-b"))
    quick = wrapped.with_options(timeout=3.0, max_retries=1)
    others = quick._context_trimmer_others  # type: ignore[attr-defined]
    assert [o.timeout for o in others] == [3.0] and [o.max_retries for o in others] == [1]
    assert [str(o.api_key) for o in others] == ["key-b"]  # never the first one's key
    assert type(others[0]) is openai.OpenAI  # a plain client: trimmed once, by the pool
    assert ask(quick) in ("from A", "from B")


def test_a_pool_refuses_mixed_kinds(trimmer: Trimmer, a: FakeOpenAI) -> None:
    other = openai.AsyncOpenAI(base_url=a.base_url, api_key="k")
    with pytest.raises(ConfigurationError, match="clients of one kind"):
        trimmer.wrap(client(a.base_url), other)


def test_requests_table_counts_each_call_once(
    trimmer: Trimmer, db_url: str, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    """A failover is one prepared request (one ledger row), however many upstreams."""
    a.default = lambda _b: Reply(status=429, error="limited")
    wrapped = trimmer.wrap(client(a.base_url), client(b.base_url), retry=FAST)
    for n in range(3):
        ask(wrapped, conversation=f"c{n}")
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(REQUESTS)).scalar() == 3
    engine.dispose()


def test_with_the_store_down_a_passthrough_goes_to_an_upstream_serving_the_model(
    tmp_path: Path, a: FakeOpenAI, b: FakeOpenAI
) -> None:
    path = tmp_path / "history.db"
    with Trimmer(
        f"sqlite:///{path}", summarizer="extractive", background=False, on_store_error="passthrough"
    ) as trimmer:
        wrapped = trimmer.wrap(
            Upstream(client(a.base_url), models=["gpt-4o-mini"]),
            Upstream(client(b.base_url), models={"gpt-4o": "b-4o"}),
        )
        trimmer._db.close()
        good = path.read_bytes()
        path.write_bytes(b"\0garbage" * (len(good) // 8))  # the store is now unreadable
        assert ask(wrapped, "gpt-4o") == "from B"
        assert trimmer.passthrough_requests == 1
        trimmer._db.close()
        path.write_bytes(good)
    assert [r["model"] for r in b.requests] == ["b-4o"] and not a.requests
