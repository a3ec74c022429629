"""OpenAI's automatic prompt cache, replayed over the ledger: what each prompt would have
had cached.

OpenAI caches the prompt prefix a request shares with an earlier request, once it is
at least 1,024 tokens, in 128-token steps, and keeps it a few minutes after its last
use (:data:`DEFAULT_LIFETIME`, 5 minutes). A resent history is therefore billed mostly
at the cached price, and the baseline of the report must be priced the same way.

The prefix two prompts share is found from stored data, never re-read text: every
ledger row names the head of its path (``head_hash``), messages know their parent and
depth, and token counts hold the running total of the path per counting key. Two
requests of one conversation share their path up to their deepest common message,
so the baseline's shared prefix is that message's running total (plus the tools, when
both sent the same). A request is credited with the longest such prefix among the
earlier requests of its conversation and model within the lifetime: each of those
used the prefix, so it was still cached.

The sent side (only for requests whose usage was never reported) is estimated the same
way: ``[system][summary]`` is shared when both requests carried the same summary, then
the verbatim tail up to their deepest common message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from .._text.tokens import REPLY_PRIMING
from .history import COUNTS, MESSAGES

DEFAULT_LIFETIME = 300.0
MIN_CACHED = 1024
CACHE_STEP = 128
_CHUNK = 500


def cacheable(shared: int) -> int:
    """The tokens OpenAI caches of a shared prefix of ``shared`` tokens."""
    if shared < MIN_CACHED:
        return 0
    return MIN_CACHED + (shared - MIN_CACHED) // CACHE_STEP * CACHE_STEP


@dataclass(frozen=True)
class CacheRequest:
    """What the cache model needs of one ledger row."""

    id: int
    created_at: datetime
    conversation_id: str
    model: str
    counting_key: str
    head_hash: str
    baseline_tokens: int
    prompt_tokens: int
    summary_id: int | None = None
    summary_covers: str | None = None
    summary_tokens: int = 0


@dataclass(frozen=True)
class Cached:
    """Tokens of one request's prompt that the cache would have served."""

    baseline: int
    sent: int


class PathTree:
    """The stored messages under some heads: parent, depth, running token totals."""

    def __init__(
        self,
        nodes: Mapping[str, tuple[str | None, int]],
        totals: Mapping[tuple[str, str], int],
    ):
        self._nodes = nodes
        self._totals = totals

    def common(self, a: str, b: str) -> str | None:
        """The deepest message on both paths (None: they share nothing stored)."""
        nodes = self._nodes
        while a != b:
            node_a, node_b = nodes.get(a), nodes.get(b)
            if node_a is None or node_b is None:
                return None
            if node_a[1] >= node_b[1]:
                parent_a = node_a[0]
                if parent_a is None:
                    return None
                a = parent_a
            else:
                parent_b = node_b[0]
                if parent_b is None:
                    return None
                b = parent_b
        return a

    def total(self, node: str | None, key: str) -> int | None:
        """The running token total of the path up to ``node`` under ``key``."""
        return None if node is None else self._totals.get((node, key))


def simulate(
    requests: Sequence[CacheRequest], tree: PathTree, lifetime: float = DEFAULT_LIFETIME
) -> dict[int, Cached]:
    """The cached tokens of each request (by id), baseline and sent side."""
    ordered = sorted(requests, key=lambda r: (r.created_at, r.id))
    earlier: dict[tuple[str, str], deque[CacheRequest]] = {}
    result: dict[int, Cached] = {}
    for request in ordered:
        window = earlier.setdefault((request.conversation_id, request.model), deque())
        while window and (request.created_at - window[0].created_at).total_seconds() > lifetime:
            window.popleft()
        baseline, sent = _longest(window, request, tree)
        result[request.id] = Cached(cacheable(baseline), cacheable(sent))
        window.append(request)
    return result


