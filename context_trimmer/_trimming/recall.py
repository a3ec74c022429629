"""Recall: the earlier turns the newest question needs, brought back verbatim.

The summary keeps what is generally important; a question is specific. On every
prepare() with a summary, the newest user message's words search the folded part of
this path (messages before the summary's start) in the database's own full-text index
(``_store.recall_index``): FTS5 ``bm25()`` on SQLite, ``ts_rank_cd`` on PostgreSQL, each
word as its stem, as the index holds it ("painted" finds "painting").
Hits are kept only when they lie on this path (depth ``d`` and ``path.hashes[d]``
match), so another branch, user or tenant never leaks in; a hit said by someone the
question names (the message's ``name``, or "Name:" opening its text) scores
``SPEAKER_BOOST`` more; hits are kept only when they score at least
``MIN_SCORE_SHARE`` of the best one (a match on a name said everywhere is noise).
Each hit brings its neighbour when it asks a question (the turn that answers it),
then, as the budget allows, the rest of each hit's short exchange, then the turn
before each hit (what a matching reply answers), never a neighbour without a line
next to it. The best fit the budget (``recall_tokens``, at most
``recall_share`` of the history: ``recall_cap``) as one message, in the order they
were said, each session's date once above its lines::

    Earlier messages that may be relevant:
    [8 May, 2023]
    user: Caroline: I went to a LGBTQ support group yesterday.
    assistant: Melanie: That's great! How did it go?

Tool calls and results come back as text lines in that one message, never as raw tool
messages, so the request stays valid. Its tokens are counted exactly. It goes right
before the newest user message, after the cache-stable ``[system][summary][tail]``.
Same path and question, same message.

Round trips: none on SQLite (in-process). On PostgreSQL the count of the question's
terms and the matches of those recall will search go in one statement with prepare()'s
first round trip (:func:`send_term_counts`), before the plan knows where the summary
starts: every match, at most ``DOC_BUDGET`` rows; recall bounds, ranks and limits
them here (:func:`sent_hits`), so it adds no round trip. Otherwise (a plan made
again, after a fold or cut to fit; a term found common in between by another thread)
it counts and searches then.

Cost: this runs on every prepare() with a summary. The ranking scores at most
``DOC_BUDGET`` messages; each candidate line is rendered and counted at most once, and
not at all when a lower bound of its tokens (its words) does not fit what is left; the
message's tokens are the sum of its lines' (``Pieces``), not a second encoding. What
does not change between turns is remembered per process, bounded, and forgotten when the
Trimmer erases: each message's line and session date by its chain hash (``Lines``),
words' and lines' token counts per encoding (``Words``).
"""

from __future__ import annotations

import enum
import math
import re
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

from sqlalchemy import Connection

from .._options import TrimmerOptions
from .._store.batch import Batch, Pending
from .._store.fastsql import driver_rows
from .._store.recall_index import (
    CONTROL_ROLES,
    ROWS_TABLE,
    common_terms,
    fold,
    indexed,
    message_text,
    note_common,
    scoped,
    stem,
    term_count,
    term_counts,
    words_of,
)
from .._store.schema import SEARCH_TABLE
from .._text.tokens import TokenCounter
from .hashing import digest_reader
from .path import Path, StoredPath

