"""The local summarizer: deterministic, no network, keeps the facts most likely asked about.

The summary is a list of facts under the dates they were said, one line per run of
facts by the same speaker::

    [8 May, 2023]
    Caroline: went to a LGBTQ support group yesterday; researching adoption agencies
    Melanie: took my kids to a pottery workshop last Friday

Folding re-reads the previous summary's facts, splits the new turns into clauses
(dropping questions, greetings and filler; a message opening with a ``[date]`` tag
dates the clauses after it) and greedily keeps the clause with the best value per
token. A clause's value is the content words it adds that no kept clause has yet,
each weighted by its rarity among the candidates, times a prior from its form:
first-person news, times, numbers, names and titles up; replies to the listener and
general remarks down; answers to a question up. Each date, and each speaker on each
date, also counts as a word, so every session keeps something of both sides. Facts
already in the summary get a bonus: they stay unless clearly outranked, which keeps
the summary stable between folds. The weights were measured on the LoCoMo
conversations (``benchmarks/locomo_savings.py``). Same input, same output.

A fold re-reads the previous summary (up to ``summary_tokens``, 4,000 by default) and
folds a few new turns. What it computes per summary line (its facts and their priors),
per fact (its words, its tokens) and per date block (its lines' counts) is remembered
by the text it comes from (bounded, per process), since a summary's lines come back
fold after fold; a process that remembers nothing computes the same. The facts are
ranked again on every fold (a word's rarity is over all of them), and the summary is
fitted to its budget by its lines' exact counts, never encoded whole when
those add up (``benchmarks/fold_cpu.py``).
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, groupby

from .summarizers import SummaryRequest, SummaryResult, remember_count

_SPEAKER_LABEL = re.compile(r"^([A-Z][\w'.-]*(?: [A-Z][\w'.-]*){0,2}): ")
_DATE_TAG = re.compile(r"^\[([^\]]{4,60})\]\s*")
_DATE_LINE = re.compile(r"\[([^\]\n]+)\]")
_TIME_OF_DAY = re.compile(r"^\d{1,2}:\d{2}(?:\s*[ap]\.?m\.?)?\s+(?:on\s+)?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_CLAUSE_BREAK = re.compile(
    r"\s+[-\u2013\u2014]+\s+|;\s+|:\s+|,\s+(?=(?:and|but|so|because|which)\b)"
    r"|,?\s+(?:and|but)\s+(?=(?:it|it's|it was|that|that's|this|they|they're)\b)"
)
_TAG_QUESTION = re.compile(
    r",?\s+(?:right|isn't it|aren't they|don't you think|you know|huh|eh)\?$", re.IGNORECASE
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'+-]*")
_NUMBER = re.compile(r"[0-9]")  # a word (of _WORD) that starts as a number
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
NOTHING_KEPT = "(small talk only)"
# Priors and weights (see the module docstring), measured on LoCoMo.
ANSWER_BONUS = 2.0  # a clause in the reply to a question
ADDRESSED_FACTOR = 0.4  # a clause that calls a speaker by name ("so true, Mel")
KEPT_BONUS = 6.0  # a fact already in the previous summary
DATE_WEIGHT = 20.0  # the first fact kept from a date
SPEAKER_WEIGHT = 20.0  # the first fact kept from a speaker on a date

MEMO = 4_096
"""Entries of each memo (facts' words, priors and tokens; summary lines; date blocks'
counts), per process: about ten conversations' summaries, a few MB each at most."""


@dataclass(frozen=True)
class Fact:
    """One clause: who said it, when, and how likely it is worth keeping (``prior``,
    not part of its identity)."""

    speaker: str
    text: str
    date: str = ""
    prior: float = field(default=1.0, compare=False)


class ExtractiveSummarizer:
    """Local, deterministic summaries that keep as many distinct facts as fit the budget."""

    name = "extractive"
    prompt_version = "1"
    input_tokens = 1_000_000

    def summarize(self, request: SummaryRequest) -> SummaryResult:
        kept, date = parse_summary(request.previous)
        new, date = facts_of(request.transcript, date)
        candidates = list(dict.fromkeys(kept + new))
        chosen = _select(candidates, date, request)
        text = _fit(candidates, chosen, date, request)
        # Turns with nothing worth keeping (greetings, thanks) still fold away.
        return SummaryResult(text or NOTHING_KEPT)


