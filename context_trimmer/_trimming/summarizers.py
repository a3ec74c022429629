"""Summarizers: turn (previous summary + evicted turns) into a new summary.

A summarizer is any object with ``name``, ``prompt_version``, ``input_tokens`` and
``summarize(request) -> SummaryResult``. Two ship with the library:

- :class:`OpenAISummarizer`: gpt-4o-mini (or any model) through the openai client,
  against OpenAI or any compatible ``base_url``.
- ``ExtractiveSummarizer`` (in ``_trimming.extractive``): local, deterministic, no network.

:func:`fold` drives either: spans larger than the summarizer's input budget are split
with langchain-text-splitters and folded chunk by chunk, and every answer is checked:
any exception a summarizer raises, and an empty or error-like answer, becomes a
:class:`SummarizerError` (never stored or sent); an answer over its budget is cut at
the last sentence that fits, counted with the tokenizer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from .._exceptions import SummarizerError
from .breaker import CircuitBreaker
from .chat_model import ChatModel

PROMPT_VERSION = "2"

SYSTEM_PROMPT = """\
You keep the memory of a long conversation between a user and an assistant. The \
assistant will read your summary instead of the older messages. A search already brings \
back old messages word for word when the user's newest message mentions them, so do \
not copy passages or quotes: keep what such a search cannot find, the facts that hold \
across the whole conversation.

Write these sections, in this order, each heading alone on its line followed by terse \
bullet points starting with "- "; leave out a section with nothing in it:
People: who is who: names, relationships, roles, where they live or work.
Decisions: what was decided, agreed or finished, and by whom.
Open tasks: requests not yet done, promises and follow-ups (who, what, by when).
Preferences: likes, dislikes, constraints, what to avoid.
Facts: dates (absolute dates when the messages give them), times, numbers, amounts, \
places, names of things.