def _longest(window: deque[CacheRequest], r: CacheRequest, tree: PathTree) -> tuple[int, int]:
    """The longest prefix ``r`` shares with a request in ``window`` (baseline, sent).

    Newest first, and a request is looked at only when its whole prompt could beat the
    best so far, so an append-only chat costs one short walk per request."""
    head = tree.total(r.head_hash, r.counting_key)
    if head is None:
        return 0, 0
    tools = r.baseline_tokens - REPLY_PRIMING - head
    sent = r.prompt_tokens - REPLY_PRIMING - tools
    best_baseline = best_sent = 0
    other_summary_seen = False
    for q in reversed(window):
        whole = tree.total(q.head_hash, r.counting_key)
        if whole is None:
            continue
        same = q.summary_id == r.summary_id
        if same:
            sent_bound = sent - (head - whole) + tools
        else:
            sent_bound = -1 if other_summary_seen else sent + tools
            other_summary_seen = True
        if whole + tools > best_baseline:
            best_baseline = max(best_baseline, _shared_baseline(q, r, tree))
        if sent_bound > best_sent:
            best_sent = max(best_sent, _shared_sent(q, r, tree))
    return best_baseline, best_sent


def _tools(request: CacheRequest, tree: PathTree) -> int | None:
    head = tree.total(request.head_hash, request.counting_key)
    return None if head is None else request.baseline_tokens - REPLY_PRIMING - head


def _shared_baseline(q: CacheRequest, r: CacheRequest, tree: PathTree) -> int:
    common = tree.common(q.head_hash, r.head_hash)
    shared = tree.total(common, r.counting_key)
    if shared is None:
        return 0
    tools = _tools(r, tree)
    if tools and tools == _tools(q, tree):
        shared += tools  # tool definitions come before the messages
    return min(shared, r.baseline_tokens - REPLY_PRIMING)


def _shared_sent(q: CacheRequest, r: CacheRequest, tree: PathTree) -> int:
    key = r.counting_key
    common = tree.common(q.head_hash, r.head_hash)
    head, shared = tree.total(r.head_hash, key), tree.total(common, key)
    tools = _tools(r, tree)
    if head is None or shared is None or tools is None:
        return 0
    sent = r.prompt_tokens - REPLY_PRIMING - tools
    if q.summary_id == r.summary_id:
        # Same [system][summary]; the verbatim tails agree up to the common message.
        shared_sent = sent - (head - shared)
    elif r.summary_id is not None:
        # Only the system messages before the summary are shared.
        covered = tree.total(r.summary_covers, key)
        tail = head - covered if covered is not None else sent
        shared_sent = sent - r.summary_tokens - tail
    else:
        shared_sent = 0
    return max(0, min(shared_sent + tools, sent + tools))


def load_tree(connection: Connection, heads: Iterable[str], keys: Iterable[str]) -> PathTree:
    """The stored paths ending at ``heads`` (parents, depths, and running totals under
    ``keys``), read with one recursive query per chunk of heads."""
    wanted = sorted(set(heads))
    key_list = sorted(set(keys))
    nodes: dict[str, tuple[str | None, int]] = {}
    totals: dict[tuple[str, str], int] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        m = MESSAGES.c
        anchor = select(m.hash, m.parent_hash, m.depth).where(m.hash.in_(chunk))
        path = anchor.cte("ancestors", recursive=True)
        parent = MESSAGES.alias("parent")
        path = path.union(
            select(parent.c.hash, parent.c.parent_hash, parent.c.depth).where(
                parent.c.hash == path.c.parent_hash
            )
        )
        c = COUNTS.c
        rows = connection.execute(
            select(
                path.c.hash, path.c.parent_hash, path.c.depth, c.counting_key, c.path_tokens
            ).select_from(
                path.outerjoin(
                    COUNTS, (c.message_hash == path.c.hash) & c.counting_key.in_(key_list)
                )
            )
        )
        for row in rows:
            nodes[row.hash] = (row.parent_hash, row.depth)
            if row.counting_key is not None:
                totals[(row.hash, row.counting_key)] = row.path_tokens
    return PathTree(nodes, totals)
