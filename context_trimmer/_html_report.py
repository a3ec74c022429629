"""The savings report as one self-contained HTML page: inline SVG charts, no scripts,
no network needed to open it.

Charts: prompt tokens as given vs sent per request over time; cumulative net dollars
saved (summarizer costs subtracted when they were spent); tokens saved by model and by
conversation; then the table of figures.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime
from itertools import accumulate

from ._report import Report, ReportRow

WIDTH, HEIGHT, PAD = 860, 260, 48
BASELINE_COLOR, SENT_COLOR, NET_COLOR = "#d9534f", "#2e7d32", "#1565c0"


def render_html(overall: Report, by_model: Report, by_conversation: Report) -> str:
    points = overall.requests
    net = list(accumulate(delta for _when, delta in overall.timeline()))
    sections = [
        _figure(
            "Prompt tokens per request",
            "tokens-over-time",
            _line_chart(
                [
                    ("as given", BASELINE_COLOR, [p.baseline_tokens for p in points]),
                    ("sent", SENT_COLOR, [p.prompt_tokens for p in points]),
                ]
            ),
        ),
        _figure(
            "Cumulative net saving (USD)",
            "net-dollars",
            _line_chart([("net saved", NET_COLOR, net)]),
        ),
        _figure("Tokens by model", "by-model", _bar_chart(by_model.rows)),
        _figure(
            "Tokens by conversation (15 largest savings)",
            "by-conversation",
            _bar_chart(sorted(by_conversation.rows, key=lambda r: -r.saved_tokens)[:15]),
        ),
        _table([*by_model.rows, overall.totals]),
    ]
    period = f"{_moment(overall.since, 'the start')} to {_moment(overall.until, 'now')}"
    totals = overall.totals
    headline = (
        f"{totals.requests:,} requests; {totals.saved_tokens:,} prompt tokens saved "
        f"({totals.saved_percent:.1f}%); net saving ${totals.net_saving:,.4f}"
        + (" (estimated in part)" if totals.estimated else "")
    )
    return _PAGE.format(
        period=html.escape(period), headline=html.escape(headline), body="\n".join(sections)
    )


def _with_requests(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """Rows of prepared requests (not those holding only summarizer spend)."""
    return [row for row in rows if row.requests]


def _moment(moment: datetime | None, default: str) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else default


def _figure(title: str, name: str, svg: str) -> str:
    return f'<section><h2>{html.escape(title)}</h2><div data-chart="{name}">{svg}</div></section>'


def _scale(values: Sequence[float], low: float, high: float, size: float) -> list[float]:
    span = (high - low) or 1.0
    return [size - (v - low) / span * size for v in values]


def _line_chart(series: list[tuple[str, str, list[float]]]) -> str:
    values = [v for _name, _color, data in series for v in data]
    if not values:
        return _empty()
    low, high = min(0.0, *values), max(0.0, *values)
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    parts = [_axes(low, high)]
    for index, (name, color, data) in enumerate(series):
        step = inner_w / max(1, len(data) - 1)
        ys = _scale(data, low, high, inner_h)
        coords = " ".join(f"{PAD + i * step:.1f},{PAD + y:.1f}" for i, y in enumerate(ys))
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" '
            f'points="{coords}" data-series="{html.escape(name)}"/>'
        )
        parts.append(
            f'<text x="{PAD + 10 + 120 * index}" y="{PAD - 12}" fill="{color}">'
            f"{html.escape(name)}</text>"
        )
    return _svg(parts)


def _bar_chart(rows: Sequence[ReportRow]) -> str:
    if not rows:
        return _empty()
    high = max(max(r.baseline_tokens for r in rows), 1)
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    slot = inner_w / len(rows)
    bar = min(slot * 0.35, 60)
    parts = [_axes(0, high)]
    for index, row in enumerate(rows):
        x = PAD + index * slot + slot * 0.1
        for offset, value, color in (
            (0, row.baseline_tokens, BASELINE_COLOR),
            (bar, row.prompt_tokens, SENT_COLOR),
        ):
            h = value / high * inner_h
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{PAD + inner_h - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{html.escape(row.group)}: {value:,}</title></rect>"
            )
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD + 16}" font-size="10">'
            f"{html.escape(row.group[:14])}</text>"
        )
    parts.append(
        f'<text x="{PAD + 10}" y="{PAD - 12}" fill="{BASELINE_COLOR}">as given</text>'
        f'<text x="{PAD + 130}" y="{PAD - 12}" fill="{SENT_COLOR}">sent</text>'
    )
    return _svg(parts)


def _axes(low: float, high: float) -> str:
    bottom, right = HEIGHT - PAD, WIDTH - PAD
    return (
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{bottom}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>'
        f'<text x="4" y="{PAD + 4}" font-size="10">{_short(high)}</text>'
        f'<text x="4" y="{bottom}" font-size="10">{_short(low)}</text>'
    )


def _short(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:,.1f}k"
    return f"{value:,.4g}"


def _svg(parts: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">'
        + "".join(parts)
        + "</svg>"
    )


def _empty() -> str:
    return '<p class="empty">No requests in this period.</p>'


def _table(rows: Sequence[ReportRow]) -> str:
    columns = (
        "group",
        "requests",
        "baseline_tokens",
        "prompt_tokens",
        "saved_percent",
        "cached_tokens",
        "completion_tokens",
        "tpm_before",
        "tpm_after",
        "summarizer_tokens_in",
        "summarizer_tokens_out",
        "baseline_cost",
        "actual_cost",
        "summarizer_cost",
        "net_saving",
    )
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_cell(getattr(row, c)))}</td>" for c in columns)
        + "</tr>"
        for row in rows
    )
    return f"<section><h2>Figures by model</h2><table><tr>{head}</tr>{body}</table></section>"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>context-trimmer savings report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 960px; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }}
h2 {{ font-size: 16px; margin-top: 1.6em; }}
</style></head>
<body><h1>Token savings report</h1>
<p>{period}: {headline}</p>
{body}
</body></html>
"""
