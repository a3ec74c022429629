"""Each request's prompt-cache figures, computed once and stored in its ledger row.

What OpenAI's cache would have served a request (``_store.prompt_cache``) depends only on
the requests of its conversation in the few minutes before it. So once a request is
older than :data:`SETTLED` seconds, every request it depends on is in the ledger and
its figures never change: the report computes them then, once, and stores them in
``ct_requests.cache_baseline_tokens`` / ``cache_sent_tokens``. Reports after that sum
the stored columns in SQL (``_reports.sums``) instead of replaying the whole ledger.

Rows still NULL (requests of the last :data:`SETTLED` seconds, rows recorded before
migration 0011, rows a failed fill left) are computed on the next report: old ledgers
report the same figures after the upgrade, and the first report pays for them once,
:data:`CHUNK` requests at a time, so memory stays bounded on any ledger size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from .._models import ModelTable
from .._store.db import Database, as_utc, period
from .._store.ledger import REQUESTS
from .._store.prompt_cache import DEFAULT_LIFETIME, Cached, CacheRequest, load_tree, simulate
from .._store.summaries import SUMMARIES

SETTLED = 60.0
"""Seconds after which no request before a given one can still be uncommitted."""
CHUNK = 2000
_CACHE_FIELDS = (
    REQUESTS.c.id,
    REQUESTS.c.created_at,
    REQUESTS.c.conversation_id,
    REQUESTS.c.model,
    REQUESTS.c.head_hash,
    REQUESTS.c.baseline_tokens,
    REQUESTS.c.prompt_tokens,
    REQUESTS.c.summary_id,
    SUMMARIES.c.covers_hash.label("summary_covers"),
    REQUESTS.c.summary_tokens,
)
_STORE = (
    update(REQUESTS)
    .where(REQUESTS.c.id == bindparam("request_id"))
    .values(
        cache_baseline_tokens=bindparam("baseline"),
        cache_sent_tokens=bindparam("sent"),
    )
)


def _select() -> Any:
    return select(*_CACHE_FIELDS).select_from(
        REQUESTS.outerjoin(SUMMARIES, SUMMARIES.c.id == REQUESTS.c.summary_id)
    )


def _requests(rows: Iterable[Any], models: ModelTable) -> list[CacheRequest]:
    return [
        CacheRequest(
            row.id,
            as_utc(row.created_at),
            row.conversation_id,
            row.model,
            models.get(row.model).counting_key,
            row.head_hash,
            row.baseline_tokens,
            row.prompt_tokens,
            row.summary_id,
            row.summary_covers,
            row.summary_tokens,
        )
        for row in rows
    ]


def compute(
    connection: Connection,
    models: ModelTable,
    targets: Sequence[CacheRequest],
    lifetime: float = DEFAULT_LIFETIME,
) -> dict[int, Cached]:
    """The cache figures of ``targets`` (a batch in time order), read with the earlier
    requests of their conversations that they may share a cached prefix with."""
    if not targets:
        return {}
    first = min(r.created_at for r in targets)
    last = max(r.created_at for r in targets)
    conversations = sorted({r.conversation_id for r in targets})
    context: dict[int, CacheRequest] = {}
    for start in range(0, len(conversations), 500):
        names = conversations[start : start + 500]
        rows = connection.execute(
            _select().where(
                REQUESTS.c.conversation_id.in_(names),
                REQUESTS.c.created_at >= first - timedelta(seconds=lifetime),
                REQUESTS.c.created_at <= last,
            )
        )
        context.update((r.id, r) for r in _requests(rows, models))
    context.update((r.id, r) for r in targets)
    everything = list(context.values())
    heads = [r.head_hash for r in everything]
    heads += [r.summary_covers for r in everything if r.summary_covers]
    tree = load_tree(connection, heads, {r.counting_key for r in everything})
    figures = simulate(everything, tree, lifetime)
    return {r.id: figures[r.id] for r in targets}


def fill(db: Database, models: ModelTable, now: datetime) -> int:
    """Compute and store the figures of every settled request that has none; returns
    how many were stored."""
    stored = 0
    settled = now - timedelta(seconds=SETTLED)
    after = 0
    while True:
        with db.reading() as connection:
            targets = _pending(connection, models, settled, after)
            if not targets:
                return stored
            figures = compute(connection, models, targets)
        with db.writing() as connection:
            connection.execute(
                _STORE,
                [
                    {"request_id": i, "baseline": cached.baseline, "sent": cached.sent}
                    for i, cached in figures.items()
                ],
            )
        stored += len(figures)
        if len(targets) < CHUNK:
            return stored
        after = max(r.id for r in targets)


def pending(
    connection: Connection,
    models: ModelTable,
    since: datetime | None,
    until: datetime | None,
    *,
    everything: bool = False,
) -> list[CacheRequest]:
    """The requests in ``[since, until)`` with no stored figures (all of them, with
    ``everything``)."""
    query = _select().where(*period(REQUESTS.c.created_at, since, until))
    if not everything:
        query = query.where(REQUESTS.c.cache_baseline_tokens.is_(None))
    return _requests(connection.execute(query.order_by(REQUESTS.c.id)), models)


def _pending(
    connection: Connection, models: ModelTable, settled: datetime, after: int
) -> list[CacheRequest]:
    """The next :data:`CHUNK` settled requests without figures, after id ``after``."""
    r = REQUESTS.c
    query = _select().where(r.cache_baseline_tokens.is_(None), r.created_at < settled, r.id > after)
    rows = connection.execute(query.order_by(r.id).limit(CHUNK)).all()
    return _requests(rows, models)
