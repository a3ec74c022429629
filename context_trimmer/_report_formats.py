"""The savings report as a terminal table (rich) and in machine formats.

Machine formats use the field names of :class:`ReportRow`, stable across versions:
``json`` is one object (``rows`` and ``totals``); ``jsonl`` is one row per line, the
totals last (``group`` = ``"TOTAL"``); ``csv`` has a header and the same rows.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

from ._report import FIELDS, Report, ReportRow

FORMATS = ("table", "json", "jsonl", "csv")


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2)
    if fmt == "jsonl":
        return "\n".join(json.dumps(row.as_dict()) for row in _all_rows(report))
    if fmt == "csv":
        return _csv(report)
    return _table(report)


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
    ("prompt_tokens", "Tokens sent", "{:,}"),
    ("saved_percent", "Saved", "{:.1f}%"),
    ("cached_tokens", "Cached", "{:,}"),
    ("tpm_before", "TPM before", "{:,}"),
    ("tpm_after", "TPM after", "{:,}"),
    ("summarizer_tokens_in", "Summ. in", "{:,}"),
    ("baseline_cost", "Cost before", "${:,.4f}"),
    ("baseline_cost_cached", "before, cached", "${:,.4f}"),
    ("actual_cost", "Cost after", "${:,.4f}"),
    ("net_saving", "Net saved", "${:,.4f}"),
    ("net_saving_uncached", "vs uncached", "${:,.4f}"),
)


def _table(report: Report) -> str:
    from rich.console import Console  # rich loads only for the terminal table
    from rich.table import Table

    title = "Token savings"
    if report.since or report.until:
        title += f" ({_moment(report.since, 'the start')} to {_moment(report.until, 'now')})"
    table = Table(title=title, show_footer=False)
    table.add_column((report.group_by or "").capitalize() or "All")
    for _name, label, _fmt in _COLUMNS:
        table.add_column(label, justify="right")
    rows = report.rows if report.group_by else []
    for row in rows:
        table.add_row(*_cells(row))
    table.add_row(*_cells(report.totals), style="bold", end_section=True)
    output = io.StringIO()
    console = Console(file=output, width=200, color_system=None)
    console.print(table)
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
        "(before, cached); vs uncached: against the full price of every prompt token."
    )
    return output.getvalue().rstrip()


def _moment(moment: datetime | None, default: str) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else default


def _cells(row: ReportRow) -> list[str]:
    mark = "*" if row.estimated else ""
    return [row.group + mark] + [_cell(getattr(row, name), fmt) for name, _l, fmt in _COLUMNS]


def _cell(value: float, fmt: str) -> str:
    if fmt.startswith("$") and value < 0:
        return "-" + fmt.format(-value)  # -$0.0019, not $-0.0019
    return fmt.format(value)