def _fit(candidates: list[Fact], chosen: list[int], date: str, request: SummaryRequest) -> str:
    """The summary of the most useful ``chosen`` facts (in the greedy's order) that fits
    the budget exactly. Speaker labels were not in the greedy's costs: the least useful
    facts (picked last) go, then the date line. The search counts the summary by its
    lines (:class:`_LineCounts`, remembered), and so is the result when its lines'
    counts add up to its count (:func:`_lines_add_up`; else it is counted whole, and
    if that count disagrees, the search runs again on whole counts)."""
    count = request.count_tokens

    def render(kept: int, latest: str) -> str:
        return render_facts([candidates[i] for i in sorted(chosen[:kept])], latest)

    def whole(kept: int, latest: str) -> int:
        return count(render(kept, latest))

    lines = _LineCounts(candidates, chosen, count)
    kept, latest = _most_that_fit(candidates, chosen, date, request, lines)
    text = render(kept, latest)
    tokens = lines(kept, latest) if _lines_add_up(text) else count(text)
    if tokens <= request.budget:
        remember_count(count, text, tokens)
        return text
    return render(*_most_that_fit(candidates, chosen, date, request, whole))


def _most_that_fit(
    candidates: list[Fact],
    chosen: list[int],
    date: str,
    request: SummaryRequest,
    measure: Callable[[int, str], int],
) -> tuple[int, str]:
    """How many of ``chosen`` (a prefix) to render, and under which latest date, for
    the most that ``measure`` (the tokens of a rendering) says fit the budget: the
    facts' own tokens say about how many must go (measured again until it fits), then
    one more is tried while it fits (a summary with one more fact is never shorter);
    with none left, the date line goes too."""
    budget = request.budget
    kept = len(chosen)
    over = measure(kept, date) - budget
    if over <= 0:
        return kept, date
    while kept and over > 0:
        while kept and over > 0:
            kept -= 1
            over -= _tokens(request.count_tokens, candidates[chosen[kept]].text) + 1
        over = measure(kept, date) - budget
    while kept < len(chosen):
        if measure(kept + 1, date) > budget:
            break
        kept += 1
    if not kept and date and measure(kept, date) > budget:
        return 0, ""
    return kept, date


class _LineCounts:
    """The tokens of a rendering of the first ``kept`` of ``chosen``, as the sum of its
    lines' counts (:func:`_line_tokens`), without rendering it whole.

    A rendering is a run of date blocks (the facts of one date, under its date line);
    a block's lines do not depend on the blocks around it, so its counts are
    remembered for the search, which renders about the same blocks several times."""

    def __init__(self, candidates: list[Fact], chosen: list[int], count: Callable[[str], int]):
        self._candidates = candidates
        self._dates = [fact.date for fact in candidates]
        self._chosen = chosen
        self._count = count
        self._blocks: dict[tuple[bool, tuple[int, ...]], tuple[int, int]] = {}
        self._measured: dict[tuple[int, str], int] = {}

    def __call__(self, kept: int, latest: str) -> int:
        tokens = self._measured.get((kept, latest))
        if tokens is None:
            tokens = self._measured[kept, latest] = self._measure(kept, latest)
        return tokens

    def _measure(self, kept: int, latest: str) -> int:
        total, last_line = 0, 0  # the last line's count with its newline, less without
        date = ""
        runs = groupby(sorted(self._chosen[:kept]), key=self._dates.__getitem__)
        for block, (day, facts) in enumerate(runs):
            counted, last_line = self._block(block == 0, tuple(facts))
            total += counted
            date = day
        if latest and latest != date:
            counted, last_line = self._pieces(_date_line(latest))
            total += counted
        return total - last_line

    def _block(self, first: bool, block: tuple[int, ...]) -> tuple[int, int]:
        """A block's lines' counts, each with its newline; and its last line's count
        with its newline less that without (what the summary's last line saves)."""
        key = (first, block)
        known = self._blocks.get(key)
        if known is None:
            facts = [self._candidates[i] for i in block]
            text = render_facts(facts)
            if not first and not facts[0].date:
                text = _date_line("") + "\n" + text  # as render_facts writes it there
            known = self._blocks[key] = self._pieces(text)
        return known

    def _pieces(self, text: str) -> tuple[int, int]:
        return _pieces(self._count, text)