Message = Mapping[str, Any]
T = TypeVar("T")
RECALL_HEADER = "Earlier messages that may be relevant:"
MAX_TERMS = 8  # 97.8% of LoCoMo's questions have at most 8 terms
MAX_HITS = 40
PROBE_CAP = 100  # a term in this many messages of the conversation is not searched
DOC_BUDGET = 100  # the ranking scores at most this many messages (was 200: same answers)
MIN_SCORE_SHARE = 0.35  # hits scoring below this share of the best one are noise
DATE_LOOKBACK = 100
LINES_REMEMBERED = 4096  # recall lines kept per process, by message hash (~2 MB)
LEARNED_PER_LINE = 3  # a line of more unknown words is encoded whole, these learned
WORDS_REMEMBERED = 20_000  # per encoding and kind: words whose tokens recall keeps (~2 MB)
SUMMARIES_REMEMBERED = 16  # summaries whose answers recall keeps per process (~1 MB)
ASKED_REMEMBERED = 4096  # per summary: lines asked whether it says them
_DATE_TAG = re.compile(r"^\[([^\]\n]{4,60})\]\s*")
SPEAKER_BOOST = 0.3  # a match said by someone the question names scores this much more
MAX_NAME_WORDS = 3
MAX_NAME_CHARS = 40
# Words too common to find anything (English, German, Spanish, French): dropped from
# the query, which matters on PostgreSQL whose ts_rank_cd has no document frequency.
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been
    am i me my we our you your he she it its his her him hers they them their this that
    these those there
    what which who whom how why when where do does did have has had not no yes can could
    would should will shall may might must just also too than about into over after
    before up out all any some such only own same so very s t don did didn doesn isn
    ever get got go going went one two de la el en y los las del que un una por con para
    se su al lo es como mas pero sus le ya o fue este ha si porque esta son entre cuando
    muy sin sobre ser tiene tambien me hay donde quien desde todo nos durante der die
    das und ist ein eine einen dem den des zu mit von auf fur im nicht sich auch es an
    als wie wir ihr sie er ich du wo was wann wer hat habe war le les et est pas pour
    qui dans ce il elle au aux avec sur ou""".split()
)


@dataclass(frozen=True)
class Recalled:
    """The recall message (None when nothing fits or matches) and its exact tokens."""

    message: Message | None = None
    tokens: int = 0


NOTHING = Recalled()


def query_terms(question: str) -> list[str]:
    """The question's search terms: folded words, stop words and one-letter words out,
    each cut to its stem as the index holds it (see ``_store.recall_index.stem``); at most
    ``MAX_TERMS``, the longest (the most specific, as a rule), so a long message costs
    a bounded number of lookups."""
    words = words_of(question)
    wanted = (stem(w) for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit()))
    terms = list(dict.fromkeys(wanted))
    if len(terms) <= MAX_TERMS:
        return terms
    longest = set(sorted(terms, key=len, reverse=True)[:MAX_TERMS])  # stable: earlier first
    return [term for term in terms if term in longest]


def recall_cap(path: StoredPath, options: TrimmerOptions) -> int:
    """``recall_tokens``, and at most ``recall_share`` of the history's tokens: like the
    summary, recall grows with what was folded, so a short history does not send a long
    recall (on LoCoMo a fixed 1,500 tokens is 6% of one conversation, 12% of another)."""
    if options.recall_share is None:
        return options.recall_tokens
    return min(options.recall_tokens, math.ceil(options.recall_share * path.total_tokens))


def newest_user(messages: Sequence[Message]) -> int | None:
    """Index of the newest user message, or None."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user":
            return index
    return None


def recall(
    connection: Connection,
    path: StoredPath,
    start: int,
    summary_text: str,
    budget: int,
    counted: Pending | None = None,
) -> Recalled:
    """The recall message for ``path``, searching the messages before ``start`` (those
    folded into the summary, or not sent), within ``budget``; ``summary_text``: what
    the request's summary already says; ``counted``: the term counts and
    matches :func:`send_term_counts` read already."""
    question = newest_user(path.messages)
    if budget <= 0 or start <= 0 or question is None or path.anchor_hash is None:
        return NOTHING
    terms = query_terms(message_text(path.messages[question]))
    if not terms:
        return NOTHING
    chosen = informative(connection, path.anchor_hash, terms, counted)
    if not chosen:
        return NOTHING
    sent = None if counted is None else sent_hits(counted, path.anchor_hash, terms, chosen, start)
    matches = search(connection, path.anchor_hash, chosen, start) if sent is None else sent
    found = [hit for hit in matches if on(path, hit)]
    hits = by_speaker(path.messages, found, fold(message_text(path.messages[question])))
    floor = MIN_SCORE_SHARE * hits[0][0] if hits else 0.0
    on_path = [depth for score, depth in hits if score >= floor]
    ranked = _with_neighbours(path.messages, on_path, start)
    return build(path, ranked, summary_text, budget, hits=frozenset(on_path))


def by_speaker(
    messages: Sequence[Message], hits: Sequence[Any], question: str
) -> list[tuple[float, int]]:
    """``(score, depth)`` of ``hits``, best first, each said by someone the (folded)
    ``question`` names scoring ``SPEAKER_BOOST`` more: "What did Jon say about Gina's
    store?" is most often answered by Jon's or Gina's own words, and the name itself
    says little (it is in most messages, too common to be searched)."""
    named: dict[str, bool] = {}
    scored: list[tuple[float, int]] = []
    for hit in hits:
        score, depth = hit.score, hit.depth
        name = speaker(messages[depth])
        if name:
            if name not in named:
                named[name] = re.search(rf"\b{re.escape(name)}\b", question) is not None
            if named[name]:
                score *= 1.0 + SPEAKER_BOOST
        scored.append((-score, depth))
    scored.sort()
    return [(-score, depth) for score, depth in scored]


