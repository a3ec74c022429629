"""Summarizers: turn (previous summary + evicted turns) into a new summary.

A summarizer is any object with ``name``, ``prompt_version``, ``input_tokens`` and
``summarize(request) -> SummaryResult``. Two ship with the library:

- :class:`OpenAISummarizer`: gpt-4o-mini (or any model) through the openai client,
  against OpenAI or any compatible ``base_url``.
- :class:`ExtractiveSummarizer`: local, deterministic, no network. It keeps the
  sentences densest in names, numbers, dates and decisions, in their original order,
  within the token budget.

:func:`fold` drives either: spans larger than the summarizer's input budget are split
with langchain-text-splitters and folded chunk by chunk, and every answer is checked,
so an empty or error-like answer raises :class:`SummarizerError` instead of being
stored or sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_text_splitters import RecursiveCharacterTextSplitter

from ._exceptions import ConfigurationError, SummarizerError

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


@dataclass(frozen=True)
class SummaryRequest:
    """What a summarizer is asked: fold ``transcript`` into ``previous``."""

    previous: str | None
    transcript: str
    budget: int
    count_tokens: Callable[[str], int]


@dataclass(frozen=True)
class SummaryResult:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0


class Summarizer(Protocol):
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
    """Fold a transcript into the previous summary, chunk by chunk when it is large."""
    chunks = split_transcript(request.transcript, summarizer.input_tokens, request.count_tokens)
    previous, tokens_in, tokens_out = request.previous, 0, 0
    for chunk in chunks:
        try:
            result = summarizer.summarize(
                SummaryRequest(previous, chunk, request.budget, request.count_tokens)
            )
        except SummarizerError as error:
            raise SummarizerError(
                str(error),
                tokens_in=tokens_in + error.tokens_in,
                tokens_out=tokens_out + error.tokens_out,
            ) from error
        tokens_in += result.tokens_in
        tokens_out += result.tokens_out
        previous = checked_summary(result, tokens_in, tokens_out)
    assert previous is not None
    return SummaryResult(previous, tokens_in, tokens_out)


def split_transcript(text: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    if count(text) <= max_tokens:
        return [text]
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
    text = result.text.strip()
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


class OpenAISummarizer:
    """Summaries by a chat model (gpt-4o-mini by default) on any OpenAI-compatible API."""

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
    ):
        self.model = model
        self.name = f"openai:{model}"
        self.input_tokens = input_tokens
        self._client = client
        self._owns_client = client is None
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._max_retries = max_retries

    @property
    def client(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                base_url=self._base_url,
                api_key=self._api_key,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP client this summarizer created (not one passed in)."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        import openai

        prompt = (
            f"Current summary:\n{request.previous or '(none yet)'}\n\n"
            f"New messages:\n{request.transcript}\n\n"
            f"Write the updated summary in at most {request.budget} tokens."
        )
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": prompt},
                ],
                max_tokens=request.budget,
                temperature=0,
            )
        except openai.OpenAIError as error:
            raise SummarizerError(f"{self.name} failed: {type(error).__name__}: {error}") from error
        usage = getattr(response, "usage", None)
        tokens_in = getattr(usage, "prompt_tokens", 0) or 0
        tokens_out = getattr(usage, "completion_tokens", 0) or 0
        choices = getattr(response, "choices", None) or []
        text = (choices[0].message.content if choices else None) or ""
        return SummaryResult(text, tokens_in, tokens_out)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'+-]*")
_OPENER = re.compile(
    r"^(?:(?:hey|hi|hello|wow|whoa|yeah|yes|yep|oh|ah|aww|haha|omg|lol|cool|great|awesome|"
    r"thanks|thank you|congrats|nice|sure|ok|okay|well|so)\b[^A-Za-z0-9]*)+",
    re.IGNORECASE,
)
_FILLER = re.compile(
    r"\b(?:really|just|super|totally|actually|very|pretty|quite|definitely|literally|"
    r"so much|kind of|sort of)\s+",
    re.IGNORECASE,
)
_STOPWORDS = frozenset(
    """a an the and or but if then so of to in on at by for with from as is are was were be
    been being am i me my mine we our you your he she it its they them their this that these
    those there here what which who whom how why when where do does did done have has had
    having not no yes can could would should will shall may might must just really very
    also too than into about over after before up down out off again once all any both each
    few more most other some such only own same s t don it's i'm i've i'd i'll that's you're
    thanks thank hey hi wow yeah oh great awesome cool love glad sounds amazing""".split()
)


class ExtractiveSummarizer:
    """Local, deterministic summaries that keep as many distinct facts as fit.

    Sentences of the previous summary and of the new transcript are trimmed of openers
    and filler words; questions and fragments are dropped. Then, greedily, the sentence
    that adds the most not-yet-kept content words (weighted by rarity: names, numbers,
    dates and specific nouns are rare) per token is kept, until the budget is full.
    The kept sentences are written in their original order.
    """

    name = "extractive"
    prompt_version = PROMPT_VERSION
    input_tokens = 1_000_000

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        candidates = list(
            dict.fromkeys(_summary_lines(request.previous) + _sentences(request.transcript))
        )
        words = [_content_words(text) for text in candidates]
        weight = _rarity(words)
        costs = [request.count_tokens(text) + 1 for text in candidates]
        chosen: list[int] = []
        covered: set[str] = set()
        used = 0
        remaining = set(range(len(candidates)))
        while remaining:
            best = max(
                remaining,
                key=lambda i: (sum(weight[w] for w in words[i] - covered) / costs[i], -i),
            )
            remaining.discard(best)
            if not words[best] - covered:
                break
            if used + costs[best] <= request.budget:
                chosen.append(best)
                covered |= words[best]
                used += costs[best]
        return SummaryResult("\n".join(candidates[i] for i in sorted(chosen)))


def _summary_lines(previous: str | None) -> list[str]:
    return [line for line in (previous or "").splitlines() if line.strip()]


def _sentences(transcript: str) -> list[str]:
    sentences = []
    for line in transcript.splitlines():
        speaker, _, text = line.partition(": ")
        for sentence in _SENTENCE_END.split(text):
            sentence = _FILLER.sub("", _OPENER.sub("", sentence.strip())).strip()
            if sentence.endswith("?") or len(_WORD.findall(sentence)) < 4:
                continue
            sentences.append(f"{speaker}: {sentence}")
    return sentences


def _content_words(text: str) -> set[str]:
    _speaker, _, body = text.partition(": ")
    return {w.lower() for w in _WORD.findall(body)} - _STOPWORDS


def _rarity(words: list[set[str]]) -> dict[str, float]:
    frequency: dict[str, int] = {}
    for group in words:
        for word in group:
            frequency[word] = frequency.get(word, 0) + 1
    total = len(words) + 1
    return {
        word: math.log(total / count) + (1.0 if word[0].isdigit() else 0.0)
        for word, count in frequency.items()
    }


def summarizer_from(spec: str | Summarizer | None, *, api_key_present: bool) -> Summarizer:
    """``"extractive"``, ``"openai"``, a Summarizer, or None (OpenAI when a key is set)."""
    if spec is None:
        return OpenAISummarizer() if api_key_present else ExtractiveSummarizer()
    if spec == "extractive":
        return ExtractiveSummarizer()
    if spec == "openai":
        return OpenAISummarizer()
    if isinstance(spec, str):
        raise ConfigurationError(
            f"unknown summarizer {spec!r}; use 'extractive', 'openai' or a Summarizer object"
        )
    return spec
