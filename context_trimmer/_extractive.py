"""The local summarizer: deterministic, no network, keeps as many distinct facts as fit.

The summary is a list of facts, one line per run of facts by the same speaker::

    Caroline: researching adoption agencies; necklace from my grandma in Sweden
    Melanie: took my kids to a pottery workshop last Friday

Folding re-reads the previous summary's facts, splits the new turns into clauses
(dropping questions, greetings and filler), and then greedily keeps the clause that
adds the most not-yet-kept content words per token, each word weighted by its rarity
among the candidates, so names, numbers, dates and specific nouns win over small talk.
The kept facts are written back in their original order. Same input, same output.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ._summarizers import PROMPT_VERSION, SummaryRequest, SummaryResult

_SPEAKER_LABEL = re.compile(r"^([A-Z][\w'.-]*(?: [A-Z][\w'.-]*){0,2}): ")
_DATE_TAG = re.compile(r"^\[([^\]]{4,60})\]\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_CLAUSE_BREAK = re.compile(
    r"\s+[-\u2013\u2014]+\s+|;\s+|:\s+|,\s+(?=(?:and|but|so|because|which)\b)"
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'+-]*")
_OPENER = re.compile(
    r"^(?:(?:hey|hi|hello|wow|whoa|yeah|yes|yep|oh|ah|aww|haha|omg|lol|cool|great|awesome|"
    r"thanks|thank you|congrats|nice|sure|ok|okay|well|so|and|but)\b[^A-Za-z0-9]*)+",
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
# Words of small talk and feeling: frequent in chat, rarely the fact anyone asks about.
_SMALL_TALK = frozenset(
    """feel feels feeling felt feelings happy happiness proud excited exciting glad sad
    sorry hope hoping hopefully wish wishing wonderful fantastic incredible inspiring
    inspired inspiration meaningful special beautiful beauty lovely nice good best better
    amazing awesome cool fun hard tough difficult easy important support supportive
    supporting kind kindness gesture moment moments life lives journey world people thing
    things stuff lot lots time times day days way ways keep keeping going get getting got
    make making made take taking took know knew think thought mean means meant see seeing
    saw look looks looking want wanted need needed try trying tried let us together
    always never ever still even much many well right sure totally absolutely truly
    definitely peace peaceful perspective dream dreams reminds remind reminder remember
    heart soul spirit joy fulfilling rewarding comfort comforting strength strong
    positive negative vibe vibes energy mind care caring appreciate appreciated
    grateful thankful blessed awesome wow congrats congratulations cheers proud
    encouraging encourage encouraged motivation motivated motivating passion passionate
    wonderful experience experiences something anything everything nothing someone
    anyone everyone cherish cherished memories memory awesome fab gonna wanna""".split()
)
_LEADING_SUBJECT = re.compile(
    r"^(?:(?:i|we|i've|we've|i'm|we're|i'd|we'd|i'll|we'll|it|it's|that|that's|this|there)"
    r"(?:\s+(?:have|had|has|been|was|were|am|are|is|just|also|recently|finally|even|all))*\s+)",
    re.IGNORECASE,
)
MIN_WORDS = 3
FACT_SEPARATOR = "; "


@dataclass(frozen=True)
class Fact:
    speaker: str
    text: str


class ExtractiveSummarizer:
    """Local, deterministic summaries that keep as many distinct facts as fit the budget."""

    name = "extractive"
    prompt_version = PROMPT_VERSION
    input_tokens = 1_000_000

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        candidates = list(
            dict.fromkeys(parse_summary(request.previous) + facts_of(request.transcript))
        )
        chosen = _select(candidates, request)
        text = render_facts([candidates[i] for i in sorted(chosen)])
        # Speaker labels were not in the greedy's costs: drop the least useful facts
        # (picked last) until the rendered summary fits the budget exactly.
        while chosen and request.count_tokens(text) > request.budget:
            chosen.pop()
            text = render_facts([candidates[i] for i in sorted(chosen)])
        return SummaryResult(text)


def _select(candidates: list[Fact], request: SummaryRequest) -> list[int]:
    """Greedy max coverage: indexes of the facts to keep, most useful first."""
    words = [_content_words(fact.text) for fact in candidates]
    weight = _rarity(words)
    costs = [request.count_tokens(fact.text) + 1 for fact in candidates]
    chosen: list[int] = []
    covered: set[str] = set()
    used = 0
    remaining = {i for i in range(len(candidates)) if words[i]}
    while remaining:
        best = max(
            remaining,
            key=lambda i: (math.fsum(weight[w] for w in words[i] - covered) / costs[i], -i),
        )
        remaining.discard(best)
        if not words[best] - covered:
            break
        if used + costs[best] <= request.budget:
            chosen.append(best)
            covered |= words[best]
            used += costs[best]
    return chosen


def render_facts(facts: list[Fact]) -> str:
    lines: list[tuple[str, list[str]]] = []
    for fact in facts:
        if lines and lines[-1][0] == fact.speaker:
            lines[-1][1].append(fact.text)
        else:
            lines.append((fact.speaker, [fact.text]))
    return "\n".join(f"{speaker}: {FACT_SEPARATOR.join(texts)}" for speaker, texts in lines)


def parse_summary(summary: str | None) -> list[Fact]:
    facts: list[Fact] = []
    for line in (summary or "").splitlines():
        speaker, separator, body = line.partition(": ")
        if not separator:
            speaker, body = "", line
        facts.extend(Fact(speaker, text) for text in body.split(FACT_SEPARATOR) if text.strip())
    return facts


def facts_of(transcript: str) -> list[Fact]:
    """Clauses worth keeping from a rendered transcript (``role: text`` lines)."""
    facts: list[Fact] = []
    for line in transcript.splitlines():
        role, _, text = line.partition(": ")
        text = _DATE_TAG.sub("", text)
        label = _SPEAKER_LABEL.match(text)
        speaker = label.group(1) if label else role
        if label:
            text = text[label.end() :]
        for sentence in _SENTENCE_END.split(text):
            if sentence.rstrip().endswith("?"):
                continue
            for clause in _CLAUSE_BREAK.split(sentence):
                clause = _FILLER.sub("", _OPENER.sub("", clause.strip())).strip(" ,.!")
                clause = _LEADING_SUBJECT.sub("", clause)
                if len(_WORD.findall(clause)) >= MIN_WORDS:
                    facts.append(Fact(speaker, clause.replace(FACT_SEPARATOR, ", ")))
    return facts


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - _STOPWORDS - _SMALL_TALK


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