def speaker(message: Message) -> str:
    """Who said ``message``, folded: its ``name`` field, else a capitalized name of at
    most three words before ": " opening its text ("Caroline: I went to ...", after a
    session date tag); "" when neither says it. String operations, no regular
    expression: this runs for every hit on every prepare()."""
    name = message.get("name")
    if isinstance(name, str):
        return " ".join(words_of(name)[:MAX_NAME_WORDS])
    content = message.get("content")
    if not isinstance(content, str):
        return ""
    start = 0
    if content[:1] == "[":
        tagged = _DATE_TAG.match(content)
        start = tagged.end() if tagged else 0
    head, colon, _ = content[start : start + MAX_NAME_CHARS].partition(": ")
    if not colon or not head[:1].isupper():
        return ""
    if not head.isalpha():  # several words, or marks: "St. John", "O'Neil", "Mary-Ann"
        words = head.split(" ")
        if len(words) > MAX_NAME_WORDS or not all(_name_word(word) for word in words):
            return ""
    return fold(head)


def _name_word(word: str) -> bool:
    return word.replace(".", "").replace("'", "").replace("-", "").isalpha()


def on(path: StoredPath, hit: Any) -> bool:
    """Whether a hit (a message at ``hit.depth``, its hash's bytes) is this path's own
    message (on SQLite the index keeps the first 8 bytes of its hash:
    ``_store.recall_index``)."""
    return bool(
        0 <= hit.depth < len(path.hashes)
        and digest_reader(path.hashes)(hit.depth).startswith(hit.hash)
    )


def lookup(dialect: str, anchor: str, term: str) -> str:
    """How ``term`` is looked up in the conversation of ``anchor`` (terms are indexed
    scoped to it). On SQLite as the index keeps it (``_store.recall_index.indexed``: a
    stem of ``PREFIX`` letters or more by its first ``PREFIX``, so "promoted" finds
    "promotion"; a shorter one, a number or a code ("ref1234") exactly). On PostgreSQL
    exactly: a GIN prefix match builds the bitmap of every word it starts, which costs
    milliseconds for a common one."""
    if dialect != "sqlite":
        return scoped(anchor, term)
    return f'"{scoped(anchor, indexed(term))}"'


def _match(dialect: str, anchor: str, terms: Sequence[str]) -> tuple[str, str]:
    """The full-text condition for ``terms`` (any of them) in the conversation of
    ``anchor`` (one driver parameter), and that parameter."""
    if dialect == "sqlite":
        phrases = " OR ".join(lookup(dialect, anchor, term) for term in terms)
        return f"{SEARCH_TABLE} MATCH ?", phrases
    query = " | ".join(lookup(dialect, anchor, term) for term in terms)
    # No anchor_hash condition: scoped terms select the conversation already (hits are
    # checked against the path), and without it the planner has only the GIN index to use.
    return "document @@ to_tsquery('simple', %s)", query


def send_term_counts(batch: Batch, path: Path) -> Pending | None:
    """PostgreSQL: :func:`informative`'s count of the newest user message's terms and
    the matches of those it will choose (:func:`counts_and_matches`), added to ``batch``
    (with the lookups of prepare()'s first round trip, after the new messages it
    stores: the same counts and hits, two round trips fewer). None: nothing to count."""
    question = newest_user(path.messages)
    if not batch.pipelined or question is None or path.anchor_hash is None:
        return None
    known = common_terms(batch.connection.engine, path.anchor_hash)
    terms = [t for t in query_terms(message_text(path.messages[question])) if t not in known]
    if not terms:
        return None
    return batch.sql(_COUNTED_AND_MATCHED, ([scoped(path.anchor_hash, t) for t in terms],))


def informative(
    connection: Connection, anchor: str, terms: Sequence[str], counted: Pending | None = None
) -> list[str]:
    """The rarest of ``terms`` in this conversation, together in at most ``DOC_BUDGET``
    messages; a term in ``PROBE_CAP`` messages or more says little (and would cost
    much to rank). One statement counts each term's messages, up to the cap (each a
    lookup of this conversation's postings of that term, stopped at the cap). Terms
    found common once are remembered (``_store.recall_index.common_terms``): counts only grow,
    so they are not counted again."""
    known = common_terms(connection.engine, anchor)
    terms = [term for term in terms if term not in known]
    if not terms:
        return []
    if connection.dialect.name == "sqlite":
        counts = _probe(connection, [lookup("sqlite", anchor, term) for term in terms])
    elif counted is not None:
        docs = _counts(counted)
        counts = [docs.get(scoped(anchor, term), 0) for term in terms]
    else:
        counts = _counted(connection, [scoped(anchor, term) for term in terms])
    common = [term for term, found in zip(terms, counts, strict=True) if found >= PROBE_CAP]
    if common:
        note_common(connection.engine, anchor, common)
    return rarest(terms, counts)


