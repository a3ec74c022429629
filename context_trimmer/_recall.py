"""Recall: the earlier turns the newest question needs, brought back verbatim.

The summary keeps what is generally important; a question is specific. On every
prepare() with a summary, the newest user message's words search the folded part of
this path (messages before the summary's start) in the database's own full-text index
(``_recall_index``): FTS5 ``bm25()`` on SQLite, ``ts_rank_cd`` on PostgreSQL. Hits are
kept only when they lie on this path (depth ``d`` and ``path.hashes[d]`` match), so
another branch, user or tenant never leaks in. Each hit brings its neighbour when it
asks a question (the turn that answers it). The best fit ``recall_tokens`` as one
message, in the order they were said::

    Earlier messages that may be relevant:
    [8 May, 2023] user: Caroline: I went to a LGBTQ support group yesterday.
    [8 May, 2023] assistant: Melanie: That's great! How did it go?

Tool calls and results come back as text lines in that one message, never as raw tool
messages, so the request stays valid. Its tokens are counted exactly. It goes right
before the newest user message, after the cache-stable ``[system][summary][tail]``.
Same path and question, same message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from ._path import StoredPath
from ._recall_index import CONTROL_ROLES, fold, message_text
from ._schema import SEARCH_TABLE
from ._summary_store import StoredSummary

Message = Mapping[str, Any]
RECALL_HEADER = "Earlier messages that may be relevant:"
MAX_TERMS = 24
MAX_HITS = 40
DATE_LOOKBACK = 100
_DATE_TAG = re.compile(r"^\[([^\]\n]{4,60})\]\s*")
_WORD = re.compile(r"\w+")
# Words too common to find anything (English, German, Spanish, French): dropped from
# the query, which matters on PostgreSQL whose ts_rank_cd has no document frequency.
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been
    am i me my we our you your he she it its they them their this that these those there
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
    """The question's search terms: folded words, stop words and one-letter words out."""
    words = _WORD.findall(fold(question).replace("_", " "))
    wanted = (w for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit()))
    return list(dict.fromkeys(wanted))[:MAX_TERMS]


def newest_user(messages: Sequence[Message]) -> int | None:
    """Index of the newest user message, or None."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user":
            return index
    return None


def recall(
    connection: Connection,
    path: StoredPath,
    summary: StoredSummary | None,
    budget: int,
) -> Recalled:
    """The recall message for ``path`` (folded up to ``summary``), within ``budget``."""
    start = 0 if summary is None else summary.next_index
    question = newest_user(path.messages)
    if budget <= 0 or start <= 0 or question is None or path.anchor_hash is None:
        return NOTHING
    terms = query_terms(message_text(path.messages[question]))
    if not terms:
        return NOTHING
    hits = search(connection, path.anchor_hash, terms, start)
    on_path = [d for h, d in hits if d < start and path.hashes[d] == h]
    return build(path, _with_neighbours(path.messages, on_path, start), summary, budget)


def search(connection: Connection, anchor: str, terms: Sequence[str], before: int) -> list[Any]:
    """(hash, depth) of the best matches under ``anchor`` above ``before``, best first."""
    if connection.dialect.name == "sqlite":
        phrases = " OR ".join(f'"{term}"' for term in terms)
        query = f'anchor : "{anchor}" AND words : ({phrases})'
        statement = (
            f"SELECT hash, depth FROM {SEARCH_TABLE} WHERE {SEARCH_TABLE} MATCH :query "
            f"AND depth < :before ORDER BY bm25({SEARCH_TABLE}, 1.0, 0.0), depth LIMIT :limit"
        )
    else:
        query = " | ".join(terms)
        statement = (
            f"SELECT hash, depth FROM {SEARCH_TABLE}, to_tsquery('simple', :query) AS q "
            "WHERE anchor_hash = :anchor AND depth < :before AND document @@ q "
            "ORDER BY ts_rank_cd(document, q) DESC, depth LIMIT :limit"
        )
    parameters = {"query": query, "anchor": anchor, "before": before, "limit": MAX_HITS}
    return list(connection.execute(text(statement), parameters).all())


def _with_neighbours(messages: Sequence[Message], hits: Sequence[int], start: int) -> list[int]:
    """Hits in rank order, each followed by the turn answering it when it asks a question."""
    ordered: list[int] = []
    for index in hits:
        ordered.append(index)
        answer = index + 1
        asks = "?" in message_text(messages[index])
        if asks and answer < start and messages[answer]["role"] not in CONTROL_ROLES:
            ordered.append(answer)
    return list(dict.fromkeys(ordered))


def build(
    path: StoredPath, ranked: Sequence[int], summary: StoredSummary | None, budget: int
) -> Recalled:
    """The best-ranked lines that fit ``budget`` tokens, as one message in path order."""
    count = path.counter
    summary_text = summary.text if summary is not None else ""
    used = count.message({"role": "system", "content": RECALL_HEADER})
    chosen: dict[int, str] = {}
    for index in ranked:
        line = render(path.messages, index)
        if not line or _DATE_TAG.sub("", message_text(path.messages[index])) in summary_text:
            continue
        cost = count.text("\n" + line)
        if used + cost <= budget:
            chosen[index] = line
            used += cost
    while chosen:
        message = {"role": "system", "content": _content(chosen)}
        tokens = count.message(message)
        if tokens <= budget:
            return Recalled(message, tokens)
        del chosen[max(chosen, key=lambda i: ranked.index(i))]  # the lowest-ranked goes
    return NOTHING


def _content(chosen: Mapping[int, str]) -> str:
    return "\n".join([RECALL_HEADER, *(chosen[i] for i in sorted(chosen))])


def render(messages: Sequence[Message], index: int) -> str:
    """One message as a recall line: ``[session date] role: text``."""
    message = messages[index]
    words = message_text(message)
    if not words:
        return ""
    tagged = _DATE_TAG.match(words)
    date = tagged.group(1) if tagged else session_date(messages, index)
    if tagged:
        words = words[tagged.end() :]
    role = message["role"]
    if role == "tool":
        role = "tool result"
    elif message.get("tool_calls"):
        role = "assistant (tool call)"
    return f"[{date}] {role}: {words}" if date else f"{role}: {words}"


def session_date(messages: Sequence[Message], index: int) -> str:
    """The date tag (``[8 May, 2023] ...``) opening the session of ``messages[index]``,
    looked for among the ``DATE_LOOKBACK`` messages before it; "" when there is none."""
    for earlier in range(index - 1, max(index - DATE_LOOKBACK, 0) - 1, -1):
        content = messages[earlier].get("content")
        if isinstance(content, str) and content.startswith("["):
            tagged = _DATE_TAG.match(content)
            if tagged:
                return tagged.group(1)
    return ""
