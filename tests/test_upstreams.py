"""The pool of upstreams on its own (no database, no HTTP): the choice by budget, turns
for ties, cool-downs on an injected clock, model names per upstream, labels; and the
send plan driven by hand (failover before the retry wait and the fallback model)."""

from __future__ import annotations

import math
from typing import Any, cast

import httpx2
import openai
import pytest

from context_trimmer import ConfigurationError, CoolDown, RateLimits, RetryPolicy, Upstream
from context_trimmer._client.send_plan import Choose, Send, SendState, send_plan
from context_trimmer._client.upstreams import Member, Pool, host_of, members
from context_trimmer._client.wrapped_client import pool_of
from context_trimmer._store.ratelimit import Headroom


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(*models: object, threshold: int = 2, clock: Clock | None = None) -> Pool:
    specs = [(f"u{i}", f"http://127.0.0.1:{9000 + i}/v1", m, None) for i, m in enumerate(models)]
    policy = CoolDown(threshold=threshold, seconds=10, max_seconds=40, clock=clock or Clock())
    return Pool(members(specs), policy)


def test_the_most_budget_left_goes_first() -> None:
    three = pool(None, None, None)
    room = {0: Headroom(10_000, None), 1: Headroom(90_000, None), 2: Headroom(50_000, 3)}
    # Requests of 1,000 tokens: 10, 90 and min(50, 3) = 3 more fit.
    assert three.order("gpt-4o", room, 1_000) == [1, 0, 2]
    # The requests limit is what binds upstream 2; tokens bind the others.
    assert Headroom(50_000, 3).fits(1_000) == 3
    assert Headroom(None, None).fits(1_000) == math.inf
    assert Headroom(-5, 10).fits(100) == 0.0  # over-reserved by other workers


def test_an_unknown_budget_ranks_above_a_known_one_and_ties_take_turns() -> None:
    two = pool(None, None)
    assert two.order("gpt-4o", {0: Headroom(10, 10), 1: None}, 1)[0] == 1
    firsts = [two.order("gpt-4o", {}, 100)[0] for _ in range(6)]
    assert firsts == [1, 0, 1, 0, 1, 0]  # the call above took the first turn


def test_only_upstreams_serving_the_model_are_tried_under_their_own_names() -> None:
    three = pool(None, ["gpt-4o-mini"], {"gpt-4o": "prod-4o", "gpt-4o-mini": "prod-mini"})
    assert sorted(three.order("gpt-4o", {}, 1)) == [0, 2]
    assert sorted(three.order("gpt-4o-mini", {}, 1)) == [0, 1, 2]
    assert three.model_name(2, "gpt-4o") == "prod-4o"
    assert three.model_name(1, "gpt-4o-mini") == "gpt-4o-mini"
    assert three.model_name(0, "gpt-4.1") == "gpt-4.1"
    only_mapped = pool(["gpt-4o-mini"], {"gpt-4o": "prod-4o"})
    only_mapped.check("gpt-4o")
    with pytest.raises(ConfigurationError, match=r"no upstream serves model 'gpt-5'.*gpt-4o"):
        only_mapped.check("gpt-5")


def test_a_failing_upstream_cools_down_then_is_tried_again() -> None:
    clock = Clock()
    two = pool(None, None, threshold=2, clock=clock)
    two.failed(0)
    assert 0 in two.order("m", {}, 1) and two.cooling() == []  # one failure: still tried
    two.failed(0)
    assert two.cooling() == ["u0@127.0.0.1:9000"]
    assert [two.order("m", {}, 1) for _ in range(3)] == [[1], [1], [1]]
    clock.now += 9.9
    assert two.order("m", {}, 1) == [1]
    clock.now += 0.1  # the cool-down (10 s) is over
    assert sorted(two.order("m", {}, 1)) == [0, 1]
    two.failed(0)  # failed at once again: twice as long
    clock.now += 19.9
    assert two.order("m", {}, 1) == [1]
    clock.now += 0.1
    assert sorted(two.order("m", {}, 1)) == [0, 1]
    two.succeeded(0)  # recovered: a fresh start, two failures needed again
    two.failed(0)
    assert two.cooling() == []


def test_cool_downs_double_up_to_the_maximum() -> None:
    clock = Clock()
    one = pool(None, threshold=1, clock=clock)
    waits = []
    for _ in range(5):
        one.failed(0)
        start = clock.now
        while one.cooling():
            clock.now += 1
        waits.append(clock.now - start)
    assert waits == [10, 20, 40, 40, 40]


def test_when_every_upstream_cools_down_all_are_tried_anyway() -> None:
    clock = Clock()
    two = pool(None, ["gpt-4o"], threshold=1, clock=clock)
    two.failed(0)
    assert two.order("gpt-4o", {}, 1) == [1]
    two.failed(1)
    assert sorted(two.order("gpt-4o", {}, 1)) == [0, 1]
    assert two.order("gpt-4o-mini", {}, 1) == [0]  # the only one serving it, cooling or not