def rarest(terms: Sequence[str], counts: Sequence[int]) -> list[str]:
    """:func:`informative`'s choice among ``terms`` found in ``counts`` messages (each
    up to ``PROBE_CAP``): by fewest messages (then by position), while each is under the
    cap and together they are in at most ``DOC_BUDGET`` messages."""
    kept, total = [], 0
    for i, found in sorted(enumerate(counts), key=lambda row: (row[1], row[0])):
        if found == 0:
            continue
        if found >= PROBE_CAP or total + found > DOC_BUDGET:
            break
        kept.append(terms[i])
        total += found
    return kept


def _probe(connection: Connection, lookups: Sequence[str]) -> list[int]:
    """Each FTS5 lookup's messages, counted up to ``PROBE_CAP``, in one statement."""
    probe = (
        f"(SELECT count(*) FROM (SELECT 1 FROM {SEARCH_TABLE} WHERE {SEARCH_TABLE} MATCH ? "
        "LIMIT ?))"
    )
    statement = " UNION ALL ".join(f"SELECT {i}, {probe}" for i in range(len(lookups)))
    parameters = tuple(value for lookup in lookups for value in (lookup, PROBE_CAP))
    # The driver's own statement: this runs on every prepare(), and SQLAlchemy's
    # compilation of a text() with a bind per term costs as much as the lookups.
    found: dict[int, int] = dict(driver_rows(connection, statement, parameters))
    return [found[i] for i in range(len(lookups))]


def _counted(connection: Connection, keys: Sequence[str]) -> list[int]:
    """Each scoped term's indexed messages on PostgreSQL, counted in the index up to the cap."""
    found: dict[str, int] = dict(driver_rows(connection, _COUNTED, (list(keys),)))
    return [found.get(key, 0) for key in keys]


_COUNTED = term_counts(PROBE_CAP)


def counts_and_matches() -> str:
    """PostgreSQL: :data:`_COUNTED`'s counts, as ``(term, messages, NULL, NULL, NULL)``
    rows, and, in the same statement, every message matching the terms :func:`rarest`
    chooses from them, as ``(NULL, NULL, hash, depth, score)`` rows, scored as
    :func:`search` scores them (the same query text: the terms joined by `` | `` in
    the chosen order). No depth bound and no limit: the plan's start is not known
    yet, and the chosen terms are together in at most ``DOC_BUDGET`` messages (the
    counts under the cap are exact), so it is at most that many rows;
    :func:`sent_hits` bounds and ranks them."""
    return f"""
WITH counted AS (
    SELECT term, {term_count(PROBE_CAP)} AS docs, position
    FROM unnest(CAST(%s AS TEXT[])) WITH ORDINALITY AS asked (term, position)
), ranked AS (
    SELECT term, docs, position,
        sum(docs) OVER (ORDER BY docs, position ROWS UNBOUNDED PRECEDING) AS total
    FROM counted WHERE docs > 0
), chosen AS (
    SELECT to_tsquery('simple', string_agg(term, ' | ' ORDER BY docs, position)) AS query
    FROM ranked WHERE docs < {PROBE_CAP} AND total <= {DOC_BUDGET}
)
SELECT term, docs, NULL, NULL, NULL FROM counted WHERE docs > 0
UNION ALL
SELECT NULL, NULL, hash, depth, ts_rank_cd(document, (SELECT query FROM chosen))
FROM {SEARCH_TABLE} WHERE document @@ (SELECT query FROM chosen)
"""


_COUNTED_AND_MATCHED = counts_and_matches()


def _counts(counted: Pending) -> dict[str, int]:
    """The term counts of :func:`counts_and_matches`' rows, by scoped term."""
    return {row[0]: row[1] for row in counted.rows() if row[0] is not None}


def sent_hits(
    counted: Pending, anchor: str, asked: Sequence[str], chosen: Sequence[str], before: int
) -> list[Hit] | None:
    """:func:`search`'s hits for ``chosen`` (from ``asked``, the question's terms) above
    depth ``before``, taken from the matches :func:`counts_and_matches` read: the same
    rows, bounded, ordered (score, then depth) and limited here. None when it matched
    other terms than ``chosen`` (one found common since, by another thread): search."""
    docs = _counts(counted)
    sent = [term for term in asked if scoped(anchor, term) in docs]  # in the order sent
    if rarest(sent, [docs[scoped(anchor, term)] for term in sent]) != list(chosen):
        return None
    hits = [Hit(*row[2:]) for row in counted.rows() if row[0] is None and row[3] < before]
    hits.sort(key=lambda hit: (-hit.score, hit.depth))
    return hits[:MAX_HITS]


