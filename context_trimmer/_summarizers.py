"""Summarizers: turn (previous summary + evicted turns) into a new summary.

A summarizer is any object with ``name``, ``prompt_version``, ``input_tokens`` and
``summarize(request) -> SummaryResult``. Two ship with the library:

- :class:`OpenAISummarizer`: gpt-4o-mini (or any model) through the openai client,
  against OpenAI or any compatible ``base_url``.
- ``ExtractiveSummarizer`` (in ``_extractive``): local, deterministic, no network.

:func:`fold` drives either: spans larger than the summarizer's input budget are split
with langchain-text-splitters and folded chunk by chunk, and every answer is checked:
any exception a summarizer raises, and an empty or error-like answer, becomes a
:class:`SummarizerError` (never stored or sent); an answer over its budget is cut at
the last sentence that fits, counted with the tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._breaker import CircuitBreaker
from ._chat_model import ChatModel
from ._exceptions import SummarizerError

PROMPT_VERSION = "1"

SYSTEM_PROMPT = """\
You maintain the running summary of a conversation between a user and an assistant. \
You receive the current summary (possibly empty) and the messages that follow it. \
Write the updated summary, which replaces both.

Keep, exactly as written: names of people, places, products and organisations; numbers, \
amounts, dates and times; decisions made; commitments and promises (who will do what, \
by when); open questions and unresolved requests; the user's stated preferences, \
constraints and facts about themselves. Keep the order in which things happened. \
Drop greetings, small talk and repetition. Never invent anything. Write terse bullet \
points in the third person. Output only the summary."""

_ERROR_LIKE = re.compile(
    r"^\s*(error\b|i'?m sorry|i am sorry|sorry, i|i can(no|')t|as an ai\b|"
    r"rate limit|internal server error|\{\s*\"error\")",
    re.IGNORECASE,
)
# Where a summary may be cut: after a sentence's end, or at a line break.
_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?;])\s+|\s*\n\s*")
# No cut beyond this many characters per token of budget is tried (tokens are shorter).
_CHARS_PER_TOKEN_BOUND = 16


@dataclass(frozen=True)
class SummaryRequest:
    """What a summarizer is asked: fold ``transcript`` into ``previous``."""

    previous: str | None
    transcript: str
    budget: int
    count_tokens: Callable[[str], int]


