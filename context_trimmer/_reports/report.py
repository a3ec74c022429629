"""The token savings report: exact figures from the ledger, the API's usage and prices.

Every figure comes from a counted or reported number; the README defines each one.
Requests whose usage was never recorded are priced from their exact prepared count
(with no cached tokens and no completion) and counted in ``estimated_requests``;
rows with any such request carry ``estimated = True``.

- ``baseline_cost``: the messages as given (``baseline_tokens``) at the input price,
  plus the completion at the output price. It assumes no prompt-cache hits, so it is
  an upper bound: a resent full history may have been partly cached.
- ``baseline_cost_cached``: the same prompts priced as OpenAI bills them with its
  automatic prompt cache (``baseline_cached_tokens`` at the cached price; see
  ``_store.prompt_cache``): what the app would really have paid.
- ``actual_cost``: the prompt the API reported, its cached part at the cached price,
  plus the completion, at the prices of the model that answered (for requests without
  reported usage, the cached part is estimated by the same cache model).
- ``summarizer_cost``: summarizer calls (failed ones too) at their model's prices.
- ``compression_cost``: system-prompt rewrites (LLM mode) at the rewriter's prices.
- ``net_saving = baseline_cost_cached - actual_cost - summarizer_cost - compression_cost``;
  ``net_saving_uncached`` is the same against ``baseline_cost``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from functools import partial
from typing import Any, Literal

from .._exceptions import ConfigurationError
from .._models import ModelInfo, ModelTable
from .._store.ledger import Ledger, LedgerRow, SpendRow
from .._store.prompt_cache import DEFAULT_LIFETIME, Cached
from .._store.schema import utcnow
from . import cache_figures
from .sums import (
    LIBRARY,
    NOT_SENT,
    RequestSums,
    SpendSums,
    honest_baseline,
    request_sums,
    spend_sums,
)

GroupBy = Literal["day", "model", "conversation", "user", "upstream"]
GROUPS: tuple[str, ...] = ("day", "model", "conversation", "user", "upstream")
__all__ = ["LIBRARY", "NOT_SENT"]  # the upstream groups of unsent requests / own spend
PER_MILLION = 1_000_000


@dataclass
class ReportRow:
    """The figures of one group (or of the totals, where ``group`` is ``"TOTAL"``)."""

    group: str
    requests: int = 0
    baseline_tokens: int = 0
    baseline_tokens_as_given: int = 0
    over_window_requests: int = 0
    prompt_tokens: int = 0
    saved_tokens: int = 0
    saved_percent: float = 0.0
    summary_saved_tokens: int = 0
    compression_saved_tokens: int = 0
    recall_tokens: int = 0
    usage_prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    estimated_requests: int = 0
    max_tokens_before: int = 0
    max_tokens_after: int = 0
    tpm_before: int = 0
    tpm_after: int = 0
    summaries: int = 0
    summary_failures: int = 0
    summary_fallbacks: int = 0
    summarizer_tokens_in: int = 0
    summarizer_tokens_out: int = 0
    compressions: int = 0
    compression_tokens_in: int = 0
    compression_tokens_out: int = 0
    baseline_cached_tokens: int = 0
    baseline_cost: float = 0.0
    baseline_cost_cached: float = 0.0
    actual_cost: float = 0.0
    summarizer_cost: float = 0.0
    compression_cost: float = 0.0
    net_saving: float = 0.0
    net_saving_uncached: float = 0.0
    unpriced_requests: int = 0
    rate_limited_429s: int = 0
    wait_seconds: float = 0.0
    fallbacks: int = 0
    failed_requests: int = 0
    quota_rejections: int = 0
    estimated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ReportRow))


@dataclass(frozen=True)
class RequestPoint:
    """One prepared request, for charts over time."""

    id: int
    created_at: datetime
    model: str
    conversation_id: str
    baseline_tokens: int
    prompt_tokens: int
    net_saving: float
    estimated: bool
    baseline_cached_tokens: int = 0
    net_saving_uncached: float = 0.0
    baseline_cost: float = 0.0
    baseline_cost_cached: float = 0.0
    actual_cost: float = 0.0
    tpm_before: int = 0
    tpm_after: int = 0


Detail = tuple[list[RequestPoint], list[tuple[datetime, float]]]


@dataclass
class Report:
    """Rows per group (empty without ``group_by``) and the totals; ``requests`` and
    ``summarizer_costs`` (one item per request / summarizer call, for charts) are read
    from the ledger the first time they are used."""

    since: datetime | None
    until: datetime | None
    group_by: str | None
    rows: list[ReportRow]
    totals: ReportRow
    load_detail: Callable[[], Detail] | None = field(default=None, repr=False, compare=False)
    _detail: Detail | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def requests(self) -> list[RequestPoint]:
        """Each request's figures, in id order."""
        return self._loaded()[0]

    @property
    def summarizer_costs(self) -> list[tuple[datetime, float]]:
        """When each summarizer call (and prompt rewrite) was paid, and its cost."""
        return self._loaded()[1]

    def _loaded(self) -> Detail:
        if self._detail is None:
            self._detail = self.load_detail() if self.load_detail else ([], [])
        return self._detail

    def timeline(self, cached: bool = True) -> list[tuple[datetime, float]]:
        """Net dollars gained at each moment: each request's saving (against the cached
        baseline, or the uncached one), minus each summarizer call's cost when it was
        spent, in time order."""
        events = [
            (p.created_at, p.net_saving if cached else p.net_saving_uncached) for p in self.requests
        ]
        events += [(when, -cost) for when, cost in self.summarizer_costs]
        return sorted(events, key=lambda event: event[0])

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "group_by": self.group_by,
            "rows": [row.as_dict() for row in self.rows],
            "totals": self.totals.as_dict(),
        }