def search(connection: Connection, anchor: str, terms: Sequence[str], before: int) -> list[Any]:
    """(hash, depth, score) of the best matches under ``anchor`` above depth ``before``,
    best first, each hash as bytes (on SQLite its first 8). The driver's own statement,
    as in ``_probe``: it runs on every prepare()."""
    condition, query = _match(connection.dialect.name, anchor, terms)
    parameters: tuple[str, ...] = (query,)
    if connection.dialect.name == "sqlite":  # the contentless index's rows: ROWS_TABLE
        statement = (
            f"SELECT kept.hash, kept.depth, -bm25({SEARCH_TABLE}, 1.0, 0.0) AS score "
            f"FROM {SEARCH_TABLE} JOIN {ROWS_TABLE} AS kept ON kept.id = {SEARCH_TABLE}.rowid "
            f"WHERE {condition} AND kept.depth < ? ORDER BY score DESC, kept.depth "
            f"LIMIT {MAX_HITS}"
        )
    else:
        statement = (
            "SELECT hash, depth, "
            "ts_rank_cd(document, to_tsquery('simple', %s)) AS score "
            f"FROM {SEARCH_TABLE} WHERE {condition} AND depth < %s "
            f"ORDER BY score DESC, depth LIMIT {MAX_HITS}"
        )
        parameters = (query, query)
    return [Hit(*row) for row in driver_rows(connection, statement, (*parameters, before))]


class Hit(NamedTuple):
    """A message matching the question: its hash (bytes: on SQLite the first 8), its
    depth on the path, its score."""

    hash: bytes
    depth: int
    score: float


def _with_neighbours(messages: Sequence[Message], hits: Sequence[int], start: int) -> list[int]:
    """Hits in rank order, each followed by the turn answering it when it asks a
    question; then, as the budget allows, the rest of each hit's short exchange, in the
    hits' rank order: the turn after it and the one after that (the reply, and the
    speaker going on: an answer often comes a turn after the words that match); then
    the turn before each hit (what a matching reply answers: "Being ourselves is an
    ongoing adventure of learning and growing." / "Yep, life's about learning...")."""
    ordered: list[int] = []
    exchange: list[int] = []
    before: list[int] = []
    for index in hits:
        ordered.append(index)
        message = messages[index]
        content = message.get("content")
        if type(content) is not str or message.get("tool_calls"):
            content = message_text(message)
        asks = "?" in content
        for after in (index + 1, index + 2):
            if after >= start or messages[after]["role"] in CONTROL_ROLES:
                break
            (ordered if asks and after == index + 1 else exchange).append(after)
        if index > 0 and messages[index - 1]["role"] not in CONTROL_ROLES:
            before.append(index - 1)
    return list(dict.fromkeys(ordered + exchange + before))


def build(
    path: StoredPath,
    ranked: Sequence[int],
    summary_text: str,
    budget: int,
    hits: Collection[int] | None = None,
) -> Recalled:
    """The best-ranked lines that fit ``budget`` tokens, as one message in path order.
    A neighbour (a line not in ``hits``; None: all are hits) comes only next to a line
    recalled or in the summary: a reply without what it replies to is noise. Each line
    is encoded once (see ``Pieces``): the message's tokens are the sum of its pieces'."""
    said = Summarized.of(summary_text)
    pieces = Pieces(path.counter)
    dates_of = Dates(path.messages)
    lines = Lines(path)
    used = pieces.base
    chosen: dict[int, Line] = {}
    covered: set[int] = set()  # recalled, or already in the summary
    dates: set[str] = set()
    unsaid: set[int] = set()  # too long to fit, not rendered: in the summary? (if asked)

    def covers(index: int) -> bool:
        if index in unsaid:
            unsaid.discard(index)
            line = lines.get(index)
            if line is None or said.says(line.words):
                covered.add(index)
        return index in covered

    digest = digest_reader(path.hashes)
    for index in ranked:
        neighbour = hits is not None and index not in hits
        if neighbour and not covers(index - 1) and not covers(index + 1):
            continue
        key = digest(index)
        line = lines.known(key)
        if line is _UNKNOWN:
            if lines.too_long(index, budget - used):
                unsaid.add(index)  # cannot fit: neither rendered nor counted
                continue
            line = lines.render(index, key)
        if line is None or said.says(line.words):
            covered.add(index)
            continue
        if used + least_tokens(line.text) > budget:
            continue  # cannot fit: not counted
        cost = pieces.cost(line.text)
        if used + cost > budget:
            continue
        date = dates_of.before(index) if line.date is None else line.date  # only if it fits
        dated = bool(date) and date not in dates
        if dated:
            cost += pieces.date(date)
        if used + cost <= budget:
            chosen[index] = lines.dated(key, line, date)
            covered.add(index)
            used += cost
            if dated:
                dates.add(date)
    while chosen:
        tokens = pieces.message(chosen)
        if tokens <= budget:
            return Recalled({"role": "system", "content": _content(chosen)}, tokens)
        del chosen[max(chosen, key=ranked.index)]  # the lowest-ranked goes
    return NOTHING