@dataclass(frozen=True)
class SummaryResult:
    """A summarizer's answer: the new summary and the tokens the call spent."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0


class Summarizer(Protocol):
    """What the Trimmer needs of a summarizer: a ``name`` for the ledger, the version
    of its prompt, how many transcript tokens one call takes, and ``summarize``."""

    name: str
    prompt_version: str
    input_tokens: int

    def summarize(self, request: SummaryRequest) -> SummaryResult: ...


def render_transcript(messages: Sequence[Mapping[str, Any]]) -> str:
    """One line per message: ``role (name): text``, tool calls and results spelled out."""
    return "\n".join(_render(message) for message in messages)


def _render(message: Mapping[str, Any]) -> str:
    speaker = message["role"]
    if message.get("name"):
        speaker += f" ({message['name']})"
    parts = [_text_of(message.get("content"))]
    for call in message.get("tool_calls") or ():
        function = call.get("function", {})
        parts.append(f"[called {function.get('name')}({function.get('arguments', '')})]")
    if message["role"] == "tool":
        speaker += f" result for {message.get('tool_call_id')}"
    return f"{speaker}: {' '.join(p for p in parts if p)}"


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        kind = part.get("type")
        if kind in ("text", "refusal"):
            texts.append(part.get(kind, ""))
        elif kind == "image_url":
            texts.append("[image]")
        else:
            texts.append(f"[{kind}]")
    return " ".join(texts)


def fold(summarizer: Summarizer, request: SummaryRequest) -> SummaryResult:
    """Fold a transcript into the previous summary, chunk by chunk when it is large.

    Whatever goes wrong is a :class:`SummarizerError` carrying what was spent; the
    answer is checked and bounded to the budget after every chunk.
    """
    chunks = split_transcript(request.transcript, summarizer.input_tokens, request.count_tokens)
    previous, tokens_in, tokens_out = request.previous, 0, 0
    for chunk in chunks:
        try:
            result = summarizer.summarize(
                SummaryRequest(previous, chunk, request.budget, request.count_tokens)
            )
            spent_in, spent_out = int(result.tokens_in), int(result.tokens_out)
        except SummarizerError as error:
            raise SummarizerError(
                str(error),
                tokens_in=tokens_in + error.tokens_in,
                tokens_out=tokens_out + error.tokens_out,
            ) from error
        except Exception as error:
            raise SummarizerError(
                f"{summarizer.name} failed: {type(error).__name__}: {error}",
                tokens_in=tokens_in,
                tokens_out=tokens_out,
            ) from error
        tokens_in += spent_in
        tokens_out += spent_out
        text = checked_summary(result, tokens_in, tokens_out)
        previous = within_budget(text, request, tokens_in, tokens_out)
    assert previous is not None
    return SummaryResult(previous, tokens_in, tokens_out)


def split_transcript(text: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    if count(text) <= max_tokens:
        return [text]
    # langchain (and its pydantic models) loads only when a span is this long.
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=max_tokens,
        chunk_overlap=0,
        length_function=count,
        separators=["\n", ". ", " ", ""],
        keep_separator=False,
    )
    return splitter.split_text(text)


def checked_summary(result: SummaryResult, tokens_in: int, tokens_out: int) -> str:
    """The summary text, or SummarizerError if it is empty or reads like an error."""
    text = result.text.strip() if isinstance(result.text, str) else ""
    if not text:
        raise SummarizerError(
            "the summarizer returned an empty summary", tokens_in=tokens_in, tokens_out=tokens_out
        )
    if _ERROR_LIKE.match(text):
        raise SummarizerError(
            f"the summarizer answered with an error or refusal: {text[:120]!r}",
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )
    return text


def within_budget(text: str, request: SummaryRequest, tokens_in: int, tokens_out: int) -> str:
    """``text``, or its longest run of whole sentences (or lines) within the budget.

    SummarizerError when not even the first sentence fits: the summary is never
    stored over its budget.
    """
    count, budget = request.count_tokens, request.budget
    if count(text) <= budget:
        return text
    window = text[: budget * _CHARS_PER_TOKEN_BOUND]
    ends = [match.start() for match in _SENTENCE_BOUNDARY.finditer(window) if match.start()]
    low, high, best = 0, len(ends) - 1, ""
    while low <= high:  # the longest prefix that fits; longer prefixes never count less
        middle = (low + high) // 2
        candidate = window[: ends[middle]].rstrip()
        if count(candidate) <= budget:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    if not best:
        raise SummarizerError(
            f"the summary ({count(text)} tokens) is over its budget of {budget} tokens "
            "and its first sentence alone does not fit",
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )
    return best


class OpenAISummarizer:
    """Summaries by a chat model (gpt-4o-mini by default) on any OpenAI-compatible API.

    Each call has a ``timeout`` (30 s by default) and the client's ``max_retries``.
    ``breaker``: this summarizer's :class:`CircuitBreaker` (a default one if not
    given), shared by every Trimmer that uses this object. ``follows_client``: set on
    the summarizer a Trimmer makes by default; :meth:`follow` then points it at the
    endpoint and key of the client the Trimmer wraps.
    """

    prompt_version = PROMPT_VERSION

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        *,
        client: Any = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        input_tokens: int = 12_000,
        breaker: CircuitBreaker | None = None,
        follows_client: bool = False,
    ):
        self.name = f"openai:{model}"
        self.input_tokens = input_tokens
        self.breaker = breaker or CircuitBreaker()
        self.follows_client = follows_client
        self._timeout, self._max_retries = timeout, max_retries
        self.chat = ChatModel(
            model,
            client=client,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
        )

    def close(self) -> None:
        self.chat.close()

    def follow(self, client: Any) -> None:
        """Send summaries where ``client`` sends requests, with its key (only when
        ``follows_client``): text never goes to a host the application did not name."""
        base_url, api_key = getattr(client, "base_url", None), getattr(client, "api_key", None)
        if not self.follows_client or base_url is None or not isinstance(api_key, str):
            return
        previous = self.chat
        self.chat = ChatModel(
            previous.model,
            base_url=str(base_url),
            api_key=api_key,
            timeout=self._timeout,
            max_retries=self._max_retries,
        )
        previous.close()

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        import openai

        try:
            answer = self.chat.complete(SYSTEM_PROMPT, user_prompt(request), request.budget)
        except openai.OpenAIError as error:
            raise SummarizerError(f"{self.name} failed: {type(error).__name__}: {error}") from error
        return SummaryResult(answer.text, answer.tokens_in, answer.tokens_out)

    def request_body(self, request: SummaryRequest) -> dict[str, Any]:
        """The Chat Completions body :meth:`summarize` sends (for the Batch API)."""
        return {
            "model": self.chat.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_prompt(request)},
            ],
            "max_tokens": request.budget,
            "temperature": 0,
        }


def user_prompt(request: SummaryRequest) -> str:
    """The user message of a summary call: the current summary, the new messages."""
    return (
        f"Current summary:\n{request.previous or '(none yet)'}\n\n"
        f"New messages:\n{request.transcript}\n\n"
        f"Write the updated summary in at most {request.budget} tokens."
    )
