"""keep_tokens: the verbatim tail's token budget. A fold is due when the tail exceeds
1.5 x keep_tokens; a fold then keeps the longest tail that fits the budget, but never
cuts into the newest user message."""

from __future__ import annotations

from typing import Any

from context_trimmer import Trimmer, count_tokens

SYSTEM = {"role": "system", "content": "You are a support agent for Acme routers."}


def chat(turns: int) -> list[dict[str, Any]]:
    """Turns of uneven length, ending with a user question."""
    messages: list[dict[str, Any]] = [SYSTEM]
    for turn in range(turns):
        detail = "the light blinks amber and then red " * (1 + turn % 3)
        messages.append({"role": "user", "content": f"Router {turn}: {detail}. What now?"})
        messages.append({"role": "assistant", "content": f"Step {turn}: unplug it for {turn}s."})
    messages.append({"role": "user", "content": "It still blinks. Anything else?"})
    return messages


def tail_tokens(messages: list[dict[str, Any]], size: int) -> int:
    """Tokens of the last ``size`` messages, as the store counts them."""
    return count_tokens(messages) - count_tokens(messages[:-size])


def trimmer(url: str, keep_tokens: int) -> Trimmer:
    # keep_last and fold_every are out of reach: only the token budget decides.
    return Trimmer(
        url,
        keep_last=100,
        fold_every=100,
        keep_tokens=keep_tokens,
        recall_tokens=0,  # the layout alone: no recalled message before the newest turn
        summarizer="extractive",
        background=False,
    )


def smallest_budget_not_due(tokens: int) -> int:
    """The smallest keep_tokens whose 1.5x threshold (integer) is at least ``tokens``."""
    budget = 1
    while budget * 3 // 2 < tokens:
        budget += 1
    return budget


def test_a_fold_is_due_exactly_when_the_tail_exceeds_one_and_a_half_budgets(
    db_url: str,
) -> None:
    messages = chat(7)
    whole = count_tokens(messages) - 3  # no summary yet: the tail is every message
    budget = smallest_budget_not_due(whole)
    assert budget * 3 // 2 == whole  # the tail sits exactly on the threshold: not over it
    with trimmer(db_url, budget) as roomy:
        assert roomy.prepare(messages).fold_pending is False
        assert roomy.compact(messages).reason == "no fold due"
    with trimmer(db_url, budget - 1) as tight:
        assert tight.prepare(messages).fold_pending is True
        folded = tight.compact(messages)
        assert folded.summary_id is not None
        after = tight.prepare(messages)
    assert after.summary_id == folded.summary_id
    assert after.fold_pending is False


def test_after_a_fold_the_tail_is_the_longest_that_fits_the_budget(db_url: str) -> None:
    messages = chat(8)
    budget = tail_tokens(messages, 5) + 2  # five messages fit, six do not
    assert tail_tokens(messages, 6) > budget
    with trimmer(db_url, budget) as instance:
        instance.prepare(messages)
        result = instance.compact(messages)
        prepared = instance.prepare(messages)
    assert prepared.summary_id == result.summary_id is not None
    assert prepared.messages[0] == SYSTEM
    assert prepared.messages[1]["content"].startswith("Summary of the earlier conversation")
    assert prepared.messages[2:] == messages[-5:]
    assert prepared.messages_folded == len(messages) - 1 - 5
    assert prepared.prompt_tokens == count_tokens(prepared.messages)


def test_the_newest_user_message_is_kept_whole_even_over_budget(db_url: str) -> None:
    messages = chat(4)
    assert tail_tokens(messages, 1) > 5
    with trimmer(db_url, 5) as instance:
        instance.prepare(messages)
        assert instance.compact(messages).summary_id is not None
        prepared = instance.prepare(messages)
    assert prepared.messages[2:] == messages[-1:]
    assert prepared.messages_folded == len(messages) - 2