class Lines:
    """The recall lines of a path's messages, remembered by message hash (at most
    ``LINES_REMEMBERED`` per process, the oldest forgotten first): a chain hash names a
    message and everything before it, so its line and session date never change, and a
    conversation's questions recall many of the same lines turn after turn."""

    _known: ClassVar[dict[bytes, Line | None]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: StoredPath):
        self.path = path

    def get(self, index: int) -> Line | None:
        key = digest_reader(self.path.hashes)(index)
        line = self.known(key)
        return self.render(index, key) if line is _UNKNOWN else line

    def known(self, key: bytes) -> Line | Literal[_Unknown.LINE] | None:
        """The line remembered for the message of hash ``key`` (None: a message without
        words), or ``_UNKNOWN``."""
        return self._known.get(key, _UNKNOWN)

    def render(self, index: int, key: bytes) -> Line | None:
        """The line of ``messages[index]`` (hash ``key``), rendered and remembered."""
        line = render(self.path.messages, index)
        self._remember(key, line)
        return line

    def too_long(self, index: int, room: int) -> bool:
        """Whether the line of ``messages[index]`` surely takes more than ``room``
        tokens, judged from its text as the app sent it, without rendering it: its
        ``least_tokens``, its words not even counted when a word per two characters
        (the most it can have) would fit. False when not plain text."""
        message = self.path.messages[index]
        content = message.get("content")
        if type(content) is not str or (len(content) + 1) // 2 + 2 <= room:
            return False  # it may fit (a role adds at most one word: "tool result")
        if message.get("tool_calls") or "\x00" in content:
            return False
        words = len(content.split())
        if not words or content.lstrip()[:1] == "[":
            return False
        role = message["role"]
        return words + 1 + (1 if role == "tool" else role.count(" ")) > room

    def dated(self, key: bytes, line: Line, date: str) -> Line:
        """``line`` (of the message of hash ``key``) with its session date, remembered so."""
        if line.date is None:
            line = Line(line.text, line.words, date)
            self._remember(key, line)
        return line

    def _remember(self, key: bytes, line: Line | None) -> None:
        known = self._known
        with self._lock:
            if len(known) >= LINES_REMEMBERED and key not in known:
                del known[next(iter(known))]
            known[key] = line


def forget_recalled() -> None:
    """Drop what recall remembers of messages (lines, words, summaries): after an
    erasure."""
    with Lines._lock:
        Lines._known.clear()
    with Summarized._lock:
        Summarized._known.clear()
    with Words._lock:
        for words in Words._known.values():
            words.forget()


class Summarized:
    """Whether words are in the summary's text, mostly answered without scanning it
    (a scan of a 4,000-token summary costs microseconds, for every line): words that
    are in it have each of their inner words (between two spaces) among its words.
    Kept per summary (``SUMMARIES_REMEMBERED`` per process), each answer remembered
    (``ASKED_REMEMBERED``): a summary changes only when a fold moves it, so the set of
    its words is made once, not on every prepare(), and a line asked again is a lookup."""

    _known: ClassVar[dict[str, Summarized]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, text: str):
        self.text = text
        self.words = frozenset(text.split())
        self.asked: dict[str, bool] = {}

    @classmethod
    def of(cls, text: str) -> Summarized:
        """The one for ``text``, made if not kept."""
        found = cls._known.get(text)
        if found is None:
            found = Summarized(text)
            with cls._lock:
                if len(cls._known) >= SUMMARIES_REMEMBERED:
                    cls._known.pop(next(iter(cls._known)), None)
                cls._known[text] = found
        return found

    def says(self, words: str) -> bool:
        """``words in text`` (``words``: spaces its only blanks, as ``message_text``)."""
        found = self.asked.get(words)
        if found is None:
            if len(self.asked) >= ASKED_REMEMBERED:
                self.asked.clear()
            found = self.asked[words] = self._says(words)
        return found

    def _says(self, words: str) -> bool:
        if "  " not in words:
            inner = words.split(" ")[1:-1]
            if inner and not self.words.issuperset(inner):
                return False
        return words in self.text


