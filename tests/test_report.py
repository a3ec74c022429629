"""The savings report: every figure checked against a hand-computed ledger."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from context_trimmer import ConfigurationError, Report, Trimmer
from context_trimmer._ledger import REQUESTS, Ledger
from context_trimmer._report_formats import render
from context_trimmer._summary_store import Summaries
from context_trimmer.cli import main

REQUIRE_CHROMIUM_ENV = "CONTEXT_TRIMMER_REQUIRE_CHROMIUM"


def request_row(**values: Any) -> dict[str, Any]:
    row = {
        "conversation_id": "c1",
        "user": "ann",
        "model": "gpt-4o",
        "head_hash": "h" * 64,
        "message_count": 10,
        "messages_sent": 4,
        "baseline_tokens": 0,
        "prompt_tokens": 0,
        "summary_id": None,
        "summary_tokens": 0,
        "max_tokens_requested": None,
        "max_tokens_baseline": 16_384,
        "max_tokens": 1024,
        "summarizer_tokens_in": 0,
        "summarizer_tokens_out": 0,
        "folded_synchronously": False,
        "summary_failures": 0,
    }
    return {**row, **values}


@pytest.fixture
def ledger(db_url: str) -> Iterator[Trimmer]:
    """Request A (gpt-4o, usage with cached tokens), request B (gpt-4o-mini, no usage),
    one gpt-4o-mini summary and one failed summary attempt."""
    trimmer = Trimmer(db_url, summarizer="extractive", background=False)
    store = Ledger(trimmer._db)
    with trimmer._db.engine.begin() as connection:
        a = store.add_request(connection, request_row(baseline_tokens=10_000, prompt_tokens=2_000))
        store.add_request(
            connection,
            request_row(
                conversation_id="c2",
                user="bob",
                model="gpt-4o-mini",
                baseline_tokens=4_000,
                prompt_tokens=1_000,
            ),
        )
    store.add_usage(
        {
            "request_id": a,
            "model": "gpt-4o-2024-08-06",
            "prompt_tokens": 2_000,
            "cached_tokens": 1_024,
            "completion_tokens": 500,
            "estimated": False,
        }
    )
    owner = {
        "anchor_hash": "a" * 64,
        "covers_hash": "b" * 64,
        "conversation_id": "c1",
        "user": "ann",
        "summarizer": "openai:gpt-4o-mini",
    }
    Summaries(trimmer._db).add(
        {
            **owner,
            "covers_depth": 5,
            "parent_id": None,
            "text": "s",
            "prompt_version": "1",
            "messages_folded": 5,
            "tokens_in": 3_000,
            "tokens_out": 200,
        }
    )
    Summaries(trimmer._db).add_failure(
        {**owner, "error": "boom", "tokens_in": 1_000, "tokens_out": 0}
    )
    yield trimmer
    trimmer.close()


def test_totals_match_the_hand_computed_ledger(ledger: Trimmer) -> None:
    totals = ledger.report().totals
    assert (totals.requests, totals.baseline_tokens, totals.prompt_tokens) == (2, 14_000, 3_000)
    assert (totals.saved_tokens, totals.saved_percent) == (11_000, 78.57)
    assert (totals.usage_prompt_tokens, totals.cached_tokens, totals.completion_tokens) == (
        3_000,
        1_024,
        500,
    )
    assert (totals.max_tokens_before, totals.max_tokens_after) == (32_768, 2_048)
    assert (totals.tpm_before, totals.tpm_after) == (46_768, 5_048)
    assert (totals.summaries, totals.summary_failures) == (1, 1)
    assert (totals.summarizer_tokens_in, totals.summarizer_tokens_out) == (4_000, 200)
    # A: 10,000 x $2.50 + 500 x $10.00 = $0.030 before; after: 976 x $2.50 + 1,024 x $1.25
    # (cached) + 500 x $10.00 = $0.00872. B: 4,000 vs 1,000 x $0.15 = $0.0006 vs $0.00015.
    assert totals.baseline_cost == pytest.approx(0.030 + 0.0006)
    assert totals.actual_cost == pytest.approx(0.00872 + 0.00015)
    # Summaries: 3,000 x $0.15 + 200 x $0.60 = $0.00057; the failure 1,000 x $0.15.
    assert totals.summarizer_cost == pytest.approx(0.00057 + 0.00015)
    assert totals.net_saving == pytest.approx(0.0306 - 0.00887 - 0.00072)
    assert (totals.estimated_requests, totals.estimated, totals.unpriced_requests) == (1, True, 0)


def test_grouping(ledger: Trimmer) -> None:
    by_user = {row.group: row for row in ledger.report(group_by="user").rows}
    assert by_user["ann"].requests == 1 and by_user["ann"].summaries == 1
    assert by_user["bob"].baseline_tokens == 4_000 and not by_user["bob"].summaries
    by_model = {row.group: row for row in ledger.report(group_by="model").rows}
    assert by_model["gpt-4o"].estimated is False
    assert by_model["gpt-4o-mini"].summarizer_cost == pytest.approx(0.00072)
    by_conversation = ledger.report(group_by="conversation").rows
    assert [row.group for row in by_conversation] == ["c1", "c2"]


def test_days_and_periods(ledger: Trimmer) -> None:
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    with ledger._db.engine.begin() as connection:
        connection.execute(
            update(REQUESTS).where(REQUESTS.c.model == "gpt-4o-mini").values(created_at=yesterday)
        )
    days = ledger.report(group_by="day").rows
    assert [row.requests for row in days] == [1, 1]
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    assert ledger.report(since=today).totals.requests == 1
    assert ledger.report(until=today).totals.requests == 1


def test_unknown_group_is_a_clear_error(ledger: Trimmer) -> None:
    with pytest.raises(ConfigurationError, match="group_by must be one of day, model"):
        ledger.report(group_by="week")  # type: ignore[arg-type]


def test_formats_round_trip(ledger: Trimmer) -> None:
    report = ledger.report(group_by="user")
    expected = [*(row.as_dict() for row in report.rows), report.totals.as_dict()]
    assert json.loads(render(report, "json")) == report.as_dict()
    assert [json.loads(line) for line in render(report, "jsonl").splitlines()] == expected
    parsed = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert [row["group"] for row in parsed] == ["ann", "bob", "TOTAL"]
    assert {k: str(v) for k, v in expected[-1].items()} == parsed[-1]
    table = render(report, "table")
    assert "TOTAL" in table and "78.6%" in table and "without recorded usage" in table


def test_cli_report_writes_files(ledger: Trimmer, tmp_path: Path) -> None:
    url = ledger._db.url
    out = tmp_path / "report.csv"
    result = CliRunner().invoke(
        main, ["report", "--db", url, "--group-by", "model", "--format", "csv", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"wrote {out}" in result.stderr
    assert out.read_text().splitlines()[0].startswith("group,requests,baseline_tokens")
    as_json = CliRunner().invoke(main, ["report", "--db", url, "--json"])
    assert json.loads(as_json.stdout)["totals"]["requests"] == 2


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        import os

        if os.environ.get(REQUIRE_CHROMIUM_ENV) == "1":
            pytest.fail("headless Chromium is required (apt-get install chromium)")
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    return found


def test_html_report_renders_its_charts_in_headless_chromium(
    ledger: Trimmer, tmp_path: Path
) -> None:
    browser = _chromium()
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--db", ledger._db.url, "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "http" not in page.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
    flags = [
        str(browser),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for chart in ("tokens-over-time", "net-dollars", "by-model", "by-conversation"):
        section = dom.split(f'data-chart="{chart}"', 1)[1].split("</section>", 1)[0]
        assert "<svg" in section and ("<polyline" in section or "<rect" in section), chart
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 24) or []
    pixels = {color for _count, color in colors}
    for color in ((0xD9, 0x53, 0x4F), (0x2E, 0x7D, 0x32), (0x15, 0x65, 0xC0)):
        assert color in pixels  # as given, sent and net-saving series were drawn


def test_the_timeline_adds_up_to_the_net_saving(ledger: Trimmer) -> None:
    report = ledger.report()
    assert isinstance(report, Report)
    assert [point.id for point in report.requests] == [1, 2]
    moments = [moment for moment, _amount in report.timeline()]
    assert moments == sorted(moments)
    amounts = sorted(amount for _moment, amount in report.timeline())
    # Two summarizer charges (the summary, the failed attempt), then the two requests'
    # savings: B's $0.00045 and A's $0.030 - $0.00872 = $0.02128.
    assert amounts == pytest.approx([-0.00057, -0.00015, 0.00045, 0.02128])
    assert sum(amounts) == pytest.approx(report.totals.net_saving)
