"""The ledger summed by the database, for the report.

One SQL query per table: requests are summed per (group, model asked, model that
answered), the library's own spend per (group, summarizer label); ``_reports.report`` prices
each sum with the model table (a cost is linear in tokens, so pricing a sum is pricing
each request). Memory and time grow with the number of groups, not of requests.

Each request's prompt-cache figures are the stored columns (``_reports.cache_figures``); the
figures of requests that have none yet (the last minute's, or every request when the
report asks for another cache lifetime) are computed in Python and joined from a
temporary table, so one query, with one set of formulas, sums every request.

The honest baseline: without the trimmer an app must cut its history to the model's
context window less the reply it reserves (``max_tokens``, else the model's maximum
output); a request whose messages were over that is counted at that limit, and in
``over_window``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    false,
    func,
    literal_column,
    or_,
    select,
)

from .._models import ModelInfo, ModelTable
from .._store.db import period
from .._store.ledger import ATTEMPTS, COMPRESSIONS, REQUESTS, USAGE
from .._store.prompt_cache import Cached
from .._store.summaries import FAILURES, SUMMARIES

NOT_SENT = "(not sent)"
LIBRARY = "(summarizer)"
_TEMP = Table(
    "ct_report_cache",
    MetaData(),
    Column("request_id", Integer, primary_key=True),
    Column("baseline", Integer),
    Column("sent", Integer),
    prefixes=["TEMPORARY"],
)


@dataclass
class RequestSums:
    """The requests of one (group, model, usage model) cell, summed."""

    key: str | None
    model: str
    usage_model: str | None
    requests: int = 0
    baseline_given: int = 0
    baseline: int = 0
    over_window: int = 0
    prompt_tokens: int = 0
    compression_saved_tokens: int = 0
    recall_tokens: int = 0
    max_tokens_before: int = 0
    max_tokens_after: int = 0
    rate_limited: int = 0
    waited_ms: int = 0
    fallbacks: int = 0
    failed: int = 0
    quota_rejections: int = 0
    answered: int = 0
    estimated: int = 0
    billed_baseline: int = 0
    baseline_hit: int = 0
    usage_prompt: int = 0
    cached: int = 0
    completion: int = 0


@dataclass(frozen=True)
class SpendSums:
    """The library's own calls of one (group, label, kind) cell, summed."""

    key: str | None
    label: str
    kind: str
    calls: int
    tokens_in: int
    tokens_out: int


def honest_baseline(info: ModelInfo, baseline: int, reply: int) -> int:
    """What the app could have sent without the trimmer: its messages, cut to the
    model's context window less the reply it reserved (the SQL below does the same)."""
    return min(baseline, max(info.context_window - reply, 0))


_SUMMED = tuple(f.name for f in fields(RequestSums))[3:]


def day_of(column: Any, dialect: str) -> ColumnElement[str]:
    """The UTC date of a stored time, as ``YYYY-MM-DD``."""
    if dialect == "postgresql":
        return func.to_char(func.timezone(_const("UTC"), column), _const("YYYY-MM-DD"))
    return func.substr(column, literal_column("1"), literal_column("10"))


def _const(text: str) -> Any:
    """A string constant written into the SQL, so a key is the same expression in the
    select list and in GROUP BY (bound parameters would differ on PostgreSQL)."""
    return literal_column("'" + text.replace("'", "''") + "'", String)


def _least(a: Any, b: Any) -> Any:
    return case((a < b, a), else_=b)


def _request_key(group_by: str | None, dialect: str) -> Any:
    r, a = REQUESTS.c, ATTEMPTS.c
    return {
        None: None,
        "day": day_of(r.created_at, dialect),
        "model": r.model,
        "conversation": r.conversation_id,
        "user": func.coalesce(r.user, _const("(none)")),
        "upstream": func.coalesce(a.upstream, _const(NOT_SENT)),
    }[group_by]


