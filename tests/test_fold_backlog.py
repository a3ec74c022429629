"""The background fold backlog is bounded: a due fold over the bound is not held in
memory, and the conversation's next prepare() schedules it again."""

from __future__ import annotations

import threading
from typing import Any

from context_trimmer import Trimmer
from context_trimmer._trimming.background import MAX_PENDING, Background


def chat(number: int, turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You help."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"chat {number} question {turn}?"})
        messages.append({"role": "assistant", "content": f"chat {number} answer {turn}."})
    return messages


def test_keyed_jobs_over_the_bound_are_skipped() -> None:
    background = Background(max_pending=2)
    release = threading.Event()
    ran: list[str] = []
    try:
        assert background.submit_once("a", lambda: (release.wait(30), ran.append("a")))
        assert background.submit_once("b", lambda: ran.append("b"))
        assert not background.submit_once("a", lambda: ran.append("a again"))  # pending
        assert not background.submit_once("c", lambda: ran.append("c"))  # full
        assert (background.backlog, background.skipped) == (2, 1)
        release.set()
        background.wait(30)
        assert background.submit_once("c", lambda: ran.append("c"))
        background.wait(30)
    finally:
        release.set()
        background.close()
    assert ran == ["a", "b", "c"]


def test_a_skipped_fold_is_scheduled_again_by_the_next_prepare(sqlite_url: str) -> None:
    with Trimmer(sqlite_url, summarizer="extractive", keep_last=4, fold_every=2) as trimmer:
        release = threading.Event()
        trimmer._background.submit(lambda: release.wait(60))  # the fold thread is busy
        try:
            for number in range(MAX_PENDING + 20):
                assert trimmer.prepare(chat(number, 6), model="gpt-4o").fold_pending
            assert trimmer._background.backlog == MAX_PENDING
            assert trimmer._background.skipped == 20
        finally:
            release.set()
        trimmer.wait_for_background(60)
        last = chat(MAX_PENDING + 19, 6)  # its fold was skipped: no summary yet
        assert trimmer.prepare(last, model="gpt-4o").summary_id is None
        trimmer.wait_for_background(60)
        again = trimmer.prepare([*last, {"role": "user", "content": "and then?"}], model="gpt-4o")
        assert again.summary_id is not None


class FinishedAtOnce(Background):
    """A fold thread faster than its caller: each job is done before ``submit`` returns
    (a fold with nothing left to do, on an idle thread, can be)."""

    def submit(self, work: Any) -> Any:
        future = super().submit(work)
        future.result(30)
        return future


def test_a_job_done_before_it_is_registered_does_not_deadlock() -> None:
    """The done-callback of a finished job runs at once, in the caller's thread, and
    takes the backlog's lock: submit_once must not hold it then (CI hung 600 s here)."""
    background = FinishedAtOnce()
    results: list[bool] = []
    caller = threading.Thread(
        target=lambda: results.append(background.submit_once("a", lambda: None)), daemon=True
    )
    try:
        caller.start()
        caller.join(10)
        assert not caller.is_alive(), "submit_once deadlocked on a job already done"
        assert results == [True]
        assert background.backlog == 0  # forgotten at once
        assert background.submit_once("a", lambda: None)  # and can be scheduled again
    finally:
        if not caller.is_alive():
            background.close()
