"""The savings report as one self-contained HTML page: inline SVG charts, no scripts,
no network needed to open it.

Read from the top: the headline figures (tokens saved, net dollars saved against the
cached and the uncached baseline, tokens-per-minute headroom, summaries and their
failures), then the charts, each with labelled axes, units and dates, and every point
or bar carrying its value in an SVG ``<title>`` (shown on hover): prompt tokens per
request as given vs sent; cumulative cost without the trimmer (uncached and as OpenAI
caches it) and with it; tokens the TPM limiter counts per minute, before and after;
tokens by model (models with requests only) and by conversation; then the table.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate

from .report import Report, ReportRow, RequestPoint

WIDTH, HEIGHT = 1100, 320
LEFT, RIGHT, TOP, BOTTOM = 78, 20, 34, 58
BASELINE_COLOR, SENT_COLOR, NET_COLOR = "#d9534f", "#2e7d32", "#1565c0"
CACHED_COLOR = "#ef9a9a"
MAX_MARKERS = 600


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    values: list[float]
    dashed: bool = False


def render_html(overall: Report, by_model: Report, by_conversation: Report) -> str:
    points = overall.requests
    first = points[0].created_at if points else None
    last = points[-1].created_at if points else None
    period = (
        f"Requests from {_moment(overall.since or first, 'the start')} "
        f"to {_moment(overall.until or last, 'now')}"
    )
    if not overall.totals.requests:
        return _PAGE.format(period=html.escape(period), body=_NOTHING_YET)
    sections = [
        _headline(overall.totals),
        _figure(
            "Prompt tokens per request",
            "tokens-over-time",
            _line_chart(
                [
                    Series("as given", BASELINE_COLOR, [p.baseline_tokens for p in points]),
                    Series("sent", SENT_COLOR, [p.prompt_tokens for p in points]),
                ],
                points,
                "prompt tokens",
                _tokens,
            ),
        ),
        _figure("Cumulative cost (USD)", "net-dollars", _cost_chart(overall)),
        _figure("Tokens the TPM limit counts, per minute", "tpm", _tpm_chart(points)),
        _figure(
            "Prompt tokens by model",
            "by-model",
            _bar_chart(_with_requests(by_model.rows)),
        ),
        _figure(
            "Prompt tokens by conversation (15 largest savings)",
            "by-conversation",
            _bar_chart(
                sorted(_with_requests(by_conversation.rows), key=lambda r: -r.saved_tokens)[:15]
            ),
        ),
        _table([*by_model.rows, overall.totals]),
    ]
    return _PAGE.format(period=html.escape(period), body="\n".join(sections))


def _headline(totals: ReportRow) -> str:
    estimated = " (estimated in part)" if totals.estimated else ""
    headroom = totals.tpm_before - totals.tpm_after
    share = 100 * headroom / totals.tpm_before if totals.tpm_before else 0.0
    cards = [
        ("Prompt tokens saved", f"{totals.saved_tokens:,}", f"{totals.saved_percent:.1f}%"),
        (
            "Net saved vs OpenAI's cached pricing",
            _usd(totals.net_saving),
            f"of {_usd(totals.baseline_cost_cached)} it would have cost{estimated}",
        ),
        (
            "Net saved vs full-price prompts",
            _usd(totals.net_saving_uncached),
            f"of {_usd(totals.baseline_cost)}, an upper bound",
        ),
        (
            "TPM headroom gained",
            f"{share:.1f}%",
            f"{totals.tpm_before:,} \u2192 {totals.tpm_after:,} tokens counted by the "
            f"tokens-per-minute limit (prompt + max_tokens): {headroom:,} fewer",
        ),
        (
            "Summaries",
            f"{totals.summaries:,}",
            f"{totals.summary_failures:,} failed calls (never sent)",
        ),
        ("Requests", f"{totals.requests:,}", f"{totals.estimated_requests:,} without usage"),
        (
            "Over the context window",
            f"{totals.over_window_requests:,}",
            "requests whose messages the app would have had to cut to the window "
            "less the reply; the baseline counts them at that limit",
        ),
    ]
    body = "".join(
        f'<div class="card"><div class="label">{html.escape(label)}</div>'
        f'<div class="value">{html.escape(value)}</div>'
        f'<div class="note">{html.escape(note)}</div></div>'
        for label, value, note in cards
    )
    return f'<section class="headline">{body}</section>'


def _cost_chart(report: Report) -> str:
    points = report.requests
    spend = sorted(report.summarizer_costs)
    overhead, spent = [], 0.0
    for point in points:
        while spend and spend[0][0] <= point.created_at:
            spent += spend.pop(0)[1]
        overhead.append(spent)
    actual = list(accumulate(p.actual_cost for p in points))
    return _line_chart(
        [
            Series(
                "without trimming, no cache",
                CACHED_COLOR,
                list(accumulate(p.baseline_cost for p in points)),
                dashed=True,
            ),
            Series(
                "without trimming, OpenAI's cache",
                BASELINE_COLOR,
                list(accumulate(p.baseline_cost_cached for p in points)),
            ),
            Series(
                "with the trimmer (summaries included)",
                NET_COLOR,
                [a + o for a, o in zip(actual, overhead, strict=True)],
            ),
        ],
        points,
        "USD, cumulative",
        _usd,
    )


def _tpm_chart(points: Sequence[RequestPoint]) -> str:
    minutes: dict[datetime, list[int]] = {}
    for point in points:
        minute = point.created_at.replace(second=0, microsecond=0)
        pair = minutes.setdefault(minute, [0, 0])
        pair[0] += point.tpm_before
        pair[1] += point.tpm_after
    keys = sorted(minutes)
    if not keys:
        return _empty()
    series = [
        Series("before", BASELINE_COLOR, [float(minutes[k][0]) for k in keys]),
        Series("after", SENT_COLOR, [float(minutes[k][1]) for k in keys]),
    ]
    if len(keys) > 60:
        return _line_chart(series, keys, "tokens per minute", _tokens, x_label="minute (UTC)")
    days = sorted({f"{k:%Y-%m-%d}" for k in keys})
    return _bars(
        [f"{k:%H:%M}" for k in keys],
        series,
        "tokens per minute",
        [" tokens (prompt + max_tokens)"] * len(keys),
        x_label=f"minute (UTC, {' to '.join(dict.fromkeys([days[0], days[-1]]))})",
    )


def _with_requests(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """Rows of prepared requests (not those holding only summarizer spend)."""
    return [row for row in rows if row.requests]


def _moment(moment: datetime | None, default: str) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else default


def _usd(value: float) -> str:
    return f"-${-value:,.4f}" if value < 0 else f"${value:,.4f}"


def _tokens(value: float) -> str:
    return f"{value:,.0f}"


def _figure(title: str, name: str, svg: str) -> str:
    return f'<section><h2>{html.escape(title)}</h2><div data-chart="{name}">{svg}</div></section>'


def _when(item: RequestPoint | datetime) -> datetime:
    return item if isinstance(item, datetime) else item.created_at


def _line_chart(
    series: list[Series],
    xs: Sequence[RequestPoint] | Sequence[datetime],
    y_label: str,
    fmt: Callable[[float], str],
    *,
    x_label: str = "requests in time order (UTC)",
) -> str:
    values = [v for s in series for v in s.values]
    if not values:
        return _empty()
    ticks = nice_ticks(min(0.0, *values), max(0.0, *values))
    low, high = ticks[0], ticks[-1]
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = inner_w / max(1, len(xs) - 1)
    parts = [_y_axis(ticks, y_label, fmt), _x_axis([_when(x) for x in xs], step, x_label)]
    every = max(1, len(xs) // MAX_MARKERS)
    for index, line in enumerate(series):
        ys = [TOP + y for y in _scale(line.values, low, high, inner_h)]
        coords = " ".join(f"{LEFT + i * step:.1f},{y:.1f}" for i, y in enumerate(ys))
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        parts.append(
            f'<polyline fill="none" stroke="{line.color}" stroke-width="2"{dash} '
            f'points="{coords}" data-series="{html.escape(line.name)}"/>'
        )
        for i in range(0, len(ys), every):
            tip = f"{line.name}, {_when(xs[i]):%Y-%m-%d %H:%M:%S} UTC: {fmt(line.values[i])}"
            parts.append(
                f'<circle cx="{LEFT + i * step:.1f}" cy="{ys[i]:.1f}" r="3" fill="{line.color}">'
                f"<title>{html.escape(tip)}</title></circle>"
            )
        parts.append(
            f'<text x="{LEFT + 10 + 250 * index}" y="{TOP - 14}" fill="{line.color}" '
            f'font-weight="bold">{html.escape(line.name)}</text>'
        )
    return _svg(parts)


def nice_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """At most ``most`` evenly spaced round values (1, 2, 2.5 or 5 times a power of ten)
    from at or below ``low`` to at or above ``high``."""
    if high <= low:
        high = low + 1.0
    rough = (high - low) / (most - 1)
    power = 10.0 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= rough)
    first = math.floor(low / step + 1e-9) * step
    count = math.ceil((high - first) / step - 1e-9)
    return [round(first + i * step, 10) for i in range(count + 1)]


def _scale(values: Sequence[float], low: float, high: float, size: float) -> list[float]:
    span = (high - low) or 1.0
    return [size - (v - low) / span * size for v in values]


def _y_axis(ticks: Sequence[float], label: str, fmt: Callable[[float], str]) -> str:
    inner_h = HEIGHT - TOP - BOTTOM
    low, high = ticks[0], ticks[-1]
    parts = [
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + inner_h}" stroke="#999"/>',
        f'<text transform="translate(14,{TOP + inner_h / 2}) rotate(-90)" '
        f'text-anchor="middle" font-size="11">{html.escape(label)}</text>',
    ]
    for value in ticks:
        y = TOP + inner_h - inner_h * (value - low) / ((high - low) or 1.0)
        parts.append(
            f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            f'stroke="#eee"/><text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" '
            f'font-size="10">{html.escape(fmt(value))}</text>'
        )
    return "".join(parts)


def _x_axis(moments: Sequence[datetime], step: float, label: str) -> str:
    bottom = HEIGHT - BOTTOM
    parts = [
        f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" stroke="#999"/>',
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 8}" '
        f'text-anchor="middle" font-size="11">{html.escape(label)}</text>',
    ]
    if not moments:
        return "".join(parts)
    count = min(5, len(moments))
    picks = sorted({round(i * (len(moments) - 1) / max(1, count - 1)) for i in range(count)})
    for index, text in zip(picks, _tick_labels(moments, picks), strict=True):
        x = LEFT + index * step
        anchor = "start" if index == 0 else "end" if index == len(moments) - 1 else "middle"
        parts.append(
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#999"/>'
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="{anchor}" font-size="10">'
            f"{html.escape(text)}</text>"
        )
    return "".join(parts)


def _tick_labels(moments: Sequence[datetime], picks: Sequence[int]) -> list[str]:
    """The picked moments as times; where two would read the same (requests sent back to
    back), the request's number with the time of the first and last."""
    fmt = _time_format(moments)
    labels = [f"{moments[i]:{fmt}}" for i in picks]
    if len(set(labels)) == len(labels):
        return labels
    numbered = [f"#{i + 1:,}" for i in picks]
    numbered[0] += f" ({labels[0]})"
    if len(picks) > 1:
        numbered[-1] += f" ({labels[-1]})"
    return numbered