@lru_cache(maxsize=MEMO)
def _pieces(count: Callable[[str], int], text: str) -> tuple[int, int]:
    """The counts of ``text``'s lines, each with its newline; and the last one's with
    its newline less that without (remembered: a date block's text mostly comes back
    from one fold to the next)."""
    lines = text.split("\n")
    counted = sum(_tokens(count, line + "\n") for line in lines)
    return counted, _tokens(count, lines[-1] + "\n") - _tokens(count, lines[-1])


def _line_tokens(count: Callable[[str], int], text: str) -> int:
    """``count(text)`` as the sum of its lines' counts, each with its newline (remembered:
    a summary's lines mostly come back). It is the count when :func:`_lines_add_up`."""
    lines = text.split("\n")
    last = lines.pop()
    return sum(_tokens(count, line + "\n") for line in lines) + _tokens(count, last)


_CROSSES_A_LINE = re.compile(r"\n(?:[/\r]|\s*\n)")


def _lines_add_up(text: str) -> bool:
    """Whether ``text``'s count is the sum of its lines' counts. tiktoken's encodings
    (o200k_base, cl100k_base) split text into pieces before encoding them, and a piece
    runs past a newline only into a line that starts with ``/`` (after punctuation) or
    a carriage return, or over a blank line; a summary's lines never do (they are dates
    in brackets and ``speaker: facts``), so its count is known from its lines' (the
    search counted them) instead of encoding 4,000 tokens again
    (``tests/test_extractive.py`` checks it on arbitrary text)."""
    return _CROSSES_A_LINE.search(text) is None


def _select(candidates: list[Fact], latest: str, request: SummaryRequest) -> list[int]:
    """Greedy weighted max coverage: indexes of the facts to keep, most useful first.

    A fact's value per token is its prior times the weight of the words it adds,
    over its tokens. Values only fall as words get covered, so the greedy is lazy
    (CELF): a fact is re-scored only when it reaches the top of the heap, which keeps
    a fold over thousands of clauses fast. The budget also pays each date's line
    once, and the latest date's line up front (it is always written).

    A weight is a rarity among all the candidates, so every fold scores every fact
    again; what a fact brings to it (its words, its tokens) is remembered by its text.
    A value's sum of weights is exact (``math.fsum``), so the order the words come in
    (a set's, which differs between processes) changes nothing.
    """
    count, budget = request.count_tokens, request.budget
    terms = [_terms(fact.text, fact.date, fact.speaker, count) for fact in candidates]
    weight = _rarity([content for content, _, _, _ in terms])
    for day, talk in {sessions for _, _, _, sessions in terms if sessions}:
        weight[day] = DATE_WEIGHT
        weight[talk] = SPEAKER_WEIGHT
    words = [group for _, group, _, _ in terms]
    costs = [cost for _, _, cost, _ in terms]
    priors = [fact.prior for fact in candidates]
    dated = {latest} if latest else set()
    used = _tokens(count, _date_line(latest)) + 1 if latest else 0
    chosen: list[int] = []
    covered: set[str] = set()
    weight_of, fsum = weight.__getitem__, math.fsum
    heap = [
        (-(prior * fsum(map(weight_of, group)) / cost), i)
        for i, (prior, group, cost) in enumerate(zip(priors, words, costs, strict=True))
        if group
    ]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        best = pop(heap)[1]
        cost = costs[best]
        if used + cost > budget:
            continue  # it would never fit: the budget left only shrinks
        value = -(priors[best] * fsum(map(weight_of, words[best] - covered)) / cost)
        if value == 0:
            continue
        if heap and (value, best) > heap[0]:
            push(heap, (value, best))  # outranked once re-scored: try again later
            continue
        date = candidates[best].date
        if date and date not in dated:
            cost += _tokens(count, _date_line(date)) + 1
        if used + cost <= budget:
            used += cost
            chosen.append(best)
            covered |= words[best]
            dated.add(date)
    return chosen


