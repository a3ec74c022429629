"""The gateway when things go wrong, over real HTTP: the store stopped and restarted (a
PostgreSQL server of the test's own), bad input refused before anything is stored,
tenant names that must not collide, oversized keys, streams that end badly, and an LLM
summarizer that answers every summary with nothing."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_server import ServerThread
from openai_server import FakeOpenAI, Reply
from pg_server import PgServer, fresh_schema_url, own_server
from sqlalchemy import func, select
from test_gateway import ENVIRON, KEY_ENV, SUMMARY_MODEL, chat_requests, conversation, talk

from context_trimmer._store.db import Database
from context_trimmer._store.keys import create_key
from context_trimmer._store.schema import Base
from context_trimmer.gateway import GatewayConfig, create_app
from context_trimmer.gateway._guard import (
    MAX_DEPTH,
    KeyCache,
    StoreHealth,
    tenant_user,
    too_deep,
)

ATTEMPTS = Base.metadata.tables["ct_attempts"]
USAGE = Base.metadata.tables["ct_usage"]
REQUESTS = Base.metadata.tables["ct_requests"]
WINDOWS = Base.metadata.tables["ct_user_windows"]


def answer(body: dict[str, Any]) -> Reply:
    return Reply("Gateway says hi", prompt_tokens=30, completion_tokens=4)


class Running:
    """A gateway on ``url`` with its upstream, its store and a key of tenant ``acme``."""

    def __init__(self, server: ServerThread, upstream: FakeOpenAI, store: Database):
        self.server, self.upstream, self.store = server, upstream, store
        self.key, _ = create_key(store, "acme")

    @property
    def url(self) -> str:
        return self.server.base_url

    @property
    def state(self) -> Any:
        return self.server.server.config.app.state

    def post(self, content: Any, key: str | None = None, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/chat/completions",
            content=content,
            headers={
                "authorization": f"Bearer {key or self.key}",
                "content-type": "application/json",
                **headers,
            },
            timeout=30,
        )

    def healthz(self) -> httpx.Response:
        return httpx.get(self.url.removesuffix("/v1") + "/healthz", timeout=30)

    def rows(self) -> int:
        """Rows in every table but the keys: what requests have stored."""
        with self.store.engine.connect() as connection:
            return sum(
                connection.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in Base.metadata.tables.items()
                if name != "ct_api_keys"
            )


@pytest.fixture
def running_gateway() -> Iterator[Callable[..., Running]]:
    """A factory: ``start(db_url, reply=..., **config)`` runs a gateway until the test ends."""
    stack: list[Any] = []

    def start(db_url: str, reply: Callable[[dict[str, Any]], Reply] = answer, **settings: Any):
        upstream = FakeOpenAI(default=reply).__enter__()
        stack.append(upstream)
        config = GatewayConfig(
            db_url=db_url,
            upstream=upstream.base_url,
            upstream_key_env=KEY_ENV,
            key_cache_seconds=0,
            **{"summarizer": "extractive", **settings},
        )
        store = Database(db_url)
        stack.append(store)
        server = ServerThread(create_app(config, environ=ENVIRON)).__enter__()
        stack.append(server)
        return Running(server, upstream, store)

    yield start
    for thing in reversed(stack):
        if isinstance(thing, Database):
            thing.close()
        else:
            thing.__exit__(None, None, None)


def chat_body(**fields: Any) -> bytes:
    return json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **fields}
    ).encode()


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["message"] and {"type", "param", "code"} <= set(error)
    return dict(error)


# -- the store stopped and restarted ------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PgServer]:
    yield from own_server()


@pytest.fixture
def pg(own_postgres: PgServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[PgServer]:
    """The server, running again after each test; store waits bounded to 2 s."""
    monkeypatch.setenv("CONTEXT_TRIMMER_DB_TIMEOUT", "2")
    yield own_postgres
    own_postgres.thaw()
    if not (own_postgres.directory / "postmaster.pid").exists():
        own_postgres.start()


@pytest.fixture
def pg_url(pg: PgServer) -> str:
    """A URL on the test's own server whose connections use a fresh, empty schema."""
    return fresh_schema_url(pg)