def test_labels_name_the_host_never_a_key_and_are_unique() -> None:
    made = members(
        [
            (None, "https://api.openai.com/v1", None, None),
            (None, "https://api.openai.com/v1", None, None),
            ("east", "https://user:secret@east.example.com/openai", None, RateLimits(1000)),
        ]
    )
    assert [m.label for m in made] == [
        "api.openai.com",
        "api.openai.com#2",
        "east@east.example.com",
    ]
    assert made[2].limits == RateLimits(1000)
    assert host_of("http://127.0.0.1:8080/v1") == "127.0.0.1:8080"
    assert len(members([("x" * 300, "http://h/v1", None, None)])[0].label) <= 200


def test_bad_model_lists_and_cool_downs_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="models must be a list of names or a mapping"):
        members([("a", "http://h/v1", "gpt-4o", None)])
    with pytest.raises(ConfigurationError, match="model names must be non-empty strings"):
        members([("a", "http://h/v1", {"gpt-4o": ""}, None)])
    with pytest.raises(ConfigurationError, match="CoolDown needs"):
        CoolDown(threshold=0)
    with pytest.raises(ConfigurationError, match="at least one upstream"):
        Pool([])
    assert Member("a", None, None).serves("anything")


def test_a_pool_of_clients_is_all_sync_or_all_async() -> None:
    sync = openai.OpenAI(base_url="http://127.0.0.1:1/v1", api_key="k")
    azure = openai.AzureOpenAI(
        base_url="http://127.0.0.1:2/openai", api_key="k2", api_version="2024-10-21"
    )
    made, clients = pool_of([sync, Upstream(azure, name="az", models={"gpt-4o": "dep"})])
    assert [m.label for m in made.members] == ["127.0.0.1:1", "az@127.0.0.1:2"]
    assert clients == [sync, azure]
    with pytest.raises(ConfigurationError, match="clients of one kind"):
        pool_of([sync, openai.AsyncOpenAI(base_url="http://127.0.0.1:3/v1", api_key="k")])
    with pytest.raises(ConfigurationError, match="got str"):
        pool_of([sync, "not a client"])  # type: ignore[list-item]


def rate_limited() -> openai.RateLimitError:
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    return openai.RateLimitError(
        "limited", response=httpx2.Response(429, request=request), body=None
    )


def refused() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=httpx2.Request("POST", "http://127.0.0.1:1/v1"))


def walk(
    state: SendState, policy: RetryPolicy, answers: dict[int, list[Any]]
) -> tuple[Any, list[Any]]:
    """Drive the send plan of ``state`` by hand (no governor): ``answers[upstream]`` is
    what each Send to it gets (an exception is raised into the plan); Choose gets the
    pool's order; Sleep nothing."""
    plan = send_plan(state, None, policy)
    effects: list[Any] = []
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = plan.throw(error) if error is not None else plan.send(value)
        except StopIteration as stop:
            return stop.value, effects
        effects.append(effect)
        value, error = None, None
        if isinstance(effect, Choose):
            value = state.pool.order(effect.model, {}, 1)
        elif isinstance(effect, Send):
            answer = answers[effect.upstream].pop(0)
            value, error = (None, answer) if isinstance(answer, BaseException) else (answer, None)


def plan_state(pool_: Pool, fallback: str | None = None) -> SendState:
    models = ["gpt-4o", *([fallback] if fallback else [])]
    return SendState(cast(Any, None), [], pool_, models, tokens=100)


def test_the_send_plan_moves_on_before_waiting_or_falling_back() -> None:
    state = plan_state(pool(None, None), fallback="gpt-4o-mini")
    policy = RetryPolicy(max_retries=1, random=lambda: 0.5)
    answer, effects = walk(
        state,
        policy,
        {0: [rate_limited(), refused(), "mini from A"], 1: [refused(), rate_limited()]},
    )
    assert answer == "mini from A"
    sends = [(e.model, e.upstream) for e in effects if isinstance(e, Send)]
    # Both upstreams, a wait, both again in the next turn's order (the one retry), then
    # the fallback model: the last failure was a refused connection, but the model was
    # rate-limited where it answered.
    assert sends == [("gpt-4o", 0), ("gpt-4o", 1), ("gpt-4o", 1), ("gpt-4o", 0), ("gpt-4o-mini", 0)]
    assert [type(e).__name__ for e in effects].count("Sleep") == 1
    assert (state.attempts, state.rate_limited, state.fallback_model) == (5, 2, "gpt-4o-mini")
    assert state.upstream == 0


def test_the_send_plan_does_not_move_on_after_a_bad_request() -> None:
    state = plan_state(pool(None, None))
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    bad = openai.BadRequestError("bad", response=httpx2.Response(400, request=request), body=None)
    with pytest.raises(openai.BadRequestError):
        walk(state, RetryPolicy(max_retries=3), {0: [bad], 1: ["never"]})
    assert state.attempts == 1