def _request_columns(windows: Mapping[str, int], temp: Table | None) -> list[Any]:
    r, u, a = REQUESTS.c, USAGE.c, ATTEMPTS.c
    ok = or_(a.outcome.is_(None), a.outcome == "ok")
    given = r.baseline_tokens
    if windows:
        limit = case(windows, value=r.model, else_=None) - r.max_tokens_baseline
        honest: Any = case((given > limit, case((limit > 0, limit), else_=0)), else_=given)
    else:
        honest = given
    if temp is None:
        cache_baseline = func.coalesce(r.cache_baseline_tokens, 0)
        cache_sent = func.coalesce(r.cache_sent_tokens, 0)
    else:
        cache_baseline = func.coalesce(temp.c.baseline, r.cache_baseline_tokens, 0)
        cache_sent = func.coalesce(temp.c.sent, r.cache_sent_tokens, 0)
    reported = u.estimated == false()
    prompt = func.coalesce(u.prompt_tokens, r.prompt_tokens)
    cached = case((reported, func.coalesce(u.cached_tokens, 0)), else_=_least(cache_sent, prompt))

    def count(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    def billed(value: Any) -> Any:
        return func.sum(case((ok, value), else_=0))

    return [
        func.count(),
        func.sum(given),
        func.sum(honest),
        count(given > honest),
        func.sum(r.prompt_tokens),
        func.sum(r.compression_saved_tokens),
        func.sum(r.recall_tokens),
        func.sum(r.max_tokens_baseline),
        func.sum(r.max_tokens),
        func.sum(func.coalesce(a.rate_limited, 0)),
        func.sum(func.coalesce(a.waited_ms, 0)),
        count(a.fallback_model.is_not(None)),
        count(~ok),
        count(a.outcome == "quota_exceeded"),
        count(ok),
        count(and_(ok, or_(u.estimated.is_(None), u.estimated != false()))),
        billed(honest),
        billed(_least(cache_baseline, honest)),
        billed(prompt),
        billed(cached),
        billed(func.coalesce(u.completion_tokens, 0)),
    ]


def request_sums(
    connection: Connection,
    models: ModelTable,
    since: datetime | None,
    until: datetime | None,
    group_by: str | None,
    computed: Mapping[int, Cached] | None = None,
    only_computed: bool = False,
) -> list[RequestSums]:
    """The requests created in ``[since, until)`` summed per cell; ``computed`` holds
    cache figures to use instead of the stored ones (all of them, ``only_computed``)."""
    r, u, a = REQUESTS.c, USAGE.c, ATTEMPTS.c
    windows = {
        model: models.get(model).context_window
        for model in connection.execute(select(r.model).distinct()).scalars()
    }
    with _temporary(connection, computed or {}, only_computed) as temp:
        joined = REQUESTS.outerjoin(USAGE, u.request_id == r.id).outerjoin(
            ATTEMPTS, a.request_id == r.id
        )
        if temp is not None:
            joined = joined.outerjoin(temp, temp.c.request_id == r.id)
        key = _request_key(group_by, connection.dialect.name)
        keys = [] if key is None else [key]
        columns = [
            c.label(name) for c, name in zip(_request_columns(windows, temp), _SUMMED, strict=True)
        ]
        query = (
            select(*[k.label("key") for k in keys], r.model, u.model.label("usage_model"), *columns)
            .select_from(joined)
            .where(*period(r.created_at, since, until))
            .group_by(*keys, r.model, u.model)
        )
        if only_computed and temp is not None:
            query = query.where(temp.c.request_id.is_not(None))
        return [
            RequestSums(
                row.get("key"),
                row["model"],
                row["usage_model"],
                **{name: int(row[name] or 0) for name in _SUMMED},
            )
            for row in connection.execute(query).mappings()
        ]


@contextmanager
def _temporary(
    connection: Connection, computed: Mapping[int, Cached], always: bool
) -> Iterator[Table | None]:
    if not computed and not always:
        yield None
        return
    _TEMP.create(connection, checkfirst=True)
    try:
        if computed:
            connection.execute(
                _TEMP.insert(),
                [
                    {"request_id": i, "baseline": c.baseline, "sent": c.sent}
                    for i, c in computed.items()
                ],
            )
        yield _TEMP
    finally:
        _TEMP.drop(connection)


def spend_sums(
    connection: Connection, since: datetime | None, until: datetime | None, group_by: str | None
) -> list[SpendSums]:
    """Summaries, failures and prompt rewrites in ``[since, until)``, summed per cell
    (grouped ``"model"``, ``key`` is None: the model is read from the label)."""
    dialect = connection.dialect.name
    sums = []
    for table, kind in ((SUMMARIES, "summary"), (FAILURES, "failure")):
        c = table.c
        key = {
            None: None,
            "model": None,
            "day": day_of(c.created_at, dialect),
            "conversation": func.coalesce(c.conversation_id, _const("(shared)")),
            "user": func.coalesce(c.user, _const("(none)")),
            "upstream": LIBRARY,
        }[group_by]
        sums += _spend_rows(connection, kind, key, c.summarizer, c.created_at, since, until)
    c = COMPRESSIONS.c
    key = {
        None: None,
        "model": None,
        "day": day_of(c.created_at, dialect),
        "conversation": "(shared)",
        "user": "(none)",
        "upstream": LIBRARY,
    }[group_by]
    rows = _spend_rows(connection, "compression", key, c.model, c.created_at, since, until)
    return sums + [
        SpendSums(s.key, f"openai:{s.label}", s.kind, s.calls, s.tokens_in, s.tokens_out)
        for s in rows
    ]


def _spend_rows(
    connection: Connection,
    kind: str,
    key: Any,
    label: Any,
    created_at: Any,
    since: datetime | None,
    until: datetime | None,
) -> list[SpendSums]:
    table = created_at.table
    constant = key if isinstance(key, str) else None
    if constant is not None:
        key = None  # the same for every row: not grouped by in SQL
    keys = [] if key is None else [key.label("key")]
    query = (
        select(
            *keys,
            label.label("label"),
            func.count().label("calls"),
            func.sum(table.c.tokens_in).label("tokens_in"),
            func.sum(table.c.tokens_out).label("tokens_out"),
        )
        .where(*period(created_at, since, until))
        .group_by(*([] if key is None else [key]), label)
    )
    return [
        SpendSums(
            constant if constant is not None else row.get("key"),
            row["label"],
            kind,
            int(row["calls"]),
            int(row["tokens_in"] or 0),
            int(row["tokens_out"] or 0),
        )
        for row in connection.execute(query).mappings()
    ]