def least_tokens(line: str) -> int:
    """At least how many tokens ``line`` (a letter first, spaces its only blanks: see
    ``message_text``) encodes to, without encoding it: each of its words is in a
    pre-token of the encoding of its own, and each pre-token is a token or more
    (o200k_base's and cl100k_base's pre-tokens hold at most one blank before letters or
    marks, and none within them)."""
    return line.count(" ") + 1 if "  " not in line else len(line.split())


class Pieces:
    """The tokens of the recall message and of its lines, each line counted once.

    A line is chosen by its tokens with a newline before it (what it adds, as if
    counted alone). The message's exact tokens are the sum of its pieces', each with the
    newline that ends it: the header, each date, each line (the last, which has none
    after it, without). This holds because the encodings' pre-tokenizers (o200k_base,
    cl100k_base) never join a newline to what follows it when that is a letter or "["
    (a line opens with its role, a date with "[") and encode each pre-token on its own.
    A line's tokens are its words' (``Words``)."""

    def __init__(self, count: TokenCounter):
        self.count = count
        self.words = Words.of(count)
        self.lines: dict[str, tuple[int, int]] = {}
        self.base = self.words.header  # the message with no line

    def cost(self, line: str) -> int:
        """The tokens ``line`` adds to the message, with a newline before it."""
        return self.words.newline + self._line(line)[0]

    def date(self, date: str) -> int:
        """The tokens the line ``[date]`` adds, with a newline before it."""
        return self.words.date(date)[0]

    def message(self, chosen: Mapping[int, Line]) -> int:
        """The exact tokens of the message of ``chosen`` (``_content``'s)."""
        tokens, date, last = self.words.message, "", ""
        for index in sorted(chosen):
            line = chosen[index]
            if line.date and line.date != date:
                tokens += self.words.date(line.date)[1]
            date = line.date or date
            tokens += self._line(line.text)[1]
            last = line.text
        return tokens - self._line(last)[1] + self._line(last)[0]

    def _line(self, line: str) -> tuple[int, int]:
        found = self.lines.get(line)
        if found is None:
            found = self.lines[line] = self.words.line(line)
        return found


class Words:
    """The tokens of words, remembered per encoding (at most ``WORDS_REMEMBERED`` of
    each kind; past that they are forgotten and counted again): recalled lines are
    mostly words said before, so counting a line costs dictionary lookups, not an
    encoding. A line's only blanks are single spaces (``message_text``), and a space
    always opens a pre-token that holds no other, so a line's tokens are the sum of its
    words', each with the space before it."""

    _known: ClassVar[dict[str, Words]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, count: TokenCounter):
        self.text = count.text
        self.spaced: dict[str, int] = {}  # word -> tokens of " " + word
        self.first: dict[str, int] = {}  # word -> its tokens, opening a line
        self.dates: dict[str, tuple[int, int]] = {}  # "\n[date]", "[date]\n"
        self.lines: dict[str, tuple[int, int]] = {}  # a line, and with a newline after
        empty = count.message({"role": "system", "content": ""})
        self.header = empty + count.text(RECALL_HEADER)  # the message with no line
        self.message = empty + count.text(RECALL_HEADER + "\n")  # and the header's newline
        self.newline = count.text("\n")

    @classmethod
    def of(cls, count: TokenCounter) -> Words:
        found = cls._known.get(count.info.encoding)
        if found is None:
            with cls._lock:
                found = cls._known.setdefault(count.info.encoding, Words(count))
        return found

    def line(self, line: str) -> tuple[int, int]:
        """The tokens of ``line`` (a word first, single spaces its only blanks), and of
        ``line`` and a newline after it."""
        found = self.lines.get(line)
        if found is not None:
            return found
        if "  " in line:
            return self._put(self.lines, line, (self.text(line), self.text(line + "\n")))
        words = line.split(" ")
        head, last, first, spaced = words[0], words[-1], self.first, self.spaced
        if len(words) == 1:
            both = self._get(first, head, head), self._get(first, head + "\n", head + "\n")
            return self._put(self.lines, line, both)
        inner = words[1:-1]
        try:
            total = sum(map(spaced.__getitem__, inner)) + self._get(first, head, head)
        except KeyError:
            unknown = [word for word in inner if word not in spaced]
            for word in unknown[:LEARNED_PER_LINE]:  # the rest another time: one encoding
                self._get(spaced, word, " " + word)
            if len(unknown) > LEARNED_PER_LINE:
                total = self.text(line) - self._get(spaced, last, " " + last)
            else:
                total = sum(self._get(spaced, word, " " + word) for word in inner)
                total += self._get(first, head, head)
        both = (
            total + self._get(spaced, last, " " + last),
            total + self._get(spaced, last + "\n", " " + last + "\n"),
        )
        return self._put(self.lines, line, both)

    def forget(self) -> None:
        for known in (self.spaced, self.first, self.dates, self.lines):
            known.clear()

    def date(self, date: str) -> tuple[int, int]:
        """The tokens of the line ``[date]`` with a newline before it, and after it (a
        date's blanks are as the app wrote them: counted whole)."""
        found = self.dates.get(date)
        if found is None:
            if len(self.dates) >= WORDS_REMEMBERED:
                self.dates.clear()
            found = self.dates[date] = (self.text(f"\n[{date}]"), self.text(f"[{date}]\n"))
        return found

    def _put(self, known: dict[str, T], key: str, value: T) -> T:
        if len(known) >= (LINES_REMEMBERED if known is self.lines else WORDS_REMEMBERED):
            known.clear()
        known[key] = value
        return value

    def _get(self, known: dict[str, int], word: str, text: str) -> int:
        tokens = known.get(word)
        if tokens is None:
            if len(known) >= WORDS_REMEMBERED:
                known.clear()
            tokens = known[word] = self.text(text)
        return tokens


