"""The warm path's rule: an earlier message changed between calls is still seen.

``ChainCache.known_prefix`` proves the known prefix unchanged in O(new) when the list
grew and holds the same objects (see its docstring); any other change takes the full
comparison. Each case here checks the known count against the true common prefix, the
digests against a cold hash, and, through prepare(), the request against a cold one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_trimmer import Prepared, Trimmer
from context_trimmer._trimming.hashing import WINDOW, ChainCache, chain_digests

Messages = list[dict[str, Any]]


def chat(turns: int) -> Messages:
    messages: Messages = [{"role": "system", "content": "You help with trips."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"question {turn} about Lisbon"})
        messages.append({"role": "assistant", "content": f"answer {turn} about Lisbon"})
    return messages


def common_prefix(old: Messages, new: Messages) -> int:
    length = min(len(old), len(new))
    return next((i for i in range(length) if old[i] != new[i]), length)


def seen(cache: ChainCache, messages: Messages) -> int:
    known = cache.known_prefix(messages, None, "c")
    digests = cache.digests(messages, None, known, "c")
    assert list(digests) == [d.hex() for d in chain_digests(messages)]
    return known


def replace_early(m: Messages) -> None:
    m[3] = {"role": "user", "content": "replaced by a new dict"}


def delete_early(m: Messages) -> None:
    del m[3:5]


def insert_early(m: Messages) -> None:
    m[3:3] = [{"role": "user", "content": "inserted"}, {"role": "assistant", "content": "ok"}]


def swap_early(m: Messages) -> None:
    m[3], m[5] = m[5], m[3]


def system_edited_in_place(m: Messages) -> None:
    m[0]["content"] = "You help with trips. Today is Monday."


def recent_edited_in_place(m: Messages) -> None:
    m[-3]["content"] = "edited in place, same dict"


def key_added_in_place(m: Messages) -> None:
    m[-2]["name"] = "maria"


EDITS: list[Callable[[Messages], None]] = [
    replace_early,
    delete_early,
    insert_early,
    swap_early,
    system_edited_in_place,
    recent_edited_in_place,
    key_added_in_place,
]


@pytest.mark.parametrize("edit", EDITS, ids=lambda f: f.__name__)
def test_an_earlier_change_then_a_new_turn_is_seen(edit: Callable[[Messages], None]) -> None:
    cache = ChainCache()
    messages = chat(40)
    seen(cache, messages)
    before = copy.deepcopy(messages)
    edit(messages)
    messages.append({"role": "user", "content": "and the hotel?"})
    expected = common_prefix(before, messages)
    assert expected < len(before)
    assert seen(cache, messages) == expected


def test_a_list_that_did_not_grow_is_compared_whole() -> None:
    cache = ChainCache()
    messages = chat(40)
    seen(cache, messages)
    messages[7]["content"] = "edited in place, far from the end"  # outside the window
    assert seen(cache, messages) == 7


def test_new_equal_objects_and_other_sequences_are_known() -> None:
    cache = ChainCache()
    messages = chat(30)
    seen(cache, messages)
    fresh = [*copy.deepcopy(messages), {"role": "user", "content": "next"}]  # a parsed body
    assert seen(cache, fresh) == len(messages)
    as_tuple = (*fresh, {"role": "assistant", "content": "sure"})
    known = cache.known_prefix(as_tuple, None, "c")
    assert known == len(fresh)


def test_the_documented_blind_spot() -> None:
    """An old dict mutated in place outside the compared positions while the list grew
    is not seen (the rule in ``known_prefix``): the cost of staying O(new)."""
    cache = ChainCache()
    messages = chat(40)
    seen(cache, messages)
    middle = len(messages) - WINDOW - 10
    messages[middle]["content"] = "mutated in place"
    messages.append({"role": "user", "content": "next"})
    assert cache.known_prefix(messages, None, "c") == len(messages) - 1


OPERATIONS = st.sampled_from(
    ["append", "replace", "delete", "insert", "swap", "edit_system", "edit_recent", "same"]
)


def apply(operation: str, messages: Messages, at: int, turn: int) -> None:
    at = 1 + at % (len(messages) - 1)
    if operation == "replace":
        messages[at] = {**messages[at], "content": f"replaced {turn}"}
    elif operation == "delete" and len(messages) > 2:
        del messages[at]
    elif operation == "insert":
        messages.insert(at, {"role": "user", "content": f"inserted {turn}"})
    elif operation == "swap":
        messages[at], messages[-1] = messages[-1], messages[at]
    elif operation == "edit_system":
        messages[0]["content"] = f"system prompt {turn}"
    elif operation == "edit_recent":
        messages[-1 - at % WINDOW]["content"] = f"edited {turn}"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(OPERATIONS, st.integers(0, 1000), st.integers(0, 3)), max_size=25))
def test_any_sequence_of_changes_gives_the_true_common_prefix(
    steps: list[tuple[str, int, int]],
) -> None:
    cache = ChainCache()
    messages = chat(12)
    seen(cache, messages)
    for turn, (operation, at, added) in enumerate(steps):
        before = copy.deepcopy(messages)
        apply(operation, messages, at, turn)
        messages.extend({"role": "user", "content": f"new {turn} {i}"} for i in range(added))
        assert seen(cache, messages) == common_prefix(before, messages)


def figures(prepared: Prepared) -> tuple[Any, ...]:
    return (
        prepared.messages,
        prepared.prompt_tokens,
        prepared.baseline_tokens,
        prepared.max_tokens,
        prepared.summary_id,
        prepared.messages_folded,
    )


def trimmer(url: str) -> Trimmer:
    return Trimmer(
        url,
        keep_last=4,
        fold_every=2,
        recall_tokens=0,
        summarizer="extractive",
        background=False,
    )


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edit=st.sampled_from(EDITS))
def test_after_an_earlier_change_prepare_equals_a_cold_prepare(
    tmp_path_factory: Any, edit: Callable[[Messages], None]
) -> None:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('w')) / 'h.db'}"
    messages = chat(30)
    with trimmer(url) as warm:
        warm.prepare(messages)
        warm.compact(messages, force=True)
        warm.prepare(messages)
        edit(messages)
        messages.append({"role": "user", "content": "and the hotel?"})
        warm_result = warm.prepare(messages)
    with trimmer(url) as cold:  # a new process's view: nothing cached
        assert figures(cold.prepare(messages)) == figures(warm_result)
