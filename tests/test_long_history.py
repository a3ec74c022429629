"""The first prepare() of a long history the store has never seen (``_trimming.cut``).

With folds in the background, the request is served at once, cut like trim_messages
would cut it (plus recall), within the window and ``max_prompt_tokens``; every message
is stored; the fold runs after it and the next prepare() uses its summary. With
synchronous folds it folds first, as before.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select

from context_trimmer import SummaryRequest, SummaryResult, Trimmer, count_tokens
from context_trimmer._store.history import MESSAGES
from context_trimmer._store.ledger import REQUESTS
from context_trimmer._trimming.cut import LARGE_FOLD_TOKENS

SYSTEM = {"role": "system", "content": "You are a concise assistant for Acme Travel."}
LIMIT = 3000
WORDS = "flight hotel budget invoice Tuesday refund booking schedule meeting project".split()


def long_history(
    turns: int, question: str = "Which hotel did I book last?"
) -> list[dict[str, Any]]:
    """``turns`` exchanges of about 90 tokens each, a tool call every fifth, the first
    naming Zanzibar; then ``question``."""
    messages: list[dict[str, Any]] = [SYSTEM]
    for turn in range(turns):
        said = " ".join(WORDS[(turn + i) % len(WORDS)] for i in range(30))
        if turn == 0:
            said = "My sister Ana lives in Zanzibar and runs a spice shop there. " + said
        messages.append({"role": "user", "content": f"Turn {turn}: {said}."})
        if turn % 5 == 4:
            call = {
                "id": f"call_{turn}",
                "type": "function",
                "function": {"name": "lookup", "arguments": f'{{"turn": {turn}}}'},
            }
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": f"call_{turn}", "content": said})
        messages.append({"role": "assistant", "content": f"Noted {turn}: {said}."})
    messages.append({"role": "user", "content": question})
    return messages


class Held:
    """A summarizer that holds its first call until released."""

    name = "held-llm"
    prompt_version = "1"
    input_tokens = 1_000_000

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        self.entered.set()
        self.release.wait(60)
        return SummaryResult("- Ana lives in Zanzibar.\n- Many hotels were booked.")


def stored_messages(trimmer: Trimmer) -> int:
    with trimmer._db.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(MESSAGES)).scalar_one())


def ledger_prompt_tokens(trimmer: Trimmer, request_id: int) -> int:
    with trimmer._db.engine.connect() as connection:
        statement = select(REQUESTS.c.prompt_tokens).where(REQUESTS.c.id == request_id)
        return int(connection.execute(statement).scalar_one())


def assert_valid_cut(sent: list[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
    """``sent`` is the system message, then a suffix of ``messages`` (a recall message
    may stand right before the newest user turn), starting on no tool result."""
    assert sent[0] == SYSTEM
    rest = [m for m in sent[1:] if not str(m.get("content", "")).startswith("Earlier messages")]
    assert rest == messages[len(messages) - len(rest) :]
    assert rest[0]["role"] != "tool"
    assert rest[-1] == messages[-1]


def test_the_first_prepare_of_a_long_history_is_served_before_its_fold(db_url: str) -> None:
    messages = long_history(300)
    assert count_tokens(messages) > LARGE_FOLD_TOKENS
    held = Held()
    with Trimmer(db_url, summarizer=held, max_prompt_tokens=LIMIT) as trimmer:
        prepared = trimmer.prepare(messages)
        assert prepared.summary_id is None and prepared.fold_pending  # nothing folded yet
        assert prepared.prompt_tokens <= LIMIT
        assert prepared.prompt_tokens == count_tokens(prepared.messages)  # exact
        assert ledger_prompt_tokens(trimmer, prepared.request_id) == prepared.prompt_tokens
        assert_valid_cut(prepared.messages, messages)
        assert stored_messages(trimmer) == len(messages)  # every message stored
        assert held.entered.wait(30)  # the fold runs after the request, in the background
        again = trimmer.prepare(messages)  # the fold still runs: cut again, not folded twice
        assert again.summary_id is None and again.prompt_tokens <= LIMIT
        held.release.set()
        trimmer.wait_for_background(timeout=60)
        folded = trimmer.prepare(messages)
        assert folded.summary_id is not None and folded.messages_folded > 500
        assert "Zanzibar" in folded.messages[1]["content"]
        assert folded.prompt_tokens <= LIMIT


def test_recall_searches_what_the_cut_left_out(db_url: str) -> None:
    messages = long_history(300, question="What does my sister do in Zanzibar?")
    with Trimmer(db_url, summarizer="extractive", max_prompt_tokens=LIMIT) as trimmer:
        prepared = trimmer.prepare(messages)
        trimmer.wait_for_background(timeout=60)
    assert prepared.summary_id is None
    recalled = prepared.messages[-2]["content"]
    assert recalled.startswith("Earlier messages") and "spice shop" in recalled
    assert prepared.prompt_tokens == count_tokens(prepared.messages) <= LIMIT
    assert_valid_cut(prepared.messages, messages)


def test_within_the_window_when_no_prompt_limit_is_set(sqlite_url: str) -> None:
    models = {"gpt-4o": {"context_window": 8000, "max_output": 2000}}
    messages = long_history(300)
    with Trimmer(sqlite_url, summarizer="extractive", models=models, max_tokens=1000) as trimmer:
        prepared = trimmer.prepare(messages)
        assert prepared.summary_id is None
        assert prepared.prompt_tokens + prepared.max_tokens <= 8000
        assert prepared.max_tokens == 1000
        trimmer.wait_for_background(timeout=60)
        assert trimmer.prepare(messages).summary_id is not None


def test_synchronous_folds_still_fold_first(db_url: str) -> None:
    messages = long_history(300)
    with Trimmer(
        db_url, summarizer="extractive", max_prompt_tokens=LIMIT, background=False
    ) as trimmer:
        prepared = trimmer.prepare(messages)
        assert prepared.summary_id is not None and prepared.prompt_tokens <= LIMIT
        assert stored_messages(trimmer) == len(messages)


def test_a_small_fold_over_the_limit_still_runs_on_the_request_path(sqlite_url: str) -> None:
    messages = long_history(40)  # about 7,000 tokens: under LARGE_FOLD_TOKENS
    assert count_tokens(messages) < LARGE_FOLD_TOKENS
    with Trimmer(sqlite_url, summarizer="extractive", max_prompt_tokens=LIMIT) as trimmer:
        prepared = trimmer.prepare(messages)
        assert prepared.summary_id is not None and prepared.prompt_tokens <= LIMIT