Merge the current summary with the new messages: keep every fact that still holds, \
update what changed, move finished tasks to Decisions. Copy names, numbers and dates \
exactly. Never invent anything. Third person, no greeting, no preamble, no closing \
remark: output only the summary."""

WORDS_PER_TOKEN = 0.75
"""English words per token (o200k and cl100k: about 1.3 tokens a word): the summary's
budget in tokens is asked for as a length in words."""
HEADROOM = 1.5
"""``max_tokens`` of a summary call over its budget: models overshoot a length in words,
and an answer over the budget is cut at a sentence end anyway (never mid-sentence)."""

_ERROR_LIKE = re.compile(
    r"^\s*(error\b|i'?m sorry|i am sorry|sorry, i|i can(no|')t|as an ai\b|"
    r"rate limit|internal server error|\{\s*\"error\")",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^\s*```")
_PREAMBLE = re.compile(  # "Here is the updated summary:", "**Summary:**", "Sure!"
    r"^\s*[*#_ ]*((here is|here are|here's|below is|sure|okay|certainly|of course|"
    r"(the )?(updated |new |running |revised )?summary)\b[^\n]{0,80}:[*_ ]*"
    r"|(sure|okay|ok|certainly|of course)[.!,]?)\s*$",
    re.IGNORECASE,
)
_PROMPT_ECHO = re.compile(r"^\s*(current summary|new messages)\s*:", re.IGNORECASE)
_TRANSCRIPT_LINE = re.compile(r"^\s*(user|assistant|system|tool)( \([^)]*\))?\s*:", re.IGNORECASE)
_HEADING_ONLY = re.compile(r"^\s*(#+\s*[^\n]{1,40}|[*_]*[A-Z][\w ]{0,30}[*_]*:[*_]*)\s*$")
# Where a summary may be cut: after a sentence's end, or at a line break.
_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?;])\s+|\s*\n\s*")
_ENDS_A_SENTENCE = re.compile(r"[.!?][\"')\]]*\s*$")
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
    truncated: bool = False
    """The model stopped at ``max_tokens`` (finish_reason ``"length"``): the text ends
    mid-sentence."""


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
    count = remembering(request.count_tokens)
    request = SummaryRequest(request.previous, request.transcript, request.budget, count)
    chunks = split_transcript(request.transcript, summarizer.input_tokens, count)
    previous, tokens_in, tokens_out = request.previous, 0, 0
    for chunk in chunks:
        try:
            result = summarizer.summarize(SummaryRequest(previous, chunk, request.budget, count))
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
        previous = accepted(result, request, tokens_in, tokens_out)
    assert previous is not None
    return SummaryResult(previous, tokens_in, tokens_out)


class _LastCounted:
    """A token count that remembers the text it counted last (the answer's count, when
    the summarizer counted it to fit its budget, is then checked without counting it
    again: a 4,000-token summary takes about a millisecond to encode)."""

    def __init__(self, count: Callable[[str], int]):
        self._count = count
        self._last: tuple[str | None, int] = (None, 0)

    def __call__(self, text: str) -> int:
        last, tokens = self._last  # one tuple: another thread may replace it
        if text is last or text == last:
            return tokens
        tokens = self._count(text)
        self._last = (text, tokens)
        return tokens

    def remember(self, text: str, tokens: int) -> None:
        self._last = (text, tokens)


@lru_cache(maxsize=16)
def _last_counted(count: Callable[[str], int]) -> _LastCounted:
    return _LastCounted(count)


def remembering(count: Callable[[str], int]) -> Callable[[str], int]:
    """``count``, remembering the text it counted last; the same object for the same
    ``count`` (what a summarizer remembers by its count is found fold after fold)."""
    try:
        return _last_counted(count)
    except TypeError:  # an unhashable count: nothing to remember it by
        return count


def remember_count(count: Callable[[str], int], text: str, tokens: int) -> None:
    """Tell ``count`` (if it is one that remembers: :func:`remembering`) that ``text``
    has ``tokens`` tokens, known exactly without encoding it whole (the extractive
    summarizer's, summed from its lines' counts)."""
    if isinstance(count, _LastCounted):
        count.remember(text, tokens)


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


def accepted(
    result: SummaryResult, request: SummaryRequest, tokens_in: int, tokens_out: int
) -> str:
    """The summary to store from ``result``: checked, an answer cut by ``max_tokens``
    ended at its last whole sentence, bounded to the budget; or SummarizerError (with
    what was spent) when nothing usable is left."""
    text = checked_summary(result, tokens_in, tokens_out)
    if result.truncated:
        text = whole_sentences(text, tokens_in, tokens_out)
    return within_budget(text, request, tokens_in, tokens_out)


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


def formatted(text: str, tokens_in: int = 0, tokens_out: int = 0) -> str:
    """A model's answer to :data:`SYSTEM_PROMPT` without a code fence or a preamble
    line ("Here is the updated summary:"); SummarizerError if it is not a summary at
    all: it repeats the prompt's own headings, or copies the transcript (most lines are
    ``user:`` / ``assistant:``). An empty answer is left to :func:`checked_summary`."""
    if not text.strip():
        return ""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    lines = [line for line in lines if not _FENCE.match(line)]
    while lines and (not lines[0].strip() or _PREAMBLE.match(lines[0])):
        lines.pop(0)
    body = [line for line in lines if line.strip()]
    problem = ""
    if not body:
        problem = "nothing but a preamble"
    elif any(_PROMPT_ECHO.match(line) or _instruction(line) for line in body):
        problem = "it repeats the prompt"
    elif sum(bool(_TRANSCRIPT_LINE.match(line)) for line in body) * 2 > len(body):
        problem = "it copies the transcript"
    if problem:
        raise SummarizerError(
            f"the summarizer's answer is not a summary ({problem}): {text[:120]!r}",
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )
    return "\n".join(lines).strip()


def _instruction(line: str) -> bool:
    """Whether ``line`` is a sentence of the instructions, copied (as small models do)."""
    text = line.strip()
    return len(text) >= 30 and text in SYSTEM_PROMPT


def whole_sentences(text: str, tokens_in: int, tokens_out: int) -> str:
    """``text``, cut by ``max_tokens``, up to its last sentence end or line break (the
    unfinished last sentence dropped, and a heading left without its bullets);
    SummarizerError if no sentence was finished."""
    ends = [match.start() for match in _SENTENCE_BOUNDARY.finditer(text) if match.start()]
    if _ENDS_A_SENTENCE.search(text):  # cut right after a sentence's end
        ends.append(len(text))
    lines = text[: ends[-1]].rstrip().splitlines() if ends else []
    while lines and (not lines[-1].strip() or _HEADING_ONLY.match(lines[-1])):
        lines.pop()
    if not lines:
        raise SummarizerError(
            "the summary was cut by max_tokens before its first sentence ended",
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )
    return "\n".join(lines)


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
            answer = self.chat.complete(None, user_prompt(request), max_tokens_for(request.budget))
        except openai.OpenAIError as error:
            raise SummarizerError(f"{self.name} failed: {type(error).__name__}: {error}") from error
        text = formatted(answer.text, answer.tokens_in, answer.tokens_out)
        truncated = answer.finish_reason == "length"
        return SummaryResult(text, answer.tokens_in, answer.tokens_out, truncated)

    def request_body(self, request: SummaryRequest) -> dict[str, Any]:
        """The Chat Completions body :meth:`summarize` sends (for the Batch API)."""
        return {
            "model": self.chat.model,
            "messages": [{"role": "user", "content": user_prompt(request)}],
            "max_tokens": max_tokens_for(request.budget),
            "temperature": 0,
        }


def words_for(budget: int) -> int:
    """The length in words a summary of ``budget`` tokens is asked for."""
    return max(1, int(budget * WORDS_PER_TOKEN))


def max_tokens_for(budget: int) -> int:
    """The ``max_tokens`` of a summary call for a budget of ``budget`` tokens."""
    return math.ceil(budget * HEADROOM)


def user_prompt(request: SummaryRequest) -> str:
    """The one message of a summary call: the instructions, the current summary, the
    new messages, and the length (in words, which models follow better than tokens).
    The instructions are not a system message: some chat templates have no system role
    and drop it (Gemma's, as llama.cpp serves it), and the model would never see them."""
    return (
        f"{SYSTEM_PROMPT}\n\n"
        f"Current summary:\n{request.previous or '(none yet)'}\n\n"
        f"New messages:\n{request.transcript}\n\n"
        f"Write the updated summary in at most {words_for(request.budget)} words."
    )
