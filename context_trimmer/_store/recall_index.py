"""The full-text index of stored messages, which recall searches (see ``_trimming.recall``).

Each conversational message is indexed once, when it is first stored, in the same
transaction, under the hash of its path's first conversational message (its
*anchor*: every branch of a conversation shares it, and hashes are per user, so no
other user's or tenant's messages share it) and its depth (its index on the path).
The indexed text is the message's words as sent (text parts, tool calls' names and
arguments), lower-cased with accents folded, so "Málaga" and "malaga" match, each word
cut to its stem (:func:`stem`: common endings off, in any language, no stemmer to
choose), so "painted", "paints" and "painting" are one term and a query looks up exact
terms (a prefix query would merge the postings of every word it starts, which costs
far more); and each term is *scoped*: the anchor's first 12 hex digits go before it
(:func:`scoped`), so a lookup reads only this conversation's postings, needs no join
with the anchor, and a word's document frequency is the conversation's own:

- SQLite: a contentless FTS5 table (``content=''``: it keeps the terms' postings, not
  the text; ``tokenize='unicode61 remove_diacritics 2'``), ranked with ``bm25()``
  (weight 0 on the anchor column), and ``ROWS_TABLE``, each indexed message's row id
  with its depth, the first 8 bytes of its hash (recall keeps a hit only when it is
  this path's message at that depth: with the conversation's scope and the depth, 64
  bits of the hash single it out) and its scope. A stem of ``PREFIX`` letters or more
  is indexed cut to its first ``PREFIX`` (:func:`indexed`), so recall looks it up
  exactly where it looked up that prefix before ("promoted" finds "promotion") with
  no prefix index. A contentless table cannot delete a row by its id alone: an erasure
  reads each erased row's terms back from the index itself (an ``fts5vocab`` scan of
  its conversation's scope) and deletes exactly those, so no term of an erased message
  stays, whatever the code that made the terms (:func:`remove`).
- PostgreSQL: a ``tsvector`` column (``'simple'`` configuration: our stems as they are)
  keyed by the message's hash (its 32 bytes, as ``ct_messages`` keeps it), with a GIN
  index without a pending list (``fastupdate = off``: every search would scan the
  unmerged entries). Recall counts a question's terms in the GIN index itself, each up
  to its cap (:func:`term_counts`), so an append writes the document and its index
  entries only; an erasure deletes the rows. ``ts_rank_cd`` needs the positions, so
  the document is kept whole.

Migration 0006 created the index of plain words; migration 0009 rebuilt it with
scoped stems and the counts; migration 0013 made it compact (contentless on SQLite,
the unused anchor column and index gone and the hash in bytes on PostgreSQL: 1,150
bytes per message down to 173 on SQLite, 1,617 to 1,375 on PostgreSQL, see
docs/benchmarks-scale.md); migration 0015 dropped PostgreSQL's table of term counts
(``TERMS_TABLE``), which every append updated for every term of every new message.
Each fills the index for histories already stored, and each downgrade rebuilds the
layout before it (:data:`Layout`; 0015's counts the terms of the documents again).
Messages are never shown from the index (recall renders them from the path), so it
holds only what the lookups need.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import Connection, Engine, text

from .fastsql import Fast, driver_rows, on_driver
from .schema import SEARCH_TABLE

Message = Mapping[str, Any]
CONTROL_ROLES = frozenset({"system", "developer"})
SUFFIXES = ("ing", "ed", "es", "s", "e")
MIN_STEM = 3
SCOPE = 12  # hex digits of the anchor before each indexed term (48 bits)
CHUNK = 500  # messages indexed per statement on PostgreSQL
PREFIX = 6  # on SQLite a longer stem is indexed and looked up by its first PREFIX letters
_WORD = re.compile(r"[^\W_]+")
Layout = Literal["words", "stems", "compact", "uncounted"]
"""The index as migrations 0006 (plain words), 0009 (scoped stems), 0013 and 0015 made
it (0015: "compact" without the table of term counts on PostgreSQL)."""
CURRENT: Layout = "uncounted"
COMPACT = frozenset({"compact", "uncounted"})  # the layouts of migration 0013's index
ROWS_TABLE = f"{SEARCH_TABLE}_rows"
HASH_BYTES = 8  # of each message's hash kept in ROWS_TABLE (SQLite)


def message_text(message: Message) -> str:
    """The words of ``message`` as one line: text parts, tool calls' names and arguments."""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(
            str(part.get("text") or part.get("refusal") or "")
            for part in content
            if isinstance(part, Mapping)
        )
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    # NUL is valid message text but not PostgreSQL text: index it as a space.
    return " ".join(" ".join(p.replace("\x00", " ").split()) for p in parts if p).strip()