def _content(chosen: Mapping[int, Line]) -> str:
    """The header, then the lines in path order, each session date once above its lines."""
    lines, date = [RECALL_HEADER], ""
    for index in sorted(chosen):
        line = chosen[index]
        if line.date and line.date != date:
            lines.append(f"[{line.date}]")
        date = line.date or date
        lines.append(line.text)
    return "\n".join(lines)


class _Unknown(enum.Enum):
    """What :meth:`Lines.known` returns for a message whose line is not remembered."""

    LINE = 0


_UNKNOWN = _Unknown.LINE


@dataclass(frozen=True)
class Line:
    """One recalled message: ``text`` (``role: words``), its ``words``, its session date."""

    text: str
    words: str
    date: str | None  # None: not looked for yet


def render(messages: Sequence[Message], index: int, dates: Dates | None = None) -> Line | None:
    """``messages[index]`` as a recall line (None when it has no words); its date is
    None when its session's date is to be looked for (``dates``: not asked)."""
    message = messages[index]
    content = message.get("content")
    if type(content) is str and not message.get("tool_calls"):  # message_text's, sooner
        words = " ".join((content.replace("\x00", " ") if "\x00" in content else content).split())
    else:
        words = message_text(message)
    tagged = _DATE_TAG.match(words) if words[:1] == "[" else None
    if tagged:
        date, words = tagged.group(1), words[tagged.end() :]
    else:
        date = dates.before(index) if dates is not None else None
    if not words:
        return None
    role = message["role"]
    if role == "tool":
        role = "tool result"
    elif message.get("tool_calls"):
        role = "assistant (tool call)"
    return Line(f"{role}: {words}", words, date)


def session_date(messages: Sequence[Message], index: int) -> str:
    """The date tag (``[8 May, 2023] ...``) opening the session of ``messages[index]``,
    looked for among the ``DATE_LOOKBACK`` messages before it; "" when there is none."""
    return Dates(messages).before(index)


class Dates:
    """``session_date`` for many indexes of one path, each message looked at once at
    most: for every message looked at, the nearest tagged message at or before it is
    remembered (or how far back there is none), so the lines of one exchange do not
    each scan back over the same messages."""

    def __init__(self, messages: Sequence[Message]):
        self.messages = messages
        # at -> (nearest tagged position <= at, or -1 when none down to low; low)
        self.nearest: dict[int, tuple[int, int]] = {}
        self.tags: dict[int, str] = {}

    def before(self, index: int) -> str:
        floor = max(index - DATE_LOOKBACK, 0)
        at, found, low = index - 1, -1, floor
        seen: list[int] = []
        nearest, messages = self.nearest, self.messages
        while at >= floor:
            known = nearest.get(at)
            if known is not None:
                found, low = known
                if found >= 0:
                    break
                at = low - 1
                continue
            seen.append(at)
            content = messages[at].get("content")
            if isinstance(content, str) and content[:1] == "[" and self._tagged(at, content):
                found = at
                break
            at -= 1
        low = min(low, floor) if found < 0 else found
        for at in seen:
            nearest[at] = (found, low)
        return self.tags[found] if found >= floor else ""

    def _tagged(self, at: int, content: str) -> bool:
        tagged = _DATE_TAG.match(content)
        if tagged:
            self.tags[at] = tagged.group(1)
        return tagged is not None
