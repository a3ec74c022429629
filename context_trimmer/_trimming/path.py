"""One call's view of its conversation: the path of stored messages it ends.

A :class:`Path` is built once per prepare()/compact() call from the app's messages
(validated and hashed, see ``_trimming.hashing``); storing it gives a :class:`StoredPath`, which
also knows which messages were new and the path's running token totals. Both are
immutable, and what needs the stored figures asks for a ``StoredPath``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection

from .._exceptions import ConfigurationError
from .._inline import refuse_long
from .._models import ModelInfo
from .._store import history as _history
from .._store.batch import Batch, Pending
from .._store.db import Database
from .._store.ledger import Ledger
from .._store.summaries import StoredSummary, Summaries, covered_rows
from .._text.tokens import TokenCounter
from .hashing import ChainCache, canonical_json
from .window import anchor_index, control_indexes

Message = Mapping[str, Any]


@dataclass(frozen=True)
class Path:
    """The messages of one call, their chain hashes, and who and what they are for."""

    messages: Sequence[Message]
    hashes: Sequence[str]
    anchor: int | None
    counter: TokenCounter
    user: str | None
    conversation_id: str
    tools: list[dict[str, Any]] | None = None
    tools_tokens: int = 0
    max_tokens: int | None = None
    controls: Sequence[int] | None = None
    """Indexes of the system/developer messages (sorted; any past the end ignored), or
    None to find them by scanning."""
    seen: int = 0
    """How many leading messages this process saw in an earlier call: where the store
    looks first for what is stored (a hint; the store checks it)."""

    @property
    def info(self) -> ModelInfo:
        return self.counter.info

    @property
    def anchor_hash(self) -> str | None:
        """The hash of the first conversational message: summaries are filed under it."""
        return None if self.anchor is None else self.hashes[self.anchor]


@dataclass(frozen=True)
class StoredPath(Path):
    """A path once stored: messages from ``new_from`` were new, with ``new_tokens``;
    ``path_before`` is the running token total of the messages before them."""

    new_from: int = 0
    new_tokens: tuple[int, ...] = ()
    path_before: int = 0

    @property
    def total_tokens(self) -> int:
        """The tokens of every message on the path."""
        return self.path_before + sum(self.new_tokens)


def store(connection: Connection, path: Path) -> StoredPath:
    """Store the messages of ``path`` not stored yet (with their token counts)."""
    return store_and_look_up(connection, path)[0]  # on PostgreSQL: one round trip


Rows = dict[int, tuple[int, int]]
"""(tokens, running path total) of message indexes."""


def store_and_look_up(
    connection: Connection,
    path: Path,
    summaries: Summaries | None = None,
    needed: Callable[[StoredPath, StoredSummary | None], Sequence[int]] | None = None,
    also: Callable[[Batch], Pending | None] | None = None,
) -> tuple[StoredPath, StoredSummary | None, Rows, Pending | None]:
    """Store ``path`` (as :func:`store`) and look up what planning its request reads:
    the deepest summary (with ``summaries``) and the token rows of the indexes
    ``needed`` for the stored path and that summary; ``also`` adds a lookup of the
    caller's to the first batch (after the new messages), whose result comes last.

    On PostgreSQL (``_store.batch``) this is one round trip in the common case: the
    lookups of what is stored, the deepest summary, the token rows planning may need
    (those of the system/developer messages, and of the last message each summary of the
    conversation covers), and the messages this process has not seen in an earlier
    call, stored as if they were the new ones (every write skips what is stored; the
    counts are written only after a counted message, so they stay a prefix of the path).
    Only when that guess was wrong, or a row is missing, a second round trip stores
    from where the stored path really ends, or reads the rows."""
    key = path.counter.key
    with Batch(connection) as batch:
        prefetch = batch.pipelined and needed is not None  # no round trip saved on SQLite
        controls = []
        if prefetch:
            controls = control_indexes(path.messages, 0, len(path.messages), path.controls)
        controls_hashes = [path.hashes[i] for i in controls]
        probe = _history.send_probe(batch, path.hashes, key, path.seen, controls_hashes)
        deepest = None
        if summaries is not None and path.anchor_hash is not None:
            counted_under = key if prefetch else None
            deepest = Summaries.send_deepest(batch, path.anchor_hash, path.hashes, counted_under)
        guess = _send_guessed_append(batch, path)
        extra = None if also is None else also(batch)
    new_from, path_before = _history.finish_probe(connection, probe, path.hashes, key, path.seen)
    summary = None if deepest is None else Summaries.read_deepest(deepest, path.hashes)
    summary = Summaries.whole(connection, summary)  # a query only after an edit
    refuse_long(path.messages, new_from)  # seen before but not stored (a call that failed)
    stored_by_guess = guess is not None and new_from >= path.seen
    if stored_by_guess:
        assert guess is not None
        new_tokens = guess[new_from - path.seen :]
    else:
        new_tokens = tuple(path.counter.message(m) for m in path.messages[new_from:])
    values = {f.name: getattr(path, f.name) for f in fields(path)}
    stored = StoredPath(**values, new_from=new_from, new_tokens=new_tokens, path_before=path_before)
    known = _history.read_token_rows(probe)  # with the system messages' rows
    if prefetch and deepest is not None:
        known.update((h, _history.TokenRow(*row)) for h, row in covered_rows(deepest).items())
    indexes = [] if needed is None else needed(stored, summary)
    with Batch(connection) as batch:
        if not stored_by_guess:
            _send_append(batch, stored)
        missing = [i for i in indexes if path.hashes[i] not in known]
        pending = send_token_rows(batch, stored, missing)
    known.update(_history.read_token_rows(pending))
    if path.hashes and connection.dialect.name != "sqlite":  # for _send_guessed_append
        _history.note_stored(connection, key, path.hashes[-1])
    return stored, summary, _rows_of(stored, indexes, known), extra


def _send_guessed_append(batch: Batch, path: Path) -> tuple[int, ...] | None:
    """On PostgreSQL, store the messages from ``path.seen`` on (the first this process
    has not seen) as the new ones, unless this process stored the path already; their
    token counts (None: nothing sent)."""
    seen = path.seen
    if not batch.pipelined or not 0 < seen < len(path.hashes):
        return None
    if _history.known_stored(batch.connection, path.counter.key, path.hashes[-1]):
        return None  # stored by another Trimmer of this process: the lookup will say so
    new = path.messages[seen:]
    tokens = tuple(path.counter.message(m) for m in new)
    bodies = [canonical_json(m) for m in new]
    _history.send_append_after(
        batch, path.messages, bodies, path.hashes, seen, path.counter.key, tokens
    )
    return tokens


def _send_append(batch: Batch, path: StoredPath) -> None:
    new = path.messages[path.new_from :]
    _history.send_append(
        batch,
        path.messages,
        [canonical_json(m) for m in new],
        path.hashes,
        path.new_from,
        path.counter.key,
        path.new_tokens,
        path.path_before,
    )


def token_rows(connection: Connection, path: StoredPath, indexes: Sequence[int]) -> Rows:
    """(tokens, running path total) of each message index, from memory or the store."""
    with Batch(connection) as batch:
        pending = send_token_rows(batch, path, indexes)
    return _rows_of(path, indexes, _history.read_token_rows(pending))


def send_token_rows(batch: Batch, path: StoredPath, indexes: Sequence[int]) -> Pending | None:
    """:func:`token_rows`' lookup of the stored ones, added to ``batch``."""
    stored = (path.hashes[i] for i in indexes if i < path.new_from)
    return _history.send_token_rows(batch, path.counter.key, stored)