def _time_format(moments: Sequence[datetime]) -> str:
    """Dates and minutes; seconds too when everything happened within the hour."""
    span = (max(moments) - min(moments)).total_seconds()
    return "%Y-%m-%d %H:%M:%S" if span < 3600 else "%Y-%m-%d %H:%M"


def _bar_chart(rows: Sequence[ReportRow]) -> str:
    return _bars(
        [row.group for row in rows],
        [
            Series("as given", BASELINE_COLOR, [row.baseline_tokens for row in rows]),
            Series("sent", SENT_COLOR, [row.prompt_tokens for row in rows]),
        ],
        "prompt tokens",
        [f" tokens in {row.requests:,} requests" for row in rows],
    )


def _bars(
    labels: Sequence[str],
    series: Sequence[Series],
    y_label: str,
    suffixes: Sequence[str],
    x_label: str = "",
) -> str:
    """Grouped bars, one group per label, each bar's value in its ``<title>``."""
    if not labels:
        return _empty()
    ticks = nice_ticks(0.0, max(max(max(s.values) for s in series), 1.0))
    high = ticks[-1]
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / len(labels)
    bar = min(slot * 0.8 / len(series), 60)
    bottom = TOP + inner_h
    parts = [_y_axis(ticks, y_label, _tokens)]
    parts.append(
        f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" stroke="#999"/>'
        f'<text x="{LEFT + inner_w / 2}" y="{HEIGHT - 8}" text-anchor="middle" '
        f'font-size="11">{html.escape(x_label)}</text>'
    )
    for index, label in enumerate(labels):
        x = LEFT + index * slot + slot * 0.1
        for number, line in enumerate(series):
            value = line.values[index]
            h = value / high * inner_h
            tip = f"{label}, {line.name}: {value:,.0f}{suffixes[index]}"
            parts.append(
                f'<rect x="{x + number * bar:.1f}" y="{bottom - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{line.color}"><title>{html.escape(tip)}</title></rect>'
            )
        if len(labels) <= 20 or index % (len(labels) // 10) == 0:
            parts.append(
                f'<text x="{x + bar * len(series) / 2:.1f}" y="{bottom + 16}" '
                f'text-anchor="middle" font-size="10">{html.escape(label[:18])}</text>'
            )
    for number, line in enumerate(series):
        parts.append(
            f'<text x="{LEFT + 10 + 120 * number}" y="{TOP - 14}" fill="{line.color}" '
            f'font-weight="bold">{html.escape(line.name)}</text>'
        )
    return _svg(parts)


def _svg(parts: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'preserveAspectRatio="xMinYMin meet" font-family="sans-serif" font-size="12">'
        + "".join(parts)
        + "</svg>"
    )


def _empty() -> str:
    return '<p class="empty">No requests in this period.</p>'


_TABLE_COLUMNS = (
    "group",
    "requests",
    "baseline_tokens",
    "prompt_tokens",
    "saved_percent",
    "cached_tokens",
    "tpm_before",
    "tpm_after",
    "summarizer_tokens_in",
    "baseline_cost",
    "baseline_cost_cached",
    "actual_cost",
    "summarizer_cost",
    "net_saving",
    "net_saving_uncached",
)


def _table(rows: Sequence[ReportRow]) -> str:
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in _TABLE_COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_cell(c, getattr(row, c)))}</td>" for c in _TABLE_COLUMNS)
        + "</tr>"
        for row in rows
    )
    return f"<section><h2>Figures by model</h2><table><tr>{head}</tr>{body}</table></section>"