def fold(words: str) -> str:
    """Lower-cased, accents removed (NFKD without combining marks): how text is indexed.
    ASCII text has nothing to decompose: only lower-cased (the same result, sooner)."""
    if words.isascii():
        return words.lower()
    decomposed = unicodedata.normalize("NFKD", words.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def stem(word: str) -> str:
    """``word`` without its common endings (-ing, -ed, -es, -s, -e, taken off while at
    least four letters stay): "paintings", "painted" and "paint" are all "paint";
    "dance", "dancing" and "danced" are "danc"; "casas" is "casa". Cut the same way
    when indexing and when asking, so both meet on one term."""
    if word.isdigit():
        return word
    cut = True
    while cut:
        cut = False
        for suffix in SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= MIN_STEM:
                word, cut = word[: -len(suffix)], True
                break
    return word


def words_of(text: str) -> list[str]:
    """The folded words of ``text`` (letters and digits; anything else separates)."""
    return _WORD.findall(fold(text))


def scoped(anchor: str, term: str) -> str:
    """``term`` as indexed in the conversation of ``anchor``: after the anchor's first
    ``SCOPE`` hex digits, so each conversation's words have postings of their own (a
    lookup reads this conversation's matches only, and a word's document frequency is
    this conversation's)."""
    return anchor[:SCOPE] + term


def indexed(term: str) -> str:
    """How the compact SQLite index keeps a stem: a word of ``PREFIX`` letters or more
    cut to its first ``PREFIX`` (what a prefix lookup of them found before), a shorter
    one, a number or a code ("ref1234") whole."""
    return term[:PREFIX] if len(term) > PREFIX and term.isalpha() else term


def terms_of(text: str, anchor: str | None = None, cut: bool = False) -> str:
    """What is indexed for ``text``: its folded words, stemmed and scoped to ``anchor``,
    one space apart, each :func:`indexed` with ``cut`` (``anchor=None``: the folded
    text, as migration 0006 indexed it)."""
    if anchor is None:
        return fold(text)
    if cut:
        return " ".join(scoped(anchor, indexed(stem(w))) for w in words_of(text))
    return " ".join(scoped(anchor, stem(w)) for w in words_of(text))


TERMS_TABLE = f"{SEARCH_TABLE}_terms"
# Layouts "stems" and "compact" on PostgreSQL: each scoped term's number of indexed
# messages, kept with the index by the statements that index and erase. Migration 0015
# dropped it: its upsert of every term of every new message was most of an append's
# index work (~0.2-0.4 ms a turn), for counts recall needs only up to PROBE_CAP.
_ADDED = {
    "stems": f"""
    INSERT INTO {SEARCH_TABLE} (hash, anchor_hash, depth, document)
    SELECT hash, anchor, depth, to_tsvector('simple', words)
    FROM unnest(CAST(:hashes AS TEXT[]), CAST(:anchors AS TEXT[]), CAST(:depths AS INTEGER[]),
                CAST(:words AS TEXT[])) AS row (hash, anchor, depth, words)
    ON CONFLICT (hash) DO NOTHING
    RETURNING document
""",
    "compact": f"""
    INSERT INTO {SEARCH_TABLE} (hash, depth, document)
    SELECT hash, depth, to_tsvector('simple', words)
    FROM unnest(CAST(:hashes AS BYTEA[]), CAST(:depths AS INTEGER[]), CAST(:words AS TEXT[]))
        AS row (hash, depth, words)
    ON CONFLICT (hash) DO NOTHING
    RETURNING document
""",
}
_COUNT_ADDED = f"""
INSERT INTO {TERMS_TABLE} (term, docs)
SELECT term, count(*) FROM added, unnest(tsvector_to_array(added.document)) AS term
GROUP BY term ORDER BY term
ON CONFLICT (term) DO UPDATE SET docs = {TERMS_TABLE}.docs + EXCLUDED.docs
"""
_ADD_COUNTED = {  # on the driver's cursor: every prepare() that stores messages runs it
    layout: Fast(text(f"WITH added AS ({added}) {_COUNT_ADDED}"))
    for layout, added in _ADDED.items()
}
_ADD = Fast(text(_ADDED["compact"].replace("RETURNING document", "")))  # "uncounted"


def term_counts(cap: int) -> str:
    """PostgreSQL: the statement counting each scoped term's indexed messages, up to
    ``cap`` (one driver parameter: the terms), as ``(term, messages)`` rows, a term in
    none left out. Each count is a lookup of the term's postings in the GIN index, then
    at most ``cap`` rows: a rare term (what recall searches) costs a few microseconds; a
    common one builds its whole bitmap (~1 ms per 8,000 messages of the conversation),
    which recall pays once per process and conversation (it remembers the terms found
    common: ``common_terms``)."""
    # OFFSET 0: the condition on docs is not pushed into the subquery, whose count it
    # would run a second time (a common term's bitmap built twice)
    return (
        f"SELECT term, docs FROM (SELECT term, {term_count(cap)} AS docs "
        "FROM unnest(CAST(%s AS TEXT[])) AS term OFFSET 0) AS counted WHERE docs > 0"
    )


def term_count(cap: int) -> str:
    """PostgreSQL: :func:`term_counts`' count of one scoped term (the column ``term``),
    a scalar subquery."""
    return (
        f"(SELECT count(*) FROM (SELECT 1 FROM {SEARCH_TABLE} "
        f"WHERE document @@ to_tsquery('simple', term) LIMIT {int(cap)}) AS hit)"
    )


_TOKENIZE = "tokenize='unicode61 remove_diacritics 2'"
_LAST = chr(0x10FFFF)  # after every character a term can go on with


def create(connection: Connection, layout: Layout = CURRENT) -> None:
    """Create the index (empty) on this connection's database, as ``layout``; on
    PostgreSQL with its table of term counts for "stems" and "compact"."""
    if connection.dialect.name == "sqlite":
        _create_sqlite(connection, layout)
        return
    key = "hash BYTEA" if layout in COMPACT else "hash VARCHAR(64)"
    anchor = "" if layout in COMPACT else "anchor_hash VARCHAR(64) NOT NULL, "
    connection.execute(
        text(
            f"CREATE TABLE {SEARCH_TABLE} ({key} PRIMARY KEY, {anchor}"
            "depth INTEGER NOT NULL, document TSVECTOR NOT NULL)"
        )
    )
    connection.execute(
        text(
            f"CREATE INDEX ix_{SEARCH_TABLE}_document ON {SEARCH_TABLE} USING GIN (document)"
            + (" WITH (fastupdate = off)" if layout != "words" else "")
        )
    )  # no pending list: every search would scan it all (milliseconds) until VACUUM
    if layout not in COMPACT:  # read by nothing: 0013 dropped it
        connection.execute(
            text(f"CREATE INDEX ix_{SEARCH_TABLE}_anchor ON {SEARCH_TABLE} (anchor_hash, depth)")
        )
    if layout in ("stems", "compact"):
        create_counts(connection)


def create_counts(connection: Connection, fill: bool = False) -> None:
    """PostgreSQL: the table of term counts of layouts "stems" and "compact" (with
    ``fill``: counted from the documents indexed; the downgrade of migration 0015)."""
    connection.execute(
        text(f"CREATE TABLE {TERMS_TABLE} (term TEXT PRIMARY KEY, docs INTEGER NOT NULL)")
    )
    if fill:
        connection.execute(
            text(
                f"INSERT INTO {TERMS_TABLE} (term, docs) SELECT term, count(*) "
                f"FROM {SEARCH_TABLE}, unnest(tsvector_to_array(document)) AS term GROUP BY term"
            )
        )


def drop_counts(connection: Connection) -> None:
    """PostgreSQL: drop the table of term counts (migration 0015; SQLite has none)."""
    if connection.dialect.name != "sqlite":
        connection.execute(text(f"DROP TABLE IF EXISTS {TERMS_TABLE}"))


def _create_sqlite(connection: Connection, layout: Layout) -> None:
    if layout not in COMPACT:
        connection.execute(
            text(
                f"CREATE VIRTUAL TABLE {SEARCH_TABLE} USING fts5(words, anchor, "
                f"hash UNINDEXED, depth UNINDEXED, {_TOKENIZE}, prefix='{SCOPE + PREFIX}')"
            )
        )
        return
    connection.execute(
        text(
            f"CREATE VIRTUAL TABLE {SEARCH_TABLE} USING fts5(words, anchor, {_TOKENIZE}, "
            "content='')"
        )
    )
    connection.execute(
        text(
            f"CREATE TABLE {ROWS_TABLE} (id INTEGER PRIMARY KEY, hash BLOB NOT NULL, "
            "depth INTEGER NOT NULL, scope BLOB NOT NULL)"
        )
    )
    connection.execute(text(f"CREATE INDEX ix_{ROWS_TABLE}_hash ON {ROWS_TABLE} (hash)"))


def drop(connection: Connection) -> None:
    connection.execute(text(f"DROP TABLE {SEARCH_TABLE}"))
    extra = ROWS_TABLE if connection.dialect.name == "sqlite" else TERMS_TABLE
    connection.execute(text(f"DROP TABLE IF EXISTS {extra}"))


def add(
    connection: Connection, rows: Sequence[tuple[str, str, int, str]], layout: Layout = CURRENT
) -> None:
    """Index ``(hash, anchor_hash, depth, text)`` rows of messages stored just now, as
    ``layout`` (``"words"``: the plain words of migration 0006's index)."""
    cut = layout in COMPACT and connection.dialect.name == "sqlite"
    values: list[dict[str, Any]] = [
        {
            "hash": h,
            "anchor": a,
            "depth": d,
            "words": terms_of(t, a if layout != "words" else None, cut),
        }
        for h, a, d, t in rows
        if t.strip()
    ]
    if not values:
        return
    if connection.dialect.name == "sqlite":  # on every append: the driver's own statements
        _add_sqlite(connection, values, layout)
        return
    if layout == "words":
        statement = (
            f"INSERT INTO {SEARCH_TABLE} (hash, anchor_hash, depth, document) "
            "VALUES (:hash, :anchor, :depth, to_tsvector('simple', :words)) "
            "ON CONFLICT (hash) DO NOTHING"
        )
        connection.execute(text(statement), values)
        return
    counted = _ADD if layout == "uncounted" else _ADD_COUNTED[layout]
    plural = {"hash": "hashes", "anchor": "anchors", "depth": "depths", "words": "words"}
    if layout in COMPACT:
        del plural["anchor"]
        for value in values:
            value["hash"] = bytes.fromhex(value["hash"])
    for start in range(0, len(values), CHUNK):  # each statement bounded in time
        chunk = values[start : start + CHUNK]
        arrays = {many: [v[one] for v in chunk] for one, many in plural.items()}
        counted.run(connection, arrays)  # the rows (and the counts) of those new here


def _add_sqlite(connection: Connection, values: list[dict[str, Any]], layout: Layout) -> None:
    if layout not in COMPACT:
        statement = f"INSERT INTO {SEARCH_TABLE} (words, anchor, hash, depth) VALUES (?, ?, ?, ?)"
        rows_in = [(v["words"], v["anchor"], v["hash"], v["depth"]) for v in values]
        on_driver(connection, statement, rows_in, many=True).close()
        return
    # Called where the messages were just written: this transaction holds the write lock.
    ((last,),) = driver_rows(connection, f"SELECT coalesce(max(id), 0) FROM {ROWS_TABLE}", ())
    ids = range(last + 1, last + 1 + len(values))
    kept = [
        (
            i,
            bytes.fromhex(v["hash"][: 2 * HASH_BYTES]),
            v["depth"],
            bytes.fromhex(v["anchor"][:SCOPE]),
        )
        for i, v in zip(ids, values, strict=True)
    ]
    statement = f"INSERT INTO {ROWS_TABLE} (id, hash, depth, scope) VALUES (?, ?, ?, ?)"
    on_driver(connection, statement, kept, many=True).close()
    statement = f"INSERT INTO {SEARCH_TABLE} (rowid, words, anchor) VALUES (?, ?, ?)"
    words = [(i, v["words"], v["anchor"]) for i, v in zip(ids, values, strict=True)]
    on_driver(connection, statement, words, many=True).close()


# Terms known to be in at least ``_trimming.recall.PROBE_CAP`` messages of their conversation,
# per database engine and anchor. A conversation's counts only grow as messages are
# appended, so such a term stays common and recall need not count it again; an erasure
# in this process forgets them all. (An erasure by another process can leave a term
# here that is rarer now: recall then leaves it out of the search, as before it.)
_COMMON: weakref.WeakKeyDictionary[Engine, dict[str, frozenset[str]]] = weakref.WeakKeyDictionary()
COMMON_CONVERSATIONS = 4096  # per engine; past this many, the oldest are dropped
_COMMON_LOCK = threading.Lock()  # prepare() runs on many threads (the gateway)


def common_terms(engine: Engine, anchor: str) -> frozenset[str]:
    """The terms known to be common in the conversation of ``anchor``."""
    known = _COMMON.get(engine)
    return frozenset() if known is None else known.get(anchor, frozenset())


def note_common(engine: Engine, anchor: str, terms: Iterable[str]) -> None:
    """Remember ``terms`` as common in the conversation of ``anchor``."""
    with _COMMON_LOCK:
        known = _COMMON.setdefault(engine, {})
        known[anchor] = known.pop(anchor, frozenset()).union(terms)  # now the newest entry
        while len(known) > COMMON_CONVERSATIONS:
            known.pop(next(iter(known)), None)


def remove(connection: Connection, hashes: Sequence[str]) -> None:
    """Take erased messages out of the index, leaving no trace of their words (on SQLite
    the index's segments are merged, so no deleted token lingers in an older one)."""
    if not hashes:
        return
    with _COMMON_LOCK:
        for known in list(_COMMON.values()):
            known.clear()  # counts shrink: what was common may not be any more
    if connection.dialect.name == "sqlite":
        _remove_sqlite(connection, hashes)
        return
    keys = [bytes.fromhex(h) for h in hashes]
    marks = ", ".join(f":h{i}" for i in range(len(keys)))
    values = {f"h{i}": h for i, h in enumerate(keys)}
    connection.execute(text(f"DELETE FROM {SEARCH_TABLE} WHERE hash IN ({marks})"), values)


def _remove_sqlite(connection: Connection, hashes: Sequence[str]) -> None:
    """Delete the rows of ``hashes`` from the contentless FTS5 table: each with the very
    terms the index holds for it, read back from the index (an ``fts5vocab`` scan of
    its conversation's scope), then merge the segments."""
    marks = ", ".join("?" for _ in hashes)
    fragments = [bytes.fromhex(h[: 2 * HASH_BYTES]) for h in hashes]
    depths = dict(
        driver_rows(
            connection,
            f"SELECT hash, depth FROM ct_messages WHERE hash IN ({marks})",
            [bytes.fromhex(h) for h in hashes],
        )
    )
    wanted = {bytes(h)[:HASH_BYTES]: d for h, d in depths.items()}
    found = driver_rows(
        connection,
        f"SELECT id, hash, depth, scope FROM {ROWS_TABLE} WHERE hash IN ({marks})",
        fragments,
    )
    scopes: dict[bytes, set[int]] = {}
    for row_id, fragment, depth, scope in found:
        if wanted.get(bytes(fragment)) == depth:
            scopes.setdefault(bytes(scope), set()).add(row_id)
    if not scopes:
        return
    on_driver(
        connection,
        f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{SEARCH_TABLE}_vocab "
        f"USING fts5vocab(main, {SEARCH_TABLE}, instance)",
        (),
    ).close()
    gone: list[int] = []
    for scope, ids in scopes.items():
        gone += ids
        _delete_terms(connection, scope.hex(), ids)
    on_driver(
        connection, f"DELETE FROM {ROWS_TABLE} WHERE id IN ({', '.join('?' * len(gone))})", gone
    ).close()
    on_driver(
        connection, f"INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}) VALUES ('optimize')", ()
    ).close()


def _delete_terms(connection: Connection, scope: str, ids: set[int]) -> None:
    """Delete rows ``ids`` of one conversation (its terms start with ``scope``)."""
    terms: dict[int, tuple[list[tuple[int, str]], list[str]]] = {i: ([], []) for i in ids}
    scan = (
        f'SELECT doc, col, "offset", term FROM temp.{SEARCH_TABLE}_vocab '
        "WHERE term >= ? AND term < ?"
    )
    for doc, column, offset, term in driver_rows(connection, scan, (scope, scope + _LAST)):
        if doc in terms:
            words, anchor = terms[doc]
            if column == "words":
                words.append((offset, term))
            else:
                anchor.append(term)
    delete = (
        f"INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}, rowid, words, anchor) "
        "VALUES ('delete', ?, ?, ?)"
    )
    rows = [
        (doc, " ".join(term for _offset, term in sorted(words)), " ".join(anchor))
        for doc, (words, anchor) in terms.items()
    ]
    on_driver(connection, delete, rows, many=True).close()


def rows_for(
    messages: Sequence[Message], hashes: Sequence[str], indexes: Iterable[int]
) -> list[tuple[str, str, int, str]]:
    """Index rows for ``messages[i]`` (i in ``indexes``) of one path."""
    anchor = next((i for i, m in enumerate(messages) if m["role"] not in CONTROL_ROLES), None)
    if anchor is None:
        return []
    return [
        (hashes[i], hashes[anchor], i, message_text(messages[i]))
        for i in indexes
        if i >= anchor and messages[i]["role"] not in CONTROL_ROLES
    ]


def rebuild(connection: Connection, layout: Layout = CURRENT) -> None:
    """Drop the index and build it again from the stored messages, as ``layout``
    (migrations 0009 and 0013, and their downgrades)."""
    drop(connection)
    create(connection, layout)
    backfill(connection, layout=layout)


def backfill(connection: Connection, batch: int = 1000, layout: Layout = CURRENT) -> None:
    """Index every stored conversational message (migrations 0006, 0009, 0013): each
    message's anchor is inherited from its parent, or is itself when it is the first
    conversational message of its path."""
    anchors: dict[str, str | None] = {}
    pending: list[tuple[str, str, int, str]] = []
    stored = connection.execute(
        text("SELECT hash, parent_hash, depth, role, body FROM ct_messages ORDER BY depth, hash")
    ).all()
    for raw_hash, raw_parent, depth, role, body in stored:
        hash_, parent = _hex(raw_hash), _hex(raw_parent)
        inherited = anchors.get(parent) if parent is not None else None
        conversational = role not in CONTROL_ROLES
        anchor = inherited or (hash_ if conversational else None)
        anchors[hash_] = anchor
        if conversational and anchor is not None:
            pending.append((hash_, anchor, depth, message_text(json.loads(body))))
        if len(pending) >= batch:
            add(connection, pending, layout)
            pending = []
    add(connection, pending, layout)


def _hex(value: Any) -> Any:
    """A hash as the index keeps it: hex text (read raw, it is bytes after migration
    0008 and text before it)."""
    return bytes(value).hex() if isinstance(value, bytes | memoryview) else value
