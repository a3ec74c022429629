"""The chain cache: only new messages are hashed, entries grow in place, memory is bounded."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from context_trimmer._trimming.hashing import ChainCache, chain_digests, digest_reader


def chat(turns: int, tag: str = "") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You help."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{tag} question {turn}"})
        messages.append({"role": "assistant", "content": f"{tag} answer {turn}"})
    return messages


def hexes(messages: list[dict[str, Any]], user: str | None = None) -> list[str]:
    return [d.hex() for d in chain_digests(messages, user)]


def prepare(cache: ChainCache, messages: list[dict[str, Any]], conversation: str | None) -> Any:
    known = cache.known_prefix(messages, None, conversation)
    return known, cache.digests(messages, None, known, conversation)


def test_each_turn_reuses_what_is_known_and_views_keep_their_length() -> None:
    cache = ChainCache()
    messages = chat(5)
    known, first = prepare(cache, messages, "c1")
    assert known == 0 and list(first) == hexes(messages)
    longer = [*messages, {"role": "user", "content": "more"}]
    known, second = prepare(cache, longer, "c1")
    assert known == len(messages)
    assert list(second) == hexes(longer)
    assert len(first) == len(messages) and list(first) == hexes(messages)  # unchanged view


def test_a_view_reads_its_digests_as_bytes_within_its_own_length() -> None:
    cache = ChainCache()
    messages = chat(3)
    _, view = prepare(cache, messages, "c1")
    prepare(cache, [*messages, {"role": "user", "content": "more"}], "c1")  # grows in place
    read, from_hex = digest_reader(view), digest_reader(list(view))
    assert [read(i) for i in range(len(view))] == [from_hex(i) for i in range(len(view))]
    assert [read(i).hex() for i in range(len(view))] == hexes(messages)
    for outside in (len(messages), -1):  # the grown entry's digest is not this view's
        with pytest.raises(IndexError):
            read(outside)


def test_an_edit_in_place_is_seen_and_hashed_again() -> None:
    cache = ChainCache()
    messages = chat(5)
    prepare(cache, messages, "c1")
    messages[3]["content"] = "edited in place"
    known, digests = prepare(cache, messages, "c1")
    assert known == 3
    assert list(digests) == hexes(messages)


def test_conversations_that_start_alike_keep_their_own_entries() -> None:
    cache = ChainCache()
    a, b = chat(20, "a"), chat(20, "b")
    b[1] = a[1] = {"role": "user", "content": "Hello!"}  # same system prompt and greeting
    prepare(cache, a, "a")
    prepare(cache, b, "b")
    assert prepare(cache, a, "a")[0] == len(a)
    assert prepare(cache, b, "b")[0] == len(b)


def test_memory_stops_growing_at_the_byte_budget() -> None:
    budget = 8 * 1024 * 1024
    cache = ChainCache(budget)
    text = "x" * 4096

    def conversation(number: int) -> list[dict[str, Any]]:
        return [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"{number} {i} {text}"}
            for i in range(20)
        ]

    tracemalloc.start()  # before anything is cached, so evictions count as frees
    for number in range(150):
        prepare(cache, conversation(number), f"c{number}")
    assert cache.held_bytes <= budget
    before = tracemalloc.get_traced_memory()[0]
    for number in range(150, 300):
        prepare(cache, conversation(number), f"c{number}")
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    text_size = 150 * 20 * 4096
    assert grown <= text_size // 3, (grown, text_size)
    assert cache.held_bytes <= budget
