"""Replay logged conversations through prepare(), turn by turn, to measure savings.

Input formats:

- JSONL: one conversation per line, either a list of OpenAI-format messages or an
  object with ``"messages"`` (and optionally ``"conversation_id"``, ``"user"``).
- LoCoMo JSON: a list of ``{"conversation": {"speaker_a", "speaker_b",
  "session_N_date_time", "session_N": [{"speaker", "text"}]}}``; speaker A becomes the
  user, speaker B the assistant, and each session's date opens its first message.

Each conversation is replayed as its app would send it: before every assistant turn,
prepare() gets the whole list so far; due folds run in between (what the background
worker does), so every request sees the newest finished summary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import ConfigurationError, InvalidMessagesError
from .._prepared import Prepared
from .._reports.sums import honest_baseline
from .._trimmer import Trimmer
from .._validation import validate_messages


@dataclass
class Conversation:
    id: str
    messages: list[dict[str, Any]]
    user: str | None = None


@dataclass
class ReplayResult:
    """Totals of a replay, from the exact counts of every prepared request."""

    conversations: int = 0
    requests: int = 0
    baseline_tokens: int = 0
    baseline_tokens_as_given: int = 0
    over_window_requests: int = 0
    prompt_tokens: int = 0
    final_baseline_tokens: list[int] = field(default_factory=list)
    final_prompt_tokens: list[int] = field(default_factory=list)
    summaries: int = 0
    summarizer_tokens_in: int = 0
    summarizer_tokens_out: int = 0
    summary_failures: int = 0
    last: dict[str, Prepared] = field(default_factory=dict)

    @property
    def saved_tokens(self) -> int:
        return self.baseline_tokens - self.prompt_tokens

    @property
    def saved_percent(self) -> float:
        return 100.0 * self.saved_tokens / self.baseline_tokens if self.baseline_tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "requests": self.requests,
            "baseline_tokens": self.baseline_tokens,
            "baseline_tokens_as_given": self.baseline_tokens_as_given,
            "over_window_requests": self.over_window_requests,
            "prompt_tokens": self.prompt_tokens,
            "saved_tokens": self.saved_tokens,
            "saved_percent": round(self.saved_percent, 2),
            "final_baseline_tokens": self.final_baseline_tokens,
            "final_prompt_tokens": self.final_prompt_tokens,
            "summaries": self.summaries,
            "summarizer_tokens_in": self.summarizer_tokens_in,
            "summarizer_tokens_out": self.summarizer_tokens_out,
            "summary_failures": self.summary_failures,
        }


def load_conversations(path: Path) -> list[Conversation]:
    """Read a JSONL log or a LoCoMo JSON file; every conversation is validated."""
    text = path.read_text("utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if (
        isinstance(whole, list)
        and whole
        and all(isinstance(item, Mapping) and "conversation" in item for item in whole)
    ):
        conversations = [locomo_conversation(item, i) for i, item in enumerate(whole)]
    else:
        conversations = list(_jsonl_conversations(path, text))
    for conversation in conversations:
        try:
            validate_messages(conversation.messages)
        except InvalidMessagesError as error:
            raise ConfigurationError(f"{path}: conversation {conversation.id}: {error}") from error
    return conversations


def _jsonl_conversations(path: Path, text: str) -> Iterator[Conversation]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"{path}:{number}: not JSON ({error.msg})") from error
        yield _jsonl_conversation(item, f"{path.stem}-{number}", path, number)


def _jsonl_conversation(item: Any, default_id: str, path: Path, number: int) -> Conversation:
    if isinstance(item, list):
        return Conversation(default_id, item)
    if isinstance(item, Mapping) and isinstance(item.get("messages"), list):
        return Conversation(
            str(item.get("conversation_id") or default_id), list(item["messages"]), item.get("user")
        )
    raise ConfigurationError(
        f"{path}:{number}: expected a list of messages or an object with 'messages'"
    )


def locomo_conversation(item: Mapping[str, Any], index: int) -> Conversation:
    """One LoCoMo sample as chat messages (speaker A: user, speaker B: assistant)."""
    conversation = item["conversation"]
    speaker_a = conversation["speaker_a"]
    messages: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": f"You are {conversation['speaker_b']}, chatting with your friend "
            f"{speaker_a}. Stay in character and remember what was said.",
        }
    ]
    for number in _session_numbers(conversation):
        date = conversation.get(f"session_{number}_date_time", "")
        for position, turn in enumerate(conversation[f"session_{number}"]):
            text = f"{turn['speaker']}: {turn['text']}"
            if position == 0 and date:
                text = f"[{date}] {text}"
            role = "user" if turn["speaker"] == speaker_a else "assistant"
            messages.append({"role": role, "content": text})
    return Conversation(str(item.get("sample_id", f"locomo-{index}")), messages)


def _session_numbers(conversation: Mapping[str, Any]) -> list[int]:
    found = (re.fullmatch(r"session_(\d+)", key) for key in conversation)
    return sorted(int(match.group(1)) for match in found if match)


def request_points(messages: Sequence[Mapping[str, Any]]) -> Iterator[int]:
    """Lengths of the prefixes an app sends: everything before each assistant turn."""
    for index, message in enumerate(messages):
        if index and message["role"] == "assistant" and messages[index - 1]["role"] != "assistant":
            yield index
    if messages and messages[-1]["role"] != "assistant":
        yield len(messages)


def replay(
    trimmer: Trimmer,
    conversations: Sequence[Conversation],
    *,
    model: str = "gpt-4o",
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Send every conversation through ``trimmer`` turn by turn; return the totals."""
    result = ReplayResult(conversations=len(conversations))
    info = trimmer.models.get(model)
    for conversation in conversations:
        prepared = None
        for end in request_points(conversation.messages):
            prefix = conversation.messages[:end]
            prepared = trimmer.prepare(
                prefix, model=model, user=conversation.user, conversation_id=conversation.id
            )
            # The honest baseline: without the trimmer the app must cut to the window.
            baseline = honest_baseline(info, prepared.baseline_tokens, info.max_output)
            result.requests += 1
            result.baseline_tokens += baseline
            result.baseline_tokens_as_given += prepared.baseline_tokens
            result.over_window_requests += baseline < prepared.baseline_tokens
            result.prompt_tokens += prepared.prompt_tokens
            if prepared.fold_pending:
                fold = trimmer.compact(
                    prefix, user=conversation.user, model=model, conversation_id=conversation.id
                )
                result.summaries += fold.summary_id is not None
                result.summarizer_tokens_in += fold.tokens_in
                result.summarizer_tokens_out += fold.tokens_out
                result.summary_failures += fold.failures
            if progress:
                progress(1)
        if prepared is not None:
            result.final_baseline_tokens.append(
                honest_baseline(info, prepared.baseline_tokens, info.max_output)
            )
            result.final_prompt_tokens.append(prepared.prompt_tokens)
            result.last[conversation.id] = prepared
    return result
