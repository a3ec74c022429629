"""The failure policy of folds, over real HTTP: whatever the summarizer does, prepare()
answers, prompts stay trimmed and summaries stay within budget; the breaker; the
request path's deadline; the Batch API path."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from openai_server import FakeOpenAI, Reply
from sqlalchemy import select
from summary_rows import decoded

from context_trimmer import (
    CircuitBreaker,
    OpenAISummarizer,
    SummaryRequest,
    SummaryResult,
    Trimmer,
    count_tokens,
)
from context_trimmer._store.summaries import FAILURES, SUMMARIES
from context_trimmer._text.tokens import counter_for
from context_trimmer._trimming.summarizers import SYSTEM_PROMPT
from context_trimmer.cli import main

SYSTEM = {"role": "system", "content": "You are the assistant of Acme Travel."}
BUDGET = 120
LABEL = "extractive (fallback for openai:gpt-4o-mini)"


def user_turn(turn: int, words: int = 8) -> dict[str, Any]:
    filler = " ".join(f"detail{turn}x{i}" for i in range(words))
    return {
        "role": "user",
        "content": f"On May {turn % 28 + 1} I booked flight AC{100 + turn} to Lisbon "
        f"for Maria Costa. {filler}.",
    }


def reply_turn(turn: int) -> dict[str, Any]:
    return {"role": "assistant", "content": f"Noted booking {turn} for Maria."}


def rows(trimmer: Trimmer, table: Any) -> list[Any]:
    with trimmer._db.engine.connect() as connection:
        found = list(connection.execute(select(table).order_by(table.c.id)))
        return decoded(connection, found) if table is SUMMARIES else found


def summarizer_for(server: FakeOpenAI, **options: Any) -> OpenAISummarizer:
    options.setdefault("timeout", 5.0)
    return OpenAISummarizer(base_url=server.base_url, api_key="test-key", max_retries=0, **options)


def assert_within_budget(trimmer: Trimmer, budget: int = BUDGET) -> None:
    count = counter_for("gpt-4o").text
    for summary in rows(trimmer, SUMMARIES):
        assert count(summary.text) <= budget, summary.summarizer


HUGE = "Maria Costa booked flight AC101 to Lisbon on May 2 and paid 420 euros. " * 2500
FAULTS = {
    "empty": Reply(""),
    "500": Reply(status=500, error="upstream broke"),
    "invalid-json": Reply(raw=b"<html>this is not JSON"),
    "huge": Reply(HUGE),
    "hang": Reply("a summary far too late", delay=3.0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_prepare_answers_trimmed_whatever_the_summarizer_does(
    sqlite_url: str, fault: str
) -> None:
    keep_last, fold_every = 4, 2
    with (
        FakeOpenAI(default=lambda _body: FAULTS[fault]) as server,
        Trimmer(
            sqlite_url,
            keep_last=keep_last,
            fold_every=fold_every,
            summary_tokens=BUDGET,
            summary_share=None,
            recall_tokens=0,
            summarizer=summarizer_for(server, timeout=1.0),
        ) as trimmer,
    ):
        messages: list[dict[str, Any]] = [SYSTEM]
        for turn in range(24):
            messages.append(user_turn(turn))
            prepared = trimmer.prepare(messages)
            trimmer.wait_for_background(timeout=30)
            # [system][summary][tail]: a fold is due once the tail passes keep_last +
            # fold_every; the turn (user + assistant) that passes it still goes out whole.
            assert len(prepared.messages) <= 2 + keep_last + fold_every + 2
            assert prepared.prompt_tokens == count_tokens(prepared.messages)
            messages.append(reply_turn(turn))
        assert len(prepared.messages) < len(messages) // 2
        assert_within_budget(trimmer)
        summaries = rows(trimmer, SUMMARIES)
        if fault == "huge":  # cut at a sentence boundary, not replaced
            assert {s.summarizer for s in summaries} == {"openai:gpt-4o-mini"}
            assert all(s.text.endswith("euros.") for s in summaries)
        else:
            assert {s.summarizer for s in summaries} == {LABEL}
            assert len(rows(trimmer, FAILURES)) == 3  # then the breaker opened
            assert len(server.requests) == 3
        assert not any(FAULTS[fault].error in str(m) for m in prepared.messages)


class AlwaysFails:
    """A summarizer that raises whatever it is asked (not a SummarizerError)."""

    name = "broken-llm"
    prompt_version = "1"
    input_tokens = 100_000

    def __init__(self) -> None:
        self.calls = 0

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        self.calls += 1
        raise RuntimeError("the summarizer is down")


def test_a_summarizer_that_always_fails_never_stops_prepare(sqlite_url: str) -> None:
    broken = AlwaysFails()
    with Trimmer(sqlite_url, summarizer=broken, max_prompt_tokens=900) as trimmer:
        messages: list[dict[str, Any]] = [SYSTEM]
        answered = 0
        for turn in range(60):
            messages.append(user_turn(turn, words=30))
            prepared = trimmer.prepare(messages)
            trimmer.wait_for_background(timeout=30)
            answered += prepared.prompt_tokens <= 900
            messages.append(reply_turn(turn))
        assert answered == 60
        assert broken.calls == 3  # the breaker opened after three failures
        assert trimmer.summarizer_status()["breaker"]["state"] == "open"
        failures = rows(trimmer, FAILURES)
        assert len(failures) == 3 and "RuntimeError: the summarizer is down" in failures[0].error
        assert {s.summarizer for s in rows(trimmer, SUMMARIES)} == {
            "extractive (fallback for broken-llm)"
        }


class Blocking:
    """A summarizer that holds its first call until released."""

    name = "slow-llm"
    prompt_version = "1"
    input_tokens = 100_000

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        self.entered.set()
        self.release.wait(30)
        return SummaryResult("- Maria booked flights.")


def test_a_background_fold_never_blocks_a_synchronous_one(sqlite_url: str) -> None:
    slow = Blocking()
    with Trimmer(  # a fixed budget (no share): a due fold is not held for the floor
        sqlite_url,
        keep_last=4,
        fold_every=2,
        summary_share=None,
        summarizer=slow,
        max_prompt_tokens=600,
    ) as trimmer:
        messages: list[dict[str, Any]] = [SYSTEM]
        for turn in range(4):
            messages += [user_turn(turn), reply_turn(turn)]
        assert trimmer.prepare([*messages, user_turn(4)]).fold_pending
        assert slow.entered.wait(10)  # the background fold holds the lease, stuck
        for turn in range(4, 12):
            messages += [user_turn(turn, words=40), reply_turn(turn)]
        prepared = trimmer.prepare([*messages, user_turn(12)])
        assert prepared.prompt_tokens <= 600
        assert rows(trimmer, SUMMARIES)[0].summarizer == "extractive (fallback for slow-llm)"
        slow.release.set()


def test_the_request_path_has_a_deadline(sqlite_url: str) -> None:
    with (
        FakeOpenAI(default=lambda _body: Reply("too late", delay=5.0)) as server,
        Trimmer(
            sqlite_url,
            keep_last=4,
            fold_every=2,
            summarizer=summarizer_for(server, timeout=10.0),
            max_prompt_tokens=500,
            sync_fold_deadline=1.0,
            background=False,
        ) as trimmer,
    ):
        messages: list[dict[str, Any]] = [SYSTEM]
        for turn in range(12):
            messages += [user_turn(turn, words=20), reply_turn(turn)]
        prepared = trimmer.prepare([*messages, user_turn(12)])
        assert prepared.prompt_tokens <= 500
        # the call was cut by the deadline, not answered (on a loaded machine the
        # deadline may pass before the request is even sent)
        assert len(server.requests) <= 1
        assert [s.summarizer for s in rows(trimmer, SUMMARIES)][-1] == LABEL
        assert "deadline" in rows(trimmer, FAILURES)[0].error


def test_a_summary_with_no_sentence_within_budget_is_replaced(sqlite_url: str) -> None:
    one_sentence = "Maria " + "and Maria " * 400 + "booked."
    with (
        FakeOpenAI(default=lambda _body: Reply(one_sentence)) as server,
        Trimmer(
            sqlite_url,
            keep_last=4,
            fold_every=2,
            summary_tokens=BUDGET,
            summarizer=summarizer_for(server),
            background=False,
        ) as trimmer,
    ):
        messages = [SYSTEM]
        for turn in range(6):
            messages += [user_turn(turn), reply_turn(turn)]
        trimmer.prepare(messages)
        result = trimmer.compact(messages)
        assert result.failures == 1 and result.summary_id is not None
        assert "over its budget" in rows(trimmer, FAILURES)[0].error
        assert rows(trimmer, SUMMARIES)[0].summarizer == LABEL
        assert_within_budget(trimmer)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def flaky() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=lambda _body: Reply("- Maria booked flights to Lisbon.")) as server:
        yield server


def test_the_breaker_opens_and_closes(sqlite_url: str, flaky: FakeOpenAI) -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown=10, max_cooldown=15, clock=clock)
    flaky.enqueue(*[Reply(status=500)] * 3)
    with Trimmer(
        sqlite_url,
        keep_last=2,
        fold_every=2,
        summarizer=summarizer_for(flaky, breaker=breaker),
        background=False,
    ) as trimmer:
        messages = [SYSTEM, user_turn(0), reply_turn(0)]

        def fold() -> str:
            turn = len(messages)
            messages.extend([user_turn(turn), reply_turn(turn)])
            trimmer.prepare(messages)
            trimmer.compact(messages, force=True)
            return str(rows(trimmer, SUMMARIES)[-1].summarizer)

        assert [fold(), fold()] == [LABEL, LABEL]  # two failures: open
        status = trimmer.summarizer_status()["breaker"]
        assert (status["state"], status["failures"], status["cooldown"]) == ("open", 2, 10)
        assert fold() == LABEL and len(flaky.requests) == 2  # not called while open
        clock.now += 10
        assert trimmer.summarizer_status()["breaker"]["state"] == "half-open"
        assert fold() == LABEL and len(flaky.requests) == 3  # the trial failed: open again
        assert trimmer.summarizer_status()["breaker"]["cooldown"] == 15  # doubled, capped
        clock.now += 14
        assert fold() == LABEL and len(flaky.requests) == 3
        clock.now += 1
        assert fold() == "openai:gpt-4o-mini" and len(flaky.requests) == 4
        status = trimmer.summarizer_status()["breaker"]
        assert (status["state"], status["failures"], status["reopens_at"]) == ("closed", 0, None)


def test_half_open_lets_one_trial_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=5, clock=clock)
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.success()
    assert breaker.allow() and breaker.status().state == "closed"


def conversation(name: str, turns: int) -> list[dict[str, Any]]:
    messages = [SYSTEM]
    for turn in range(turns):
        messages += [
            {"role": "user", "content": f"{name}: on May {turn + 1} I paid {turn * 10} euros."},
            reply_turn(turn),
        ]
    return messages


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_idle_conversations_fold_through_the_batch_api(sqlite_url: str, tmp_path: Path) -> None:
    chats = {name: conversation(name, 6) for name in ("ana", "ben", "cy")}
    chats["dee"] = conversation("dee", 1)  # no fold due
    with Trimmer(
        sqlite_url, keep_last=4, fold_every=2, summarizer="extractive", background=False
    ) as trimmer:
        for name, messages in chats.items():
            assert trimmer.prepare(messages, conversation_id=name).fold_pending == (name != "dee")
    state = str(tmp_path / "batches.json")
    options = ["--db", sqlite_url, "--state", state, "--keep-last", "4", "--fold-every", "2"]
    options += ["--summary-share", "off"]  # a fixed budget: these short spans are due
    with FakeOpenAI(default=lambda _body: Reply("- Paid in May.", prompt_tokens=90)) as server:
        server.hold_batches = True
        server.enqueue(Reply(status=500, error="batch item broke"))
        env = {"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": server.base_url}
        sent = cli("compact", "--idle", "0s", "--batch", "--json", *options, env=env)
        assert sent["items"] == 3 and sent["skipped"] == {"no fold due": 1}
        upload = server.files[server.batches[sent["batch_id"]]["input_file_id"]]
        assert upload["purpose"] == "batch"
        assert server.batches[sent["batch_id"]]["completion_window"] == "24h"
        again = cli("compact", "--idle", "0s", "--batch", "--json", *options, env=env)
        assert again["batch_id"] is None and again["skipped"]["already in a pending batch"] == 3
        early = cli("compact", "--collect", "--json", *options, env=env)
        assert (early["pending_batches"], early["stored"]) == (1, 0)
        with Trimmer(
            sqlite_url, keep_last=4, fold_every=2, summarizer="extractive", background=False
        ) as trimmer:
            chats["ben"] += [user_turn(40), reply_turn(40)]  # ben moved on meanwhile
            assert trimmer.prepare(chats["ben"], conversation_id="ben").summary_id is None
        server.finish_batches()
        done = cli("compact", "--collect", "--json", *options, env=env)
        assert (done["finished_batches"], done["stored"], done["failures"]) == (1, 2, 1)
        assert done["fallbacks"] == 1
        assert len(server.requests) == 3  # the three summary calls, in the batch
        status = cli("status", "--json", "--db", sqlite_url, "--state", state)
    assert json.loads(Path(state).read_text()) == {"batches": {}}
    assert (status["summaries"], status["summary_fallbacks"], status["summary_failures"]) == (
        3,
        1,
        1,
    )
    assert status["pending_batches"] == 0 and "each process" in status["breaker"]
    with Trimmer(sqlite_url, keep_last=4, fold_every=2, summarizer="extractive") as trimmer:
        labels = sorted(row.summarizer for row in rows(trimmer, SUMMARIES))
        assert labels == [LABEL, "openai:gpt-4o-mini (batch)", "openai:gpt-4o-mini (batch)"]
        assert "batch item broke" in rows(trimmer, FAILURES)[0].error
        ben = trimmer.prepare(chats["ben"], conversation_id="ben")  # the older span still serves
        assert ben.summary_id is not None and ben.messages_folded > 0
        assert trimmer.report().totals.summary_fallbacks == 1


def test_compact_folds_idle_conversations_now(sqlite_url: str) -> None:
    with Trimmer(
        sqlite_url, keep_last=4, fold_every=2, summarizer="extractive", background=False
    ) as trimmer:
        trimmer.prepare(conversation("ana", 6), conversation_id="ana")
    args = ["--db", sqlite_url, "--keep-last", "4", "--fold-every", "2", "--json"]
    assert cli("compact", "--idle", "0s", *args)["folded"] == 1
    assert cli("compact", "--idle", "0s", *args)["folded"] == 0  # folded: no fold due


def test_openai_commands_without_a_key_say_what_to_set(tmp_path: Path) -> None:
    log = tmp_path / "chats.jsonl"
    log.write_text(json.dumps(conversation("ana", 3)) + "\n")
    for args in (["replay", str(log), "--summarizer", "openai"], ["compact", "--batch"]):
        result = CliRunner().invoke(main, [*args, "--db", f"sqlite:///{tmp_path / 'x.db'}"])
        assert result.exit_code == 1
        assert "needs OPENAI_API_KEY" in result.output and "Traceback" not in result.output


def test_a_batch_api_error_is_one_clear_line(tmp_path: Path) -> None:
    state = tmp_path / "batches.json"
    state.write_text(json.dumps({"batches": {"batch_gone": {"items": {}}}}))
    with FakeOpenAI() as server:
        result = CliRunner().invoke(
            main,
            ["compact", "--collect", "--state", str(state), "--db", f"sqlite:///{tmp_path}/x.db"],
            env={"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": server.base_url},
        )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the Batch API call failed (NotFoundError" in result.output
    assert json.loads(state.read_text())["batches"]["batch_gone"] == {"items": {}}


def summary_calls(server: FakeOpenAI) -> list[dict[str, str]]:
    """The headers of the summary calls the server received."""
    return [
        headers
        for body, headers in zip(server.requests, server.headers, strict=True)
        if body["messages"][0]["content"].startswith(SYSTEM_PROMPT)
    ]


def test_the_default_summarizer_follows_the_wrapped_client(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")  # so the default summarizer is gpt-4o-mini
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # a host the app never wraps
    with (
        FakeOpenAI(default=lambda _body: Reply("- Ana paid in May.")) as upstream,
        FakeOpenAI(default=lambda _body: Reply("- Ana paid.")) as own,
    ):
        messages = conversation("ana", 6)
        for summarizer in (None, summarizer_for(own)):
            with Trimmer(  # a fixed budget: the due fold is not held for the floor
                sqlite_url, keep_last=4, fold_every=2, summary_share=None, summarizer=summarizer
            ) as trimmer:
                app = openai.OpenAI(base_url=upstream.base_url, api_key="app-key", max_retries=0)
                client = trimmer.wrap(app, governor=False)
                client.chat.completions.create(model="gpt-4o", messages=messages)
                trimmer.wait_for_background(timeout=30)
            messages = [*messages, user_turn(30), reply_turn(30), user_turn(31), reply_turn(31)]
        assert [h["authorization"] for h in summary_calls(upstream)] == ["Bearer app-key"]
        assert [h["authorization"] for h in summary_calls(own)] == ["Bearer test-key"]
