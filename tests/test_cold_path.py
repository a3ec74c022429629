"""The single pass that checks, hashes and copies the usual messages (a cold start).

``ChainCache.chain(..., check=True)`` must do exactly what ``validate_messages`` followed
by the per-message hashing does: the same digests, control positions, copies and size
for any list, and the same error (message, index, field) for any bad one, with nothing
cached then.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_trimmer import InvalidMessagesError
from context_trimmer._arguments import MAX_TEXT_CHARS
from context_trimmer._trimming import hashing as _hashing
from context_trimmer._trimming.hashing import ChainCache, canonical_json, chain_digests
from context_trimmer._validation import validate_messages

LAZY_RUN = _hashing._LAZY_RUN
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
ANY_TEXT = st.text(max_size=12)  # lone surrogates included
PLAIN = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["system", "developer", "user", "assistant"]),
    st.one_of(TEXT, TEXT, TEXT, ANY_TEXT),
)
ODD = st.one_of(
    st.builds(lambda t: {"role": "user", "content": [{"type": "text", "text": t}]}, TEXT),
    st.builds(lambda t: {"role": "user", "content": t, "name": "ann"}, TEXT),
    st.builds(lambda t: {"role": "tool", "content": t}, TEXT),  # answers nothing
    st.builds(lambda t: {"role": t, "content": "x"}, TEXT),
    st.just({"role": ["user"], "content": "x"}),  # unhashable role
    st.just({"role": "user", "content": None}),
    st.just({"role": "user"}),
    st.just(["user", "x"]),
    st.just({"role": "assistant", "content": 3}),
)
CALL = [
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "done"},
]
BLOCK = st.one_of(st.lists(PLAIN, min_size=1, max_size=6), st.lists(ODD, max_size=1), st.just(CALL))


def flat(blocks: list[list[Any]]) -> list[Any]:
    return [message for block in blocks for message in block]


def outcome(cache: ChainCache, messages: list[Any], check: bool, cid: str) -> Any:
    """What one prepare() makes of ``messages``: the error, or the chain and the entry."""
    known = cache.known_prefix(messages, "u", cid)
    try:
        if not check:
            validate_messages(messages, known_valid=known)
        chain = cache.chain(messages, "u", known, cid, check=check)
    except InvalidMessagesError as error:
        return (str(error), error.index, error.field, cache.held_bytes)
    entry = cache._entry(("u", cid))
    assert entry is not None
    return (
        list(chain.hashes),
        [i for i in chain.controls if i < len(messages)],
        [entry.snapshot(i) for i in range(len(entry.refs))],
        [id(m) for m in entry.refs],
        cache.held_bytes,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(PLAIN, min_size=2, max_size=5),
    st.lists(BLOCK, max_size=6),
    st.lists(BLOCK, max_size=4),
)
def test_one_pass_matches_validating_then_hashing(
    start: list[Any], first: list[list[Any]], then: list[list[Any]]
) -> None:
    start = [{"role": "system", "content": "s"}, *start]
    turns = [[*start, *flat(first)], [*start, *flat(first), *flat(then)], turns_edited(start)]
    for lazy_run in (2, 5, 10_000):  # copies made lazily from a few plain messages, or at once
        _hashing._LAZY_RUN = lazy_run
        try:
            fused, separate = ChainCache(), ChainCache()
            for messages in turns:  # a cold start, a turn reusing what is known, an edit
                assert outcome(fused, messages, True, "c") == outcome(
                    separate, messages, False, "c"
                )
        finally:
            _hashing._LAZY_RUN = LAZY_RUN


def turns_edited(start: list[Any]) -> list[Any]:
    """``start`` with its last message's text replaced in place (seen by the full check)."""
    edited = [*start]
    edited[-1] = {**edited[-1], "content": "edited"}
    return edited


def test_a_plain_list_is_hashed_as_before_and_a_bad_text_refused_with_nothing_cached() -> None:
    messages = [{"role": "system", "content": "Be brief."}]
    messages += [{"role": "user", "content": f"question {i} é"} for i in range(50)]
    cache = ChainCache()
    chain = cache.chain(messages, None, 0, "c", check=True)
    assert list(chain.hashes) == [d.hex() for d in chain_digests(messages)]
    assert list(chain.controls) == [0]
    bad = [*messages, {"role": "user", "content": "a\ud800b"}]
    fresh = ChainCache()
    with pytest.raises(InvalidMessagesError, match="not valid Unicode") as error:
        fresh.chain(bad, None, 0, "c", check=True)
    assert error.value.index == len(messages)
    assert fresh.held_bytes == 0


@pytest.mark.parametrize("length", [10, 300])  # copies made at once, and lazily
def test_an_edit_in_place_after_a_cold_start_is_seen(length: int) -> None:
    messages = [{"role": "system", "content": "s"}]
    messages += [{"role": "user", "content": f"q{i}"} for i in range(length)]
    cache = ChainCache()
    cache.chain(messages, None, 0, "c", check=True)
    messages[5]["content"] = "edited in place"  # the same list sent again: full check
    assert cache.known_prefix(messages, None, "c") == 5
    cache = ChainCache()
    cache.chain(messages, None, 0, "c", check=True)
    messages[-2]["role"] = "assistant"  # a recent message, and the list grew
    grown = [*messages, {"role": "user", "content": "more"}]
    assert cache.known_prefix(grown, None, "c") == len(messages) - 2
    known = cache.known_prefix(grown, None, "c")
    chain = cache.chain(grown, None, known, "c", check=True)
    assert list(chain.hashes) == [d.hex() for d in chain_digests(grown)]
    assert cache.known_prefix([*grown, {"role": "user", "content": "x"}], None, "c") == len(grown)


def test_text_over_the_limit_is_refused_in_the_one_pass_too() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]
    messages.append({"role": "user", "content": "y" * (MAX_TEXT_CHARS + 1)})
    cache = ChainCache()
    with pytest.raises(InvalidMessagesError, match="over the limit") as error:
        cache.chain(messages, None, 0, "c", check=True)
    assert error.value.index == 2 and cache.held_bytes == 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=12,
)


@given(st.dictionaries(ANY_TEXT, JSON, max_size=5))
def test_canonical_json_is_what_json_dumps_gives(message: dict[str, Any]) -> None:
    expected = json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(message) == expected