def render_facts(facts: list[Fact], latest: str = "") -> str:
    """Facts under their date lines, one line per run of facts by the same speaker.

    ``latest`` (the date of the newest folded message) closes the summary even when
    no fact of that date was kept, so the next fold knows when its messages began.
    """
    lines: list[str] = []
    date, speaker = "", None
    for fact in facts:
        if fact.date != date:
            date, speaker = fact.date, None
            lines.append(_date_line(date))
        if fact.speaker == speaker:
            lines[-1] += FACT_SEPARATOR + fact.text
        else:
            speaker = fact.speaker
            lines.append(f"{speaker}: {fact.text}")
    if latest and latest != date:
        lines.append(_date_line(latest))
    return "\n".join(lines)


def parse_summary(summary: str | None) -> tuple[list[Fact], str]:
    """The facts of a rendered summary, and its latest date.

    A summary's lines mostly come back from one fold to the next, so what a line says
    (:func:`_read_line`) and its facts with their priors (:func:`_kept_facts`) are
    remembered by the line."""
    runs: list[tuple[str, tuple[str, ...], str]] = []
    date = ""
    for line in (summary or "").splitlines():
        header, speaker, texts = _read_line(line)
        if header is not None:
            date = header
        elif texts:
            runs.append((speaker, texts, date))
    speakers = frozenset(speaker for speaker, _, _ in runs)
    facts: list[Fact] = []
    for speaker, texts, day in runs:
        facts.extend(_kept_facts(speaker, texts, day, speakers))
    return facts, date


@lru_cache(maxsize=MEMO)
def _read_line(line: str) -> tuple[str | None, str, tuple[str, ...]]:
    """A summary line's date (if it is a date line), else its speaker and facts' texts."""
    if line == NOTHING_KEPT:
        return None, "", ()
    header = _DATE_LINE.fullmatch(line)
    if header:
        return header.group(1), "", ()
    speaker, separator, body = line.partition(": ")
    if not separator:
        speaker, body = "", line
    return None, speaker, tuple(text for text in body.split(FACT_SEPARATOR) if text.strip())


@lru_cache(maxsize=MEMO)
def _kept_facts(
    speaker: str, texts: tuple[str, ...], date: str, speakers: frozenset[str]
) -> tuple[Fact, ...]:
    """The facts of one summary line, as kept facts (their priors with the bonus)."""
    return tuple(Fact(speaker, text, date, KEPT_BONUS * _prior(text, speakers)) for text in texts)


def facts_of(transcript: str, date: str = "") -> tuple[list[Fact], str]:
    """Clauses worth keeping from a rendered transcript (``role: text`` lines).

    A message opening with a ``[date]`` tag dates itself and the messages after it;
    ``date`` is the one in force before the transcript. Returns the facts and the
    date in force after it.
    """
    found: list[tuple[Fact, bool]] = []
    asked = False
    for line in transcript.splitlines():
        role, _, text = line.partition(": ")
        answers, asked = asked, text.rstrip().endswith("?")
        tag = _DATE_TAG.match(text)
        if tag:
            date = _TIME_OF_DAY.sub("", tag.group(1).strip())
            text = text[tag.end() :]
        label = _SPEAKER_LABEL.match(text)
        speaker = label.group(1) if label else role
        if label:
            text = text[label.end() :]
        for sentence in _SENTENCE_END.split(text):
            sentence = _TAG_QUESTION.sub("", sentence.rstrip())
            if sentence.endswith("?"):
                continue
            for clause in _CLAUSE_BREAK.split(sentence):
                clause = _FILLER.sub("", _OPENER.sub("", clause.strip())).strip(" ,.!")
                if len(_WORD.findall(clause)) >= MIN_WORDS:
                    found.append((Fact(speaker, clause, date), answers))
    speakers = frozenset(fact.speaker for fact, _ in found)
    facts = [
        Fact(
            fact.speaker,
            _LEADING_SUBJECT.sub("", fact.text).replace(FACT_SEPARATOR, ", "),
            fact.date,
            _prior(fact.text, speakers) * (ANSWER_BONUS if answers else 1.0),
        )
        for fact, answers in found
    ]
    return facts, date