def until(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.2)


def test_a_stopped_store_is_a_503_and_healthz_follows_it(
    pg: PgServer, pg_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(pg_url)
    assert gateway.post(chat_body()).status_code == 200
    healthy = gateway.healthz()
    assert healthy.status_code == 200 and healthy.json()["store"] == "ok"
    assert healthy.json()["summarizer"]["breaker"]["state"] == "closed"
    pg.stop()
    refused = gateway.post(chat_body(messages=[{"role": "user", "content": "still there?"}]))
    error = assert_openai_error(refused, 503)
    assert error["code"] == "store_unavailable" and refused.headers["retry-after"] == "5"
    assert "127.0.0.1" not in error["message"]  # the store's address stays in the log
    responses = httpx.post(
        f"{gateway.url}/responses",
        json={"model": "gpt-4o", "input": "still there?"},
        headers={"authorization": f"Bearer {gateway.key}"},
        timeout=30,
    )
    assert assert_openai_error(responses, 503)["code"] == "store_unavailable"
    assert_openai_error(gateway.post(chat_body(), key="ctk-never-seen"), 503)
    until(lambda: gateway.healthz().status_code == 503)
    down = gateway.healthz().json()
    assert down["status"] == "unavailable" and down["failing"] == ["store"]
    pg.start()
    until(lambda: gateway.healthz().status_code == 200)
    assert gateway.post(chat_body()).status_code == 200


def test_a_frozen_store_is_fast_failed_once_healthz_says_so(
    pg: PgServer, pg_url: str, running_gateway: Callable[..., Running]
) -> None:
    """PostgreSQL frozen (SIGSTOP): once /healthz says 503, five requests in a row each
    get 503 + Retry-After within 1.5 s (a background probe pays the timeouts, not each
    request), on both routes and for a key never seen; after the thaw requests succeed
    within 10 s."""
    gateway = running_gateway(pg_url)
    assert gateway.post(chat_body()).status_code == 200
    pg.freeze()
    until(lambda: gateway.healthz().status_code == 503)
    for turn in range(5):
        began = time.monotonic()
        refused = gateway.post(chat_body(messages=[{"role": "user", "content": f"up? {turn}"}]))
        assert time.monotonic() - began <= 1.5, f"request {turn} waited on the frozen store"
        assert assert_openai_error(refused, 503)["code"] == "store_unavailable"
        assert refused.headers["retry-after"] == "5"
    began = time.monotonic()
    responses = httpx.post(
        f"{gateway.url}/responses",
        json={"model": "gpt-4o", "input": "still there?"},
        headers={"authorization": f"Bearer {gateway.key}"},
        timeout=30,
    )
    assert_openai_error(responses, 503)
    assert_openai_error(gateway.post(chat_body(), key="ctk-never-seen"), 503)
    assert time.monotonic() - began <= 3.0
    pg.thaw()
    thawed = time.monotonic()
    until(lambda: gateway.post(chat_body()).status_code == 200, seconds=10)
    assert time.monotonic() - thawed <= 10
    until(lambda: gateway.healthz().status_code == 200, seconds=5)  # probed once a second


def test_passthrough_answers_from_the_upstream_while_the_store_is_down(
    pg: PgServer, pg_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(pg_url, on_store_error="passthrough", max_tokens=321)
    messages = conversation(12)
    assert gateway.post(json.dumps({"model": "gpt-4o", "messages": messages})).status_code == 200
    pg.stop()
    answered = gateway.post(json.dumps({"model": "gpt-4o", "messages": messages}))
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == "Gateway says hi"
    sent = gateway.upstream.requests[-1]
    assert sent["messages"] == messages and sent["max_tokens"] == 321
    assert gateway.healthz().json()["passthrough_requests"] == 1
    # a key never seen cannot be checked while the store is down
    assert_openai_error(gateway.post(chat_body(), key="ctk-never-seen"), 503)
    pg.start()
    assert gateway.post(chat_body()).status_code == 200


# -- bad input ---------------------------------------------------------------------------

LONG = "x" * 300
DEEP = 100_000
BAD_INPUTS: list[tuple[str, bytes, dict[str, str], int, str | None]] = [
    ("long conversation id", chat_body(), {"x-conversation-id": LONG}, 400, "X-Conversation-Id"),
    ("long user header", chat_body(), {"x-user-id": LONG}, 400, "X-User-Id"),
    ("control character in user", chat_body(), {"x-user-id": "a\tb"}, 400, "X-User-Id"),
    ("long user field", chat_body(user=LONG), {}, 400, "user"),
    ("user not a string", chat_body(user=42), {}, 400, "user"),
    ("messages null", chat_body(messages=None), {}, 400, "messages"),
    ("messages an object", chat_body(messages={"role": "user"}), {}, 400, "messages"),
    ("model null", chat_body(model=None), {}, 400, "model"),
    ("model a number", chat_body(model=123), {}, 400, "model"),
    ("max_tokens text", chat_body(max_tokens="abc"), {}, 400, "max_tokens"),
    ("max_tokens negative", chat_body(max_tokens=-5), {}, 400, "max_tokens"),
    ("stream text", chat_body(stream="yes"), {}, 400, "stream"),
    ("max_tokens 2**31", chat_body(max_tokens=2**31), {}, 400, "max_tokens"),
    ("max_tokens 10**30", chat_body(max_tokens=10**30), {}, 400, "max_tokens"),
    ("max_tokens over gpt-4o's limit", chat_body(max_tokens=16_385), {}, 400, "max_tokens"),
    (
        "max_completion_tokens 2**31",
        chat_body(max_completion_tokens=2**31),
        {},
        400,
        "max_completion_tokens",
    ),
    ("temperature NaN", chat_body(temperature=float("nan")), {}, 400, None),
    ("temperature Infinity", chat_body(temperature=float("inf")), {}, 400, None),
    ("top_p -Infinity", chat_body(top_p=float("-inf")), {}, 400, None),
    ("temperature 1e400", chat_body()[:-1] + b', "temperature": 1e400}', {}, 400, None),
    (
        "NaN in a message",
        chat_body()[:-1] + b', "messages": [{"role": "user", "content": NaN}]}',
        {},
        400,
        None,
    ),
    ("a 5,000-digit integer", chat_body()[:-1] + b', "seed": ' + b"9" * 5000 + b"}", {}, 400, None),
    (
        "messages nested 100,000 deep",
        b'{"model": "gpt-4o", "messages": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        {},
        400,
        None,
    ),
    ("unclosed nesting", b'{"model": "gpt-4o", "messages": ' + b"[" * DEEP, {}, 400, None),
    (
        "a deep extra field",
        b'{"model": "gpt-4o", "messages": [], "metadata": ' + b'{"a":' * 500 + b"1" + b"}" * 501,
        {},
        400,
        None,
    ),
    ("a message not an object", chat_body(messages=["hi"]), {}, 400, "messages[0]"),
    ("invalid JSON", b"{not json", {}, 400, None),
    ("not an object", b"[1, 2]", {}, 400, None),
    (
        "over the size limit",
        chat_body(messages=[{"role": "user", "content": "x" * 600_000}]),
        {},
        413,
        None,
    ),
]


@pytest.mark.parametrize(
    ("content", "headers", "status", "param"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_a_4xx_and_stores_nothing(
    db_url: str,
    running_gateway: Callable[..., Running],
    content: bytes,
    headers: dict[str, str],
    status: int,
    param: str | None,
) -> None:
    gateway = running_gateway(db_url, max_body_bytes=500_000)
    before = gateway.rows()
    error = assert_openai_error(gateway.post(content, **headers), status)
    if param is not None:
        assert error["param"] == param
    assert gateway.rows() == before
    assert gateway.upstream.requests == []


def responses_body(extra: bytes = b"") -> bytes:
    return b'{"model": "gpt-4o", "input": "hi"' + extra + b"}"


RESPONSES_BAD: list[tuple[str, bytes, int, str | None]] = [
    (
        "max_output_tokens 2**31",
        responses_body(b', "max_output_tokens": 2147483648'),
        400,
        "max_output_tokens",
    ),
    (
        "max_output_tokens 10**30",
        responses_body(b', "max_output_tokens": 1' + b"0" * 30),
        400,
        "max_output_tokens",
    ),
    (
        "max_output_tokens text",
        responses_body(b', "max_output_tokens": "many"'),
        400,
        "max_output_tokens",
    ),
    ("temperature NaN", responses_body(b', "temperature": NaN'), 400, None),
    ("temperature Infinity", responses_body(b', "temperature": Infinity'), 400, None),
    ("temperature 1e400", responses_body(b', "temperature": 1e400'), 400, None),
    (
        "input nested 100,000 deep",
        responses_body(b', "metadata": ' + b"[" * DEEP + b"]" * DEEP),
        400,
        None,
    ),
    ("invalid JSON", b"{not json", 400, None),
    (
        "over the size limit",
        responses_body(b', "instructions": "' + b"x" * 600_000 + b'"'),
        413,
        None,
    ),
]


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [case[1:] for case in RESPONSES_BAD],
    ids=[case[0] for case in RESPONSES_BAD],
)
def test_the_responses_route_reads_bodies_with_the_same_limits(
    db_url: str,
    running_gateway: Callable[..., Running],
    content: bytes,
    status: int,
    param: str | None,
) -> None:
    """One body reader for every route: /v1/responses refuses what chat completions does,
    stores nothing, and the store stays healthy."""
    gateway = running_gateway(db_url, max_body_bytes=500_000)
    before = gateway.rows()
    refused = httpx.post(
        f"{gateway.url}/responses",
        content=content,
        headers={"authorization": f"Bearer {gateway.key}", "content-type": "application/json"},
        timeout=30,
    )
    error = assert_openai_error(refused, status)
    if param is not None:
        assert error["param"] == param
    assert gateway.rows() == before and gateway.upstream.requests == []
    assert gateway.healthz().status_code == 200


def test_numbers_out_of_range_leave_the_store_healthy(
    db_url: str, running_gateway: Callable[..., Running]
) -> None:
    """2**31 once broke a PostgreSQL column and /healthz with it: now a 400, and the
    store stays up (probed after each refusal)."""
    gateway = running_gateway(db_url)
    for _ in range(3):
        assert_openai_error(gateway.post(chat_body(max_tokens=2**31)), 400)
        assert gateway.healthz().status_code == 200
    assert gateway.post(chat_body(max_tokens=16_384)).status_code == 200
    assert gateway.upstream.requests[-1]["max_tokens"] == 16_384


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    """No Content-Length (chunked): refused once the limit is passed."""
    gateway = running_gateway(sqlite_url, max_body_bytes=100_000)
    pieces = (b'{"model": "gpt-4o", "messages": [' + b'"x",' * 10_000 for _ in range(4))
    error = assert_openai_error(gateway.post(pieces), 413)
    assert error["code"] == "body_too_large" and gateway.rows() == 0


def test_unknown_paths_and_methods_answer_json(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(sqlite_url)
    root = gateway.url.removesuffix("/v1")
    assert_openai_error(httpx.get(f"{root}/no-such-thing"), 404)
    assert_openai_error(httpx.get(f"{gateway.url}/chat/completions"), 405)


def test_the_depth_scan_agrees_with_the_parser() -> None:
    for depth in (1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1):
        nested = "[" * depth + "]" * depth
        assert too_deep(nested.encode()) == (depth > MAX_DEPTH)
    wide = json.dumps([[{"a": [1]}] for _ in range(1000)]).encode()
    assert not too_deep(wide)  # many brackets, shallow
    inside_a_string = json.dumps({"content": "[" * 10_000 + '\\"{'}).encode()
    assert not too_deep(inside_a_string)


# -- identity and keys ---------------------------------------------------------------------


def test_a_tenant_named_like_another_tenants_end_user_gets_its_own_history(
    db_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(db_url)
    impostor, _ = create_key(gateway.store, "acme:bob")
    messages = json.dumps({"model": "gpt-4o", "messages": conversation(3)})
    assert gateway.post(messages, **{"x-user-id": "bob"}).status_code == 200
    assert gateway.post(messages, key=impostor).status_code == 200
    with gateway.store.engine.connect() as connection:
        users = sorted(connection.execute(select(REQUESTS.c.user)).scalars())
    assert users == ["acme:bob", "acme\\:bob"]
    assert tenant_user("acme", "end-user-7") == "acme:end-user-7"  # the stored form so far
    assert tenant_user("acme", None) == "acme"


def test_an_end_user_id_that_does_not_fit_with_its_tenant_is_refused(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(sqlite_url)
    fits = gateway.post(chat_body(), **{"x-user-id": "u" * (200 - len("acme:"))})
    assert fits.status_code == 200
    error = assert_openai_error(gateway.post(chat_body(), **{"x-user-id": "u" * 199}), 400)
    assert "at most 195 characters" in error["message"]


def test_long_keys_are_refused_unread_and_unknown_keys_are_forgotten(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(sqlite_url)
    long_key = "ctk-" + secrets.token_urlsafe(9_000)
    assert_openai_error(gateway.post(chat_body(), key=long_key), 401)
    cache = KeyCache(gateway.state.trimmer.keys.authenticate, 60.0, entries=50)

    async def try_keys() -> list[Any]:
        return [await cache.lookup(f"ctk-unknown-{n}") for n in range(300)]

    assert asyncio.run(try_keys()) == [None] * 300
    assert len(cache) == 50
    assert asyncio.run(cache.lookup(long_key)) is None and len(cache) == 50
    assert asyncio.run(cache.lookup(gateway.key)) is not None and len(cache) == 51


def test_healthz_probes_the_store_at_most_once_a_second() -> None:
    probes: list[float] = []
    now = [100.0]

    def probe() -> str:
        probes.append(now[0])
        return "rev"

    health = StoreHealth(probe, seconds=1.0, clock=lambda: now[0])

    async def checks() -> None:
        for _ in range(5):
            assert (await health.check()).ok
        now[0] += 1.5
        await health.check()

    asyncio.run(checks())
    assert probes == [100.0, 101.5]


# -- streams that end badly ----------------------------------------------------------------


def attempts(gateway: Running) -> list[Any]:
    with gateway.store.engine.connect() as connection:
        return list(
            connection.execute(
                select(ATTEMPTS.c.outcome, USAGE.c.completion_tokens, USAGE.c.estimated).join(
                    USAGE, USAGE.c.request_id == ATTEMPTS.c.request_id
                )
            )
        )


def test_a_client_that_leaves_a_stream_closes_it_upstream_and_is_recorded(
    db_url: str, running_gateway: Callable[..., Running]
) -> None:
    words = " ".join(f"word{n}" for n in range(60))
    gateway = running_gateway(
        db_url,
        reply=lambda _body: Reply(words, event_delay=0.1, completion_tokens=60),
        user_tokens_per_minute=1_000_000,
    )
    body = chat_body(stream=True)
    headers = {"authorization": f"Bearer {gateway.key}", "content-type": "application/json"}
    with httpx.stream(
        "POST", f"{gateway.url}/chat/completions", content=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    until(lambda: len(attempts(gateway)) == 1)
    ((outcome, completion_tokens, estimated),) = attempts(gateway)
    assert outcome in ("stream_closed", "stream_error")
    assert estimated and completion_tokens < 60
    until(lambda: gateway.upstream.streams_cut == 1)
    used = gateway.state.trimmer.quota_usage("acme")
    assert 0 < used["minute"] < 1024  # settled to the usage so far, not the reservation


def test_an_upstream_that_breaks_mid_stream_is_told_in_band_and_recorded(
    db_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(
        db_url, reply=lambda _body: Reply("one two three four", break_after=3)
    )
    raw = gateway.post(chat_body(stream=True))
    assert raw.status_code == 200
    events = [line for line in raw.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["error"]["type"] == "upstream_error"
    until(lambda: len(attempts(gateway)) == 1)
    assert attempts(gateway)[0][0] == "stream_error"


# -- the LLM summarizer answering nothing ----------------------------------------------------


def test_empty_summaries_still_trim_through_the_gateway(
    db_url: str, running_gateway: Callable[..., Running]
) -> None:
    """Every summary call answers an empty text: every turn is answered, and the
    fallback keeps the prompt at most half the conversation."""

    def reply(body: dict[str, Any]) -> Reply:
        if body.get("model") == SUMMARY_MODEL:
            return Reply("", prompt_tokens=400, completion_tokens=0)
        return answer(body)

    gateway = running_gateway(db_url, reply=reply, summarizer=None, summary_model=SUMMARY_MODEL)
    client = openai.OpenAI(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    trimmer = gateway.state.trimmer
    sent = talk(client, 60, lambda: trimmer.wait_for_background(10))
    client.close()
    assert len(sent) == 120
    assert any(r.get("model") == SUMMARY_MODEL for r in gateway.upstream.requests)
    last = chat_requests(gateway.upstream)[-1]["messages"]
    assert len(chat_requests(gateway.upstream)) == 60
    assert len(last) <= len(sent) // 2
    assert trimmer.report().totals.summary_failures >= 1


CUT = json.dumps({"id": "x", "object": "chat.completion", "pad": "." * 500}).encode()[:500]


def test_an_upstream_answer_cut_short_is_a_502_recorded_with_its_quota_settled(
    db_url: str, running_gateway: Callable[..., Running]
) -> None:
    """The upstream says Content-Length 500, sends 25 bytes and closes: a 502 as for any
    upstream failure, the attempt recorded as ``answer_cut``, the quota settled to the
    prompt (nothing came back), and the next request served."""
    replies = iter([Reply(raw=CUT, raw_cut=25)])
    gateway = running_gateway(
        db_url,
        reply=lambda body: next(replies, answer(body)),
        user_tokens_per_minute=100_000,
    )
    error = assert_openai_error(gateway.post(chat_body(max_tokens=900)), 502)
    assert error["code"] == "upstream_answer_cut" and error["type"] == "upstream_error"
    with gateway.store.engine.connect() as connection:
        (attempt,) = connection.execute(select(ATTEMPTS)).all()
        (request,) = connection.execute(select(REQUESTS)).all()
        windows = connection.execute(select(WINDOWS.c.tokens)).scalars().all()
    assert attempt.outcome == "answer_cut" and attempt.request_id == request.id
    assert windows and set(windows) == {request.prompt_tokens}  # not prompt + 900 reserved
    assert gateway.post(chat_body()).status_code == 200


def test_a_cut_answer_on_the_responses_route_is_a_502(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(sqlite_url, reply=lambda _body: Reply(raw=CUT, raw_cut=25))
    cut = httpx.post(
        f"{gateway.url}/responses",
        json={"model": "gpt-4o", "input": "hi"},
        headers={"authorization": f"Bearer {gateway.key}"},
        timeout=30,
    )
    assert assert_openai_error(cut, 502)["code"] == "upstream_answer_cut"
    with gateway.store.engine.connect() as connection:
        assert connection.execute(select(ATTEMPTS.c.outcome)).scalars().all() == ["answer_cut"]


def test_an_unexpected_failure_is_a_json_500(
    sqlite_url: str, running_gateway: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream that answers 200 with a body that is not JSON: nothing the gateway
    expects, so the catch-all answers (as JSON, logged with its traceback)."""
    gateway = running_gateway(sqlite_url, reply=lambda _body: Reply(raw=b"<html>oops"))
    error = assert_openai_error(gateway.post(chat_body()), 500)
    assert error["code"] == "internal_error" and "oops" not in error["message"]
    assert "unexpected error answering POST /v1/chat/completions" in caplog.text


def test_fields_the_sdk_does_not_know_are_forwarded(
    sqlite_url: str, running_gateway: Callable[..., Running]
) -> None:
    gateway = running_gateway(sqlite_url)
    answered = gateway.post(chat_body(vendor_option={"beam": 2}, max_tokens=None))
    assert answered.status_code == 200, answered.text
    assert gateway.upstream.requests[-1]["vendor_option"] == {"beam": 2}
