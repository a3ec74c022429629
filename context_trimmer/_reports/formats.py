"""The savings report as a terminal table (rich) and in machine formats.

Machine formats use the field names of :class:`ReportRow`, stable across versions:
``json`` is one object (``rows`` and ``totals``); ``jsonl`` is one row per line, the
totals last (``group`` = ``"TOTAL"``); ``csv`` has a header and the same rows.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime

from .report import FIELDS, Report, ReportRow

FORMATS = ("table", "json", "jsonl", "csv")


def render(report: Report, fmt: str, *, width: int | None = None) -> str:
    """``report`` in ``fmt``; a ``table`` keeps to ``width`` columns (a terminal's), its
    least needed columns left out when they would not fit (None: every column)."""
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2)
    if fmt == "jsonl":
        return "\n".join(json.dumps(row.as_dict()) for row in _all_rows(report))
    if fmt == "csv":
        return _csv(report)
    return _table(report, width)


def _all_rows(report: Report) -> list[ReportRow]:
    return [*report.rows, report.totals]


def _csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in _all_rows(report):
        writer.writerow(row.as_dict())
    return buffer.getvalue().rstrip("\n")


_COLUMNS = (
    ("requests", "Requests", "{:,}"),
    ("baseline_tokens", "Baseline", "{:,}"),
    ("over_window_requests", "Over window", "{:,}"),
    ("prompt_tokens", "Sent", "{:,}"),
    ("saved_percent", "Saved", "{:.1f}%"),
    ("cached_tokens", "Cached", "{:,}"),
    ("tpm_before", "TPM before", "{:,}"),
    ("tpm_after", "TPM after", "{:,}"),
    ("summarizer_tokens_in", "Summ. in", "{:,}"),
    ("baseline_cost", "Cost before", "${:,.4f}"),
    ("baseline_cost_cached", "Before, cached", "${:,.4f}"),
    ("actual_cost", "Cost after", "${:,.4f}"),
    ("net_saving", "Net saved", "${:,.4f}"),
    ("net_saving_uncached", "vs uncached", "${:,.4f}"),
)


_PRIORITY = (
    "requests",
    "saved_percent",
    "baseline_tokens",
    "prompt_tokens",
    "net_saving",
    "baseline_cost_cached",
    "actual_cost",
    "tpm_before",
    "tpm_after",
    "cached_tokens",
    "summarizer_tokens_in",
    "baseline_cost",
    "net_saving_uncached",
    "over_window_requests",
)
"""The table's columns, most needed first: the first to go on a narrow terminal are last."""
_GROUP_WIDTH = 24  # a longer group name (a conversation id) is folded onto more lines


def _table(report: Report, width: int | None) -> str:
    from rich.console import Console  # rich loads only for the terminal table
    from rich.table import Table

    title = "Token savings"
    if report.since or report.until:
        title += f" ({_moment(report.since, 'the start')} to {_moment(report.until, 'now')})"
    rows = [*(report.rows if report.group_by else []), report.totals]
    cells = [_cells(row) for row in rows]
    columns, hidden = _fitting(cells, width)
    table = Table(title=title, show_footer=False)
    table.add_column((report.group_by or "").capitalize() or "All", max_width=_GROUP_WIDTH)
    for index in columns:
        table.add_column(_COLUMNS[index][1], justify="right", no_wrap=True)
    for number, row in enumerate(cells):
        last = number == len(cells) - 1
        table.add_row(
            row[0], *(row[1 + i] for i in columns), style="bold" if last else None, end_section=last
        )
    output = io.StringIO()
    console = Console(file=output, width=width or 400, color_system=None)
    console.print(table, width=width or _needed(cells, range(len(_COLUMNS))))
    if hidden:
        names = ", ".join(_COLUMNS[i][1] for i in hidden)
        console.print(
            f"{len(hidden)} column(s) left out to fit {width} characters ({names}): "
            "widen the terminal, or use --format json or csv."
        )
    if report.totals.estimated:
        console.print(
            f"* {report.totals.estimated_requests} request(s) without recorded usage: "
            "their costs are estimated from the prepared token counts."
        )
    totals = report.totals
    if totals.over_window_requests:
        console.print(
            f"{totals.over_window_requests:,} request(s) were over their model's context "
            "window less the reply: the baseline counts each at that limit (an app without "
            f"the trimmer must cut to it); as given: {totals.baseline_tokens_as_given:,} tokens."
        )
    console.print(
        "Baseline: the app's messages as given, cut to the model's context window less the "
        "reply. Net saved is against the baseline as OpenAI bills it with prompt caching "
        "(Before, cached); vs uncached: against the full price of every prompt token."
    )
    return output.getvalue().rstrip()


def _fitting(cells: list[list[str]], width: int | None) -> tuple[list[int], list[int]]:
    """The indexes (into ``_COLUMNS``) of the columns that fit in ``width``, in table
    order, and of those left out."""
    order = [next(i for i, c in enumerate(_COLUMNS) if c[0] == name) for name in _PRIORITY]
    kept: list[int] = []
    for index in order:
        if width is None or _needed(cells, [*kept, index]) <= width:
            kept.append(index)
    return sorted(kept), [i for i in order if i not in kept]


def _needed(cells: list[list[str]], columns: Sequence[int]) -> int:
    """Characters a table of the group column and ``columns`` takes (borders, padding)."""
    group = min(_GROUP_WIDTH, max(len(row[0]) for row in cells))
    widths = [max(max(len(row[1 + i]) for row in cells), len(_COLUMNS[i][1])) for i in columns]
    return group + sum(widths) + 3 * (len(widths) + 1) + 1


def _moment(moment: datetime | None, default: str) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else default


def _cells(row: ReportRow) -> list[str]:
    mark = "*" if row.estimated else ""
    return [row.group + mark] + [_cell(getattr(row, name), fmt) for name, _l, fmt in _COLUMNS]


def _cell(value: float, fmt: str) -> str:
    if fmt.startswith("$") and value < 0:
        return "-" + fmt.format(-value)  # -$0.0019, not $-0.0019
    return fmt.format(value)
