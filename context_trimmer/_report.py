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
  ``_prompt_cache``): what the app would really have paid.
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
from typing import Any, Literal

from ._exceptions import ConfigurationError
from ._ledger import Ledger, LedgerRow, SpendRow
from ._models import ModelInfo, ModelTable
from ._prompt_cache import DEFAULT_LIFETIME, Cached, CacheRequest, simulate

GroupBy = Literal["day", "model", "conversation", "user", "upstream"]
GROUPS: tuple[str, ...] = ("day", "model", "conversation", "user", "upstream")
NOT_SENT = "(not sent)"
"""The upstream of requests never sent (or recorded before upstreams were)."""
LIBRARY = "(summarizer)"
"""The upstream group of the library's own spend (summaries, prompt rewrites)."""
PER_MILLION = 1_000_000


@dataclass
class ReportRow:
    """The figures of one group (or of the totals, where ``group`` is ``"TOTAL"``)."""

    group: str
    requests: int = 0
    baseline_tokens: int = 0
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


@dataclass
class Report:
    """Rows per group (empty without ``group_by``) and the totals."""

    since: datetime | None
    until: datetime | None
    group_by: str | None
    rows: list[ReportRow]
    totals: ReportRow
    requests: list[RequestPoint] = field(default_factory=list)
    summarizer_costs: list[tuple[datetime, float]] = field(default_factory=list)

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
    prompts stay in OpenAI's cache ``cache_lifetime`` seconds after their last use."""
    if group_by is not None and group_by not in GROUPS:
        raise ConfigurationError(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")
    ledger = source.rows(since, until)
    spend = source.spend(since, until)
    cached = _cached_prompts(source, models, ledger, cache_lifetime)
    groups: dict[str, ReportRow] = {}
    totals = ReportRow("TOTAL")
    points = []
    for row in ledger:
        figures = _request_figures(row, models, cached.get(row.id, Cached(0, 0)))
        points.append(_point(row, figures))
        for target in _targets(groups, totals, _request_key(row, group_by)):
            _add_request(target, row, figures)
    costs = []
    for item in spend:
        costs.append((item.created_at, _spend_cost(item, models)))
        for target in _targets(groups, totals, _spend_key(item, group_by)):
            _add_spend(target, item, models)
    for report_row in [*groups.values(), totals]:
        _finish(report_row)
    rows = sorted(groups.values(), key=lambda r: r.group)
    return Report(since, until, group_by, rows, totals, points, costs)


def _targets(
    groups: dict[str, ReportRow], totals: ReportRow, key: str | None
) -> Iterable[ReportRow]:
    if key is not None:
        yield groups.setdefault(key, ReportRow(key))
    yield totals


def _cached_prompts(
    source: Ledger, models: ModelTable, ledger: list[LedgerRow], lifetime: float
) -> dict[int, Cached]:
    requests = [
        CacheRequest(
            row.id,
            row.created_at,
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
        for row in ledger
        if row.head_hash
    ]
    if not requests:
        return {}
    heads = [r.head_hash for r in requests] + [
        r.summary_covers for r in requests if r.summary_covers
    ]
    tree = source.path_tree(heads, {r.counting_key for r in requests})
    return simulate(requests, tree, lifetime)


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


def _request_figures(row: LedgerRow, models: ModelTable, cache: Cached) -> _Figures:
    asked = models.get(row.model)
    answered = models.get(row.usage_model or row.model)
    prompt = row.usage_prompt_tokens if row.usage_prompt_tokens is not None else row.prompt_tokens
    # Without reported usage, what the cache would have served is estimated too.
    cached = (row.cached_tokens or 0) if row.usage_estimated is False else min(cache.sent, prompt)
    completion = row.completion_tokens or 0
    if row.outcome not in (None, "ok"):
        # Never answered (quota, budget, or errors to the end): nothing was billed.
        return _Figures(0, 0, 0, 0.0, 0.0, 0, 0.0, True)
    baseline = _cost(asked, row.baseline_tokens, 0, completion)
    hit = min(cache.baseline, row.baseline_tokens)
    baseline_cached = _cost(asked, row.baseline_tokens - hit, hit, completion)
    actual = _cost(answered, prompt - cached, cached, completion)
    priced = asked.input_price is not None and answered.input_price is not None
    return _Figures(prompt, cached, completion, baseline, baseline_cached, hit, actual, priced)


def _cost(info: ModelInfo, uncached: int, cached: int, completion: int) -> float:
    input_price = info.input_price or 0.0
    cached_price = info.cached_input_price if info.cached_input_price is not None else input_price
    return (
        uncached * input_price + cached * cached_price + completion * (info.output_price or 0.0)
    ) / PER_MILLION


def _add_request(target: ReportRow, row: LedgerRow, figures: _Figures) -> None:
    target.requests += 1
    target.baseline_tokens += row.baseline_tokens
    target.prompt_tokens += row.prompt_tokens
    target.compression_saved_tokens += row.compression_saved_tokens
    target.recall_tokens += row.recall_tokens
    target.usage_prompt_tokens += figures.usage_prompt
    target.cached_tokens += figures.cached
    target.completion_tokens += figures.completion
    target.estimated_requests += row.usage_estimated is not False and row.outcome in (None, "ok")
    target.max_tokens_before += row.max_tokens_baseline
    target.max_tokens_after += row.max_tokens
    target.baseline_cost += figures.baseline_cost
    target.baseline_cost_cached += figures.baseline_cost_cached
    target.baseline_cached_tokens += figures.baseline_cached
    target.actual_cost += figures.actual_cost
    target.unpriced_requests += not figures.priced
    target.rate_limited_429s += row.rate_limited
    target.wait_seconds += row.waited_ms / 1000
    target.fallbacks += row.fallback_model is not None
    target.failed_requests += row.outcome not in (None, "ok")
    target.quota_rejections += row.outcome == "quota_exceeded"


def _add_spend(target: ReportRow, item: SpendRow, models: ModelTable) -> None:
    cost = _spend_cost(item, models)
    if item.kind == "compression":
        target.compressions += 1
        target.compression_tokens_in += item.tokens_in
        target.compression_tokens_out += item.tokens_out
        target.compression_cost += cost
        return
    target.summaries += item.kind == "summary"
    target.summary_failures += item.kind == "failure"
    # Summaries the extractive summarizer made instead (labelled so by _folding).
    target.summary_fallbacks += item.kind == "summary" and "(fallback for " in item.model
    target.summarizer_tokens_in += item.tokens_in
    target.summarizer_tokens_out += item.tokens_out
    target.summarizer_cost += cost


def _spend_cost(item: SpendRow, models: ModelTable) -> float:
    model = summarizer_model(item.model)
    if model is None:
        return 0.0
    return _cost(models.get(model), item.tokens_in, 0, item.tokens_out)


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
        row.baseline_tokens,
        row.prompt_tokens,
        figures.baseline_cost_cached - figures.actual_cost,
        row.usage_estimated is not False,
        figures.baseline_cached,
        figures.baseline_cost - figures.actual_cost,
        figures.baseline_cost,
        figures.baseline_cost_cached,
        figures.actual_cost,
        row.baseline_tokens + row.max_tokens_baseline,
        row.prompt_tokens + row.max_tokens,
    )


_REQUEST_KEYS: dict[str, Callable[[LedgerRow], str]] = {
    "day": lambda row: row.created_at.date().isoformat(),
    "model": lambda row: row.model,
    "conversation": lambda row: row.conversation_id,
    "user": lambda row: row.user or "(none)",
    "upstream": lambda row: row.upstream or NOT_SENT,
}
_SPEND_KEYS: dict[str, Callable[[SpendRow], str]] = {
    "day": lambda item: item.created_at.date().isoformat(),
    "model": lambda item: summarizer_model(item.model) or item.model,
    "conversation": lambda item: item.conversation_id or "(shared)",
    "user": lambda item: item.user or "(none)",
    "upstream": lambda _item: LIBRARY,
}


def _request_key(row: LedgerRow, group_by: str | None) -> str | None:
    return None if group_by is None else _REQUEST_KEYS[group_by](row)


def _spend_key(item: SpendRow, group_by: str | None) -> str | None:
    return None if group_by is None else _SPEND_KEYS[group_by](item)