def _date_line(date: str) -> str:
    return f"[{date}]"


# How a clause's form changes the odds that it states a fact someone will ask about
# later (measured on LoCoMo clauses): first-person news, times, numbers, titles and
# names up; replies to the listener and general remarks down.
_PRIORS = [
    (re.compile(r"\b(?:i|we|my|our|me|us|i'm|i've|we're|we've)\b", re.IGNORECASE), 1.5),
    (re.compile(r"\b(?:you|your|you're|you've|yours)\b", re.IGNORECASE), 0.3),
    (
        re.compile(
            r"\b(?:yesterday|tomorrow|tonight|ago|recently|lately|the other day|since we|"
            r"(?:last|next|this) (?:week|weekend|month|year|night|summer|fall|spring|winter|"
            r"monday|tuesday|wednesday|thursday|friday|saturday|sunday))\b",
            re.IGNORECASE,
        ),
        3.0,
    ),
    (
        re.compile(
            r"^(?:it's|it is|that's|that is|this is|life|being|having|losing|taking|finding)\b",
            re.IGNORECASE,
        ),
        0.3,
    ),
    (
        re.compile(
            r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|twice|once)\b",
            re.IGNORECASE,
        ),
        3.0,
    ),
    (re.compile(r"[\"\u201c]|\b(?:named|name(?:'s| is| was)|called)\b", re.IGNORECASE), 2.0),
    (re.compile(r"(?<=[a-z] )[A-Z][a-z]"), 3.0),  # a capital inside a clause: a name
]


_VOCATIVE = re.compile(r",\s+([A-Z][a-z]+)$|^([A-Z][a-z]+),\s")


@lru_cache(maxsize=MEMO)
def _tokens(count: Callable[[str], int], text: str) -> int:
    """``count(text)``, remembered: a summary's facts are counted fold after fold."""
    return count(text)


@lru_cache(maxsize=MEMO)
def _prior(text: str, speakers: frozenset[str]) -> float:
    prior = 1.0
    for pattern, factor in _PRIORS:
        if pattern.search(text):
            prior *= factor
    if _addressed(text, speakers):
        prior *= ADDRESSED_FACTOR
    return prior


def _addressed(text: str, speakers: frozenset[str]) -> bool:
    """Whether a clause calls a speaker by name ("That's so true, Mel"): a reply."""
    match = _VOCATIVE.search(text)
    if match is None:
        return False
    name = match.group(1) or match.group(2)
    return any(speaker.startswith(name) for speaker in speakers)


@lru_cache(maxsize=MEMO)
def _content_words(text: str) -> frozenset[str]:
    return frozenset({w.lower() for w in _WORD.findall(text)} - _STOPWORDS - _SMALL_TALK)


@lru_cache(maxsize=MEMO)
def _terms(
    text: str, date: str, speaker: str, count: Callable[[str], int]
) -> tuple[frozenset[str], frozenset[str], int, tuple[str, str] | None]:
    """What the greedy needs of a fact: its content words; what it can cover (those
    and, when it has some and a date, its date and its speaker on that date, each
    counted as a word); its cost in tokens; the words of its date and speaker."""
    content = _content_words(text)
    sessions = (f"[{date}]", f"[{date}] {speaker}") if date else None
    group = content.union(sessions) if sessions and content else content
    return content, group, _tokens(count, text) + 1, sessions


def _rarity(words: Sequence[AbstractSet[str]]) -> dict[str, float]:
    """Each word's weight: the log of how rare it is among ``words`` (one set per
    fact), plus one for a number (a word starting with a digit)."""
    frequency = Counter(chain.from_iterable(words))
    total = len(words) + 1
    logs = {count: math.log(total / count) for count in set(frequency.values())}
    weight = dict(zip(frequency, map(logs.__getitem__, frequency.values()), strict=True))
    for number in filter(_NUMBER.match, frequency):
        weight[number] += 1.0
    return weight