def _rows_of(
    path: StoredPath, indexes: Sequence[int], rows: Mapping[str, _history.TokenRow]
) -> Rows:
    """The rows of ``indexes``: the stored ones from ``rows``, the new ones from memory."""
    found: Rows = {}
    stored = [i for i in indexes if i < path.new_from]
    for i in stored:
        row = rows[path.hashes[i]]
        found[i] = (row.tokens, row.path_tokens)
    running = path.path_before
    wanted = set(indexes)
    for offset, tokens in enumerate(path.new_tokens):
        running += tokens
        if path.new_from + offset in wanted:
            found[path.new_from + offset] = (tokens, running)
    return found


def deepest_summary(
    connection: Connection, summaries: Summaries, path: Path
) -> StoredSummary | None:
    """The summary covering the most of ``path``, or None."""
    if path.anchor_hash is None:
        return None
    return summaries.deepest(connection, path.anchor_hash, path.hashes)


def start_of(summary: StoredSummary | None) -> int:
    """Index of the first message not covered by ``summary``."""
    return 0 if summary is None else summary.next_index


def load_bodies(connection: Connection, head: str) -> list[Message]:
    """The stored messages of the path ending at ``head``, oldest first."""
    return [json.loads(body) for body in _history.load_path(connection, head)]


def build_path(
    chains: ChainCache,
    counter: TokenCounter,
    messages: Sequence[Message],
    user: str | None,
    conversation_id: str | None,
    tools: Sequence[Message] | None,
    max_tokens: int | None,
) -> Path:
    """Validate and hash ``messages`` (only what ``chains`` has not seen) into a Path."""
    known = chains.known_prefix(messages, user, conversation_id)
    refuse_long(messages, known)  # run inline, only what is quick to hash and store
    chain = chains.chain(messages, user, known, conversation_id, check=True)  # validates
    hashes = chain.hashes
    anchor = anchor_index(messages)
    return Path(
        messages,
        hashes,
        anchor,
        counter,
        user,
        conversation_id or hashes[anchor if anchor is not None else 0][:16],
        tools=[dict(t) for t in tools] if tools else None,
        tools_tokens=counter.tools(tools),
        max_tokens=max_tokens,
        controls=chain.controls,
        seen=known,
    )


def load_conversation(
    db: Database, ledger: Ledger, conversation_id: str | None, user: str | None
) -> tuple[list[Message], str | None]:
    """The messages and user of the newest request prepared for ``conversation_id``."""
    if conversation_id is None:
        raise ConfigurationError("compact() needs the messages or a conversation_id")
    head = ledger.last_head(conversation_id, user)
    if head is None:
        raise ConfigurationError(
            f"no prepared request has conversation_id {conversation_id!r}; "
            "prepare() it first or pass the messages"
        )
    with db.reading() as connection:
        messages = load_bodies(connection, head[0])
    return messages, user if user is not None else head[1]