def build_report(
    source: Ledger,
    models: ModelTable,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: str | None = None,
    cache_lifetime: float = DEFAULT_LIFETIME,
) -> Report:
    """Aggregate the ledger between ``since`` (inclusive) and ``until`` (exclusive);
    prompts stay in OpenAI's cache ``cache_lifetime`` seconds after their last use.

    The database sums the ledger (``_reports.sums``); each request's cache figures are
    computed once and stored (``_reports.cache_figures``) for the default lifetime, and for
    every request in the period on each report with another lifetime."""
    if group_by is not None and group_by not in GROUPS:
        raise ConfigurationError(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")
    db = source.db
    default = cache_lifetime == DEFAULT_LIFETIME
    if default:
        cache_figures.fill(db, models, utcnow())
    with db.reading() as connection:
        pending = cache_figures.pending(connection, models, since, until, everything=not default)
        computed = cache_figures.compute(connection, models, pending, cache_lifetime)
        requests = request_sums(connection, models, since, until, group_by, computed)
        spend = spend_sums(connection, since, until, group_by)
    groups: dict[str, ReportRow] = {}
    totals = ReportRow("TOTAL")
    for cell in requests:
        for target in _targets(groups, totals, cell.key):
            _add_requests(target, cell, models)
    for item in spend:
        key = (summarizer_model(item.label) or item.label) if group_by == "model" else item.key
        for target in _targets(groups, totals, key):
            _add_spend(target, item, models)
    for report_row in [*groups.values(), totals]:
        _finish(report_row)
    rows = sorted(groups.values(), key=lambda r: r.group)
    detail = partial(_detail, source, models, since, until, cache_lifetime)
    return Report(since, until, group_by, rows, totals, detail)


def _targets(
    groups: dict[str, ReportRow], totals: ReportRow, key: str | None
) -> Iterable[ReportRow]:
    if key is not None:
        yield groups.setdefault(key, ReportRow(key))
    yield totals


def _add_requests(target: ReportRow, cell: RequestSums, models: ModelTable) -> None:
    asked = models.get(cell.model)
    answered = models.get(cell.usage_model or cell.model)
    billed, hit, completion = cell.billed_baseline, cell.baseline_hit, cell.completion
    target.requests += cell.requests
    target.baseline_tokens += cell.baseline
    target.baseline_tokens_as_given += cell.baseline_given
    target.over_window_requests += cell.over_window
    target.prompt_tokens += cell.prompt_tokens
    target.compression_saved_tokens += cell.compression_saved_tokens
    target.recall_tokens += cell.recall_tokens
    target.usage_prompt_tokens += cell.usage_prompt
    target.cached_tokens += cell.cached
    target.completion_tokens += completion
    target.estimated_requests += cell.estimated
    target.max_tokens_before += cell.max_tokens_before
    target.max_tokens_after += cell.max_tokens_after
    target.baseline_cost += _cost(asked, billed, 0, completion)
    target.baseline_cost_cached += _cost(asked, billed - hit, hit, completion)
    target.baseline_cached_tokens += hit
    target.actual_cost += _cost(answered, cell.usage_prompt - cell.cached, cell.cached, completion)
    priced = asked.input_price is not None and answered.input_price is not None
    target.unpriced_requests += 0 if priced else cell.answered
    target.rate_limited_429s += cell.rate_limited
    target.wait_seconds += cell.waited_ms / 1000
    target.fallbacks += cell.fallbacks
    target.failed_requests += cell.failed
    target.quota_rejections += cell.quota_rejections


def _detail(
    source: Ledger,
    models: ModelTable,
    since: datetime | None,
    until: datetime | None,
    lifetime: float,
) -> tuple[list[RequestPoint], list[tuple[datetime, float]]]:
    """Each request's figures and each summarizer call's cost, for charts over time
    (read when asked for: one object per request)."""
    ledger = source.rows(since, until)
    with source.db.reading() as connection:
        everything = lifetime != DEFAULT_LIFETIME
        pending = cache_figures.pending(connection, models, since, until, everything=everything)
        computed = cache_figures.compute(connection, models, pending, lifetime)
    points = []
    for row in ledger:
        cache = computed.get(row.id) or Cached(
            row.cache_baseline_tokens or 0, row.cache_sent_tokens or 0
        )
        points.append(_point(row, _request_figures(row, models, cache)))
    costs = [(item.created_at, _spend_cost(item, models)) for item in source.spend(since, until)]
    return points, costs


@dataclass(frozen=True)
class _Figures:
    usage_prompt: int
    cached: int
    completion: int
    baseline_cost: float
    baseline_cost_cached: float
    baseline_cached: int
    actual_cost: float
    priced: bool
    baseline: int


def _request_figures(row: LedgerRow, models: ModelTable, cache: Cached) -> _Figures:
    asked = models.get(row.model)
    answered = models.get(row.usage_model or row.model)
    baseline_tokens = honest_baseline(asked, row.baseline_tokens, row.max_tokens_baseline)
    prompt = row.usage_prompt_tokens if row.usage_prompt_tokens is not None else row.prompt_tokens
    # Without reported usage, what the cache would have served is estimated too.
    cached = (row.cached_tokens or 0) if row.usage_estimated is False else min(cache.sent, prompt)
    completion = row.completion_tokens or 0
    if row.outcome not in (None, "ok"):
        # Never answered (quota, budget, or errors to the end): nothing was billed.
        return _Figures(0, 0, 0, 0.0, 0.0, 0, 0.0, True, baseline_tokens)
    baseline = _cost(asked, baseline_tokens, 0, completion)
    hit = min(cache.baseline, baseline_tokens)
    baseline_cached = _cost(asked, baseline_tokens - hit, hit, completion)
    actual = _cost(answered, prompt - cached, cached, completion)
    priced = asked.input_price is not None and answered.input_price is not None
    return _Figures(
        prompt, cached, completion, baseline, baseline_cached, hit, actual, priced, baseline_tokens
    )


def _cost(info: ModelInfo, uncached: int, cached: int, completion: int) -> float:
    input_price = info.input_price or 0.0
    cached_price = info.cached_input_price if info.cached_input_price is not None else input_price
    return (
        uncached * input_price + cached * cached_price + completion * (info.output_price or 0.0)
    ) / PER_MILLION


def _add_spend(target: ReportRow, item: SpendSums, models: ModelTable) -> None:
    cost = _cost_of(item.label, item.tokens_in, item.tokens_out, models)
    if item.kind == "compression":
        target.compressions += item.calls
        target.compression_tokens_in += item.tokens_in
        target.compression_tokens_out += item.tokens_out
        target.compression_cost += cost
        return
    target.summaries += item.calls if item.kind == "summary" else 0
    target.summary_failures += item.calls if item.kind == "failure" else 0
    # Summaries the extractive summarizer made instead (labelled so by _folding).
    if item.kind == "summary" and "(fallback for " in item.label:
        target.summary_fallbacks += item.calls
    target.summarizer_tokens_in += item.tokens_in
    target.summarizer_tokens_out += item.tokens_out
    target.summarizer_cost += cost


def _cost_of(label: str, tokens_in: int, tokens_out: int, models: ModelTable) -> float:
    model = summarizer_model(label)
    if model is None:
        return 0.0
    return _cost(models.get(model), tokens_in, 0, tokens_out)


def _spend_cost(item: SpendRow, models: ModelTable) -> float:
    return _cost_of(item.model, item.tokens_in, item.tokens_out, models)


def _finish(row: ReportRow) -> None:
    row.saved_tokens = row.baseline_tokens - row.prompt_tokens
    row.summary_saved_tokens = row.saved_tokens - row.compression_saved_tokens
    row.saved_percent = (
        round(100 * row.saved_tokens / row.baseline_tokens, 4) if (row.baseline_tokens) else 0.0
    )
    row.tpm_before = row.baseline_tokens + row.max_tokens_before
    row.tpm_after = row.prompt_tokens + row.max_tokens_after
    spent = row.actual_cost + row.summarizer_cost + row.compression_cost
    row.net_saving = row.baseline_cost_cached - spent
    row.net_saving_uncached = row.baseline_cost - spent
    for name in (
        "baseline_cost",
        "baseline_cost_cached",
        "actual_cost",
        "summarizer_cost",
        "compression_cost",
        "net_saving",
        "net_saving_uncached",
    ):
        setattr(row, name, round(getattr(row, name), 6))
    row.estimated = row.estimated_requests > 0
    row.wait_seconds = round(row.wait_seconds, 3)


def summarizer_model(summarizer: str) -> str | None:
    """The priced model behind a summarizer label (``openai:gpt-4o-mini`` -> gpt-4o-mini)."""
    if summarizer.startswith("openai:"):
        return summarizer.split(":", 1)[1].split(" ", 1)[0]
    return None


def _point(row: LedgerRow, figures: _Figures) -> RequestPoint:
    return RequestPoint(
        row.id,
        row.created_at,
        row.model,
        row.conversation_id,
        figures.baseline,
        row.prompt_tokens,
        figures.baseline_cost_cached - figures.actual_cost,
        row.usage_estimated is not False,
        figures.baseline_cached,
        figures.baseline_cost - figures.actual_cost,
        figures.baseline_cost,
        figures.baseline_cost_cached,
        figures.actual_cost,
        figures.baseline + row.max_tokens_baseline,
        row.prompt_tokens + row.max_tokens,
    )
