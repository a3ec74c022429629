"""How a summary's text is stored: whole while it is the newest of its line, then as a
delta against its first child.

Each fold stores a new summary of up to ``summary_tokens`` (by default 4,000 tokens,
about 20 kB), and most of it is its parent's text again: a rolling summary keeps the
facts that still hold and adds a few. Stored whole, the superseded summaries were most
of the store (830 bytes per message on SQLite, three times the messages' own JSON).
They are still needed, though rarely: an edit or a regenerated turn that leaves the
path before the newest summary is served the deepest summary still on its path, and the
ledger and the lineage (``parent_id``) point at every row.

So when a fold stores a child, its parent's text is replaced by a **reverse delta**: the
parent's text compressed by zlib with the child's text as the preset dictionary
(``base_id`` names the child, ``text`` becomes ''); about 140 bytes for an extractive
summary of 20 kB. The newest summary of each line stays whole, so serving it (what every
prepare() does) reads its text as before; an older one is decoded by walking
``base_id`` from it to a whole text (one query) and inflating back, a few microseconds
per generation. Any summarizer's text is kept this way, a model's as well as the
extractive summarizer's: nothing is dropped or made again.

Concurrency: a row turns from whole to delta once (``WHERE base_id IS NULL``, so of two
children stored at once only the first becomes its base) and never changes its text,
so a reader decoding a chain always finds its links. Erasure blanks a summary's text
and delta; a summary kept whose delta was made against an erased one is first written
whole again (:func:`rewrite_whole`), in the same transaction.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, Table, literal, select, update

from .schema import Summary

SUMMARIES: Table = Summary.__table__  # type: ignore[assignment]
_c = SUMMARIES.c
LEVEL = 9
"""zlib's level: the deltas are small, so the best compression costs ~0.2 ms per fold."""


def encode(text: str, base: str) -> bytes:
    """``text`` as a zlib stream with ``base`` as its preset dictionary."""
    compressor = zlib.compressobj(LEVEL, zdict=base.encode())
    return compressor.compress(text.encode()) + compressor.flush()


def decode(delta: bytes, base: str) -> str:
    """The text :func:`encode` made ``delta`` of, given the same ``base``."""
    inflater = zlib.decompressobj(zdict=base.encode())
    return (inflater.decompress(delta) + inflater.flush()).decode()


def supersede(connection: Connection, parent_id: int, child_id: int, child_text: str) -> bool:
    """Store ``parent_id``'s text as a delta against its new child's, if still whole
    (and not erased); whether it was."""
    parent = connection.execute(
        select(_c.text).where(_c.id == parent_id, _c.base_id.is_(None), _c.text != "")
    ).first()
    if parent is None:
        return False
    result = connection.execute(
        update(SUMMARIES)
        .where(_c.id == parent_id, _c.base_id.is_(None), _c.text != "")
        .values(text="", delta=encode(parent.text, child_text), base_id=child_id)
    )
    return bool(result.rowcount)


def text_of(connection: Connection, summary_id: int) -> str:
    """The text of a summary, decoded from the chain of its bases if it is a delta
    (one query however long the chain); '' if erased."""
    first = select(_c.id, _c.base_id, _c.text, _c.delta, literal(0).label("step"))
    chain = first.where(_c.id == summary_id).cte("chain", recursive=True)
    base = SUMMARIES.alias("base")
    chain = chain.union_all(
        select(base.c.id, base.c.base_id, base.c.text, base.c.delta, chain.c.step + 1).where(
            base.c.id == chain.c.base_id
        )
    )
    links = connection.execute(
        select(chain.c.text, chain.c.delta).order_by(chain.c.step.desc())
    ).all()
    return decode_chain([(link.text, link.delta) for link in links])


def decode_chain(links: Sequence[tuple[str, bytes | None]]) -> str:
    """The text of the first summary of a chain given newest first: a whole text, then
    each older summary's delta against the one before it."""
    if not links:
        return ""
    text = links[0][0]
    for _whole, delta in links[1:]:
        if delta is None or not text:  # erased on the way: nothing to decode from
            return ""
        text = decode(delta, text)
    return text


def rewrite_whole(connection: Connection, erased_ids: Iterable[int]) -> int:
    """Write whole again the kept summaries whose delta's base is to be erased (before
    the base's text goes); how many."""
    erased = set(erased_ids)
    if not erased:
        return 0
    dependents = connection.execute(
        select(_c.id).where(_c.base_id.in_(sorted(erased)), _c.id.not_in(sorted(erased)))
    ).scalars()
    texts = {summary_id: text_of(connection, summary_id) for summary_id in dependents}
    for summary_id, text in texts.items():
        connection.execute(
            update(SUMMARIES).where(_c.id == summary_id).values(text=text, delta=None, base_id=None)
        )
    return len(texts)
