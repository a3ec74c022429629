"""Property tests: every prepared request is one the Chat Completions API accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_trimmer import Trimmer, count_tokens, validate_messages


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append(
            {"role": draw(st.sampled_from(["system", "developer"])), "content": "Be helpful."}
        )
    calls = 0
    for turn in range(draw(st.integers(1, 25))):
        messages.append(
            {"role": "user", "content": f"question {turn} " + "x" * draw(st.integers(0, 40))}
        )
        if draw(st.integers(0, 9)) == 0:
            messages.append({"role": "system", "content": f"note {turn}"})
        for _round in range(draw(st.integers(0, 2))):
            ids = [f"call_{calls + i}" for i in range(draw(st.integers(1, 3)))]
            calls += len(ids)
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": i,
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": 1}'},
                        }
                        for i in ids
                    ],
                }
            )
            for i in draw(st.permutations(ids)):
                messages.append({"role": "tool", "tool_call_id": i, "content": f"result {i}"})
        if draw(st.booleans()):
            messages.append({"role": "assistant", "content": f"answer {turn}"})
    return messages


def assert_valid_request(sent: list[dict[str, Any]], original: list[dict[str, Any]]) -> None:
    validate_messages(sent)  # no orphan tool message, no tool_calls without all results
    last_user = max(i for i, m in enumerate(original) if m["role"] == "user")
    assert sent[-(len(original) - last_user) :] == original[last_user:]  # newest turn whole
    controls = [m for m in original if m["role"] in ("system", "developer")]
    assert all(m in sent for m in controls)  # never drops system or developer messages
    if sent[0]["role"] in ("system", "developer") and original[0] == sent[0]:
        leading = next(
            i for i, m in enumerate(original) if m["role"] not in ("system", "developer")
        )
        assert sent[:leading] == original[:leading]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(messages=conversations(), keep_last=st.integers(0, 6), fold_every=st.integers(0, 3))
def test_every_prepared_request_is_valid(
    tmp_path_factory: Any, messages: list[dict[str, Any]], keep_last: int, fold_every: int
) -> None:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('p')) / 'h.db'}"
    with Trimmer(
        url, keep_last=keep_last, fold_every=fold_every, summarizer="extractive", background=False
    ) as trimmer:
        user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
        for end in [*user_turns[1:], len(messages)]:
            prefix = messages[:end]
            prepared = trimmer.prepare(prefix)
            assert_valid_request(prepared.messages, prefix)
            assert prepared.prompt_tokens == count_tokens(prepared.messages)
            trimmer.compact(prefix)
        prepared = trimmer.prepare(messages)
        assert_valid_request(prepared.messages, messages)