def _cell(column: str, value: object) -> str:
    if column.endswith("_percent") and isinstance(value, float):
        return f"{value:.1f}%"
    if column.endswith(("_cost", "_saving", "_uncached")) and isinstance(value, float):
        return _usd(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


_NOTHING_YET = """<section class="empty"><h2>No requests in this period</h2>
<p>The ledger holds no prepared request here. Requests are recorded by
<code>trimmer.prepare()</code>, a wrapped client or the gateway, in the database the
report reads (<code>--db URL</code>, else <code>$CONTEXT_TRIMMER_DB</code>, else the local
SQLite file); <code>context-trimmer replay</code> records into a throwaway database unless
given <code>--db</code>.</p></section>"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>context-trimmer savings report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1600px; }}
svg {{ display: block; width: 100%; height: auto; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 5px; text-align: right; }}
h2 {{ font-size: 16px; margin-top: 1.6em; }}
.headline {{ display: grid; grid-template-columns: repeat(3, 1fr); gap: 10px; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: 10px 12px; }}
.card .label {{ font-size: 12px; color: #555; }}
.card .value {{ font-size: 24px; font-weight: bold; margin: 4px 0; }}
.card .note {{ font-size: 11px; color: #666; }}
</style></head>
<body><h1>Token savings report</h1>
<p>{period}</p>
{body}
</body></html>
"""
