"""The savings report: every figure checked against a hand-computed ledger."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, update

from context_trimmer import ConfigurationError, Report, Trimmer
from context_trimmer._reports.formats import render
from context_trimmer._store.history import COUNTS, MESSAGES
from context_trimmer._store.ledger import REQUESTS, Ledger
from context_trimmer._store.migrate import downgrade, upgrade
from context_trimmer._store.prompt_cache import (
    Cached,
    CacheRequest,
    PathTree,
    _shared_baseline,
    _shared_sent,
    cacheable,
    simulate,
)
from context_trimmer._store.summaries import Summaries
from context_trimmer.cli import main

REQUIRE_CHROMIUM_ENV = "CONTEXT_TRIMMER_REQUIRE_CHROMIUM"


def request_row(**values: Any) -> dict[str, Any]:
    row = {
        "conversation_id": "c1",
        "user": "ann",
        "model": "gpt-4o",
        "head_hash": "f" * 64,
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
    assert (totals.saved_tokens, totals.saved_percent) == (11_000, 78.5714)
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
    failure = {"anchor_hash": "a" * 64, "covers_hash": "c" * 64, "conversation_id": "c1"}
    Summaries(ledger._db).add_failure(
        {**failure, "user": "ann", "summarizer": "openai:gpt-4.1-mini", "error": "x"}
        | {"tokens_in": 10, "tokens_out": 0}
    )
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
    assert dom.index('class="headline"') < dom.index("data-chart=")  # figures first
    headline = dom.split('class="headline"', 1)[1].split("</section>", 1)[0]
    for label in ("Prompt tokens saved", "cached pricing", "full-price", "TPM headroom"):
        assert label in headline
    assert "11,000" in headline and "Summaries" in headline
    for chart in ("tokens-over-time", "net-dollars", "tpm", "by-model", "by-conversation"):
        section = dom.split(f'data-chart="{chart}"', 1)[1].split("</section>", 1)[0]
        assert "<svg" in section and ("<polyline" in section or "<rect" in section), chart
        assert "<title>" in section, chart  # values on hover
    tokens = dom.split('data-chart="tokens-over-time"', 1)[1].split("</section>", 1)[0]
    assert "prompt tokens" in tokens and "requests in time order (UTC)" in tokens
    assert datetime.now(timezone.utc).strftime("%Y-%m-%d") in tokens  # dated x axis
    costs = dom.split('data-chart="net-dollars"', 1)[1].split("</section>", 1)[0]
    assert "no cache" in costs and "OpenAI's cache" in costs  # both baselines drawn
    by_model = dom.split('data-chart="by-model"', 1)[1].split("</section>", 1)[0]
    assert "gpt-4o-mini, as given" in by_model
    assert "gpt-4.1-mini" not in by_model  # summarizer spend only, no requests: no bar
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


KEY = "o200k_base/85/170"  # gpt-4o's counting key
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def _node(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()  # hash columns hold real digests


def _tree(trimmer: Trimmer, nodes: list[tuple[str, str | None, int]]) -> None:
    """Messages ``(name, parent, running path total)``; depth follows the parents."""
    depth: dict[str | None, int] = {None: -1}
    with trimmer._db.engine.begin() as connection:
        for name, parent, path_tokens in nodes:
            depth[name] = depth[parent] + 1
            connection.execute(
                insert(MESSAGES).values(
                    hash=_node(name),
                    parent_hash=parent and _node(parent),
                    depth=depth[name],
                    role="user",
                    body="{}",
                    created_at=T0,
                )
            )
            connection.execute(
                insert(COUNTS).values(
                    message_hash=_node(name), counting_key=KEY, tokens=1, path_tokens=path_tokens
                )
            )


def _requests(trimmer: Trimmer, rows: list[tuple[str, int, str, int, int]]) -> None:
    """Requests ``(conversation, seconds after T0, head, baseline, prompt)``, no usage."""
    store = Ledger(trimmer._db)
    with trimmer._db.engine.begin() as connection:
        for conversation, seconds, head, baseline, prompt in rows:
            request_id = store.add_request(
                connection,
                request_row(
                    conversation_id=conversation,
                    head_hash=_node(head),
                    baseline_tokens=baseline,
                    prompt_tokens=prompt,
                ),
            )
            connection.execute(
                update(REQUESTS)
                .where(REQUESTS.c.id == request_id)
                .values(created_at=T0 + timedelta(seconds=seconds))
            )


def test_cached_baseline_on_a_hand_computed_ledger(db_url: str) -> None:
    with Trimmer(db_url, summarizer="extractive", background=False) as trimmer:
        _hand_ledger(trimmer)
        totals = trimmer.report().totals
        rows = {row.group: row for row in trimmer.report(group_by="conversation").rows}
        longer = trimmer.report(cache_lifetime=600).totals
    assert totals.baseline_cached_tokens == 1_920 + 1_920
    assert (rows["c1"].baseline_cached_tokens, rows["c2"].baseline_cached_tokens) == (3_840, 0)
    assert rows["c3"].baseline_cached_tokens == 0
    # gpt-4o: $2.50 per 1M input, $1.25 cached.
    assert totals.baseline_cost == pytest.approx(totals.baseline_tokens * 2.50 / 1e6, abs=2e-6)
    assert totals.baseline_cost_cached == pytest.approx(
        (totals.baseline_tokens - 3_840) * 2.50 / 1e6 + 3_840 * 1.25 / 1e6, abs=2e-6
    )
    assert totals.actual_cost == pytest.approx(
        (totals.prompt_tokens - 1_792) * 2.50 / 1e6 + 1_792 * 1.25 / 1e6, abs=2e-6
    )
    assert totals.net_saving == pytest.approx(
        totals.baseline_cost_cached - totals.actual_cost, abs=2e-6
    )
    assert totals.net_saving_uncached == pytest.approx(
        totals.baseline_cost - totals.actual_cost, abs=2e-6
    )
    # With a 10-minute lifetime the branch at 361 s still finds m2 (1,920), and the
    # request at 400 s finds all of m4 (2,500 -> 1,024 + 11 x 128 = 2,432) from 60 s.
    assert longer.baseline_cached_tokens == 1_920 + 1_920 + 2_432


def test_cache_steps() -> None:
    assert [cacheable(n) for n in (0, 1_023, 1_024, 1_151, 1_152, 1_300)] == [
        0,
        0,
        1_024,
        1_024,
        1_152,
        1_280,
    ]


def test_replay_of_a_long_system_prompt_reports_a_cached_baseline(tmp_path: Path) -> None:
    system = "You are the support agent of Crumb. " + " ".join(
        f"Rule {n}: answer politely and cite the policy section {n}." for n in range(120)
    )
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for turn in range(8):
        messages += [
            {"role": "user", "content": f"Question {turn} about my order?"},
            {"role": "assistant", "content": f"Answer {turn}: it ships soon."},
        ]
    log = tmp_path / "chat.jsonl"
    log.write_text(json.dumps({"messages": messages, "user": "ann"}) + "\n")
    result = CliRunner().invoke(main, ["replay", str(log), "--keep-last", "4", "--json"])
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)["report"]["totals"]
    assert 0 < totals["baseline_cost_cached"] < totals["baseline_cost"]
    assert totals["net_saving"] < totals["net_saving_uncached"]


def test_replay_uses_a_fresh_database_each_run(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "support-chat.jsonl"
    runs = [CliRunner().invoke(main, ["replay", str(example), "--json"]) for _ in range(2)]
    assert all(run.exit_code == 0 for run in runs), runs[0].output
    first, second = (json.loads(run.stdout) for run in runs)
    assert first["replay"] == second["replay"] and first["replay"]["summaries"] > 0
    assert not (tmp_path / "xdg").exists()  # the user's own history was not touched


def test_a_negative_saving_reads_as_one(ledger: Trimmer) -> None:
    report = ledger.report()
    report.totals.net_saving = -0.0019
    assert "-$0.0019" in render(report, "table") and "$-" not in render(report, "table")


def test_the_pruned_cache_search_equals_trying_every_earlier_request() -> None:
    rng = random.Random(7)
    for _trial in range(30):
        nodes: dict[str, tuple[str | None, int]] = {"n0": (None, 0)}
        totals = {("n0", KEY): rng.randint(100, 900)}
        for number in range(1, 60):
            parent = f"n{rng.randrange(number)}"
            nodes[f"n{number}"] = (parent, nodes[parent][1] + 1)
            totals[(f"n{number}", KEY)] = totals[(parent, KEY)] + rng.randint(10, 300)
        tree = PathTree(nodes, totals)
        requests = []
        for number in range(25):
            head = f"n{rng.randrange(60)}"
            summary = rng.choice([None, 1, 2])
            requests.append(
                CacheRequest(
                    number,
                    T0 + timedelta(seconds=40 * number + rng.randint(0, 30)),
                    rng.choice(["a", "b"]),
                    "gpt-4o",
                    KEY,
                    head,
                    totals[(head, KEY)] + 3,
                    totals[(head, KEY)] // 2 + 3,
                    summary,
                    "n0" if summary else None,
                    50 if summary else 0,
                )
            )
        brute = {}
        for r in requests:
            window = [
                q
                for q in requests
                if (q.created_at, q.id) < (r.created_at, r.id)
                and q.conversation_id == r.conversation_id
                and (r.created_at - q.created_at).total_seconds() <= 300
            ]
            brute[r.id] = Cached(
                cacheable(max((_shared_baseline(q, r, tree) for q in window), default=0)),
                cacheable(max((_shared_sent(q, r, tree) for q in window), default=0)),
            )
        assert simulate(requests, tree) == brute


def test_html_report_of_an_empty_period_says_so(ledger: Trimmer, tmp_path: Path) -> None:
    """Right after the main job (whose replay used a throwaway database), or for a period
    with nothing in it, the HTML report is a page saying so: exit 0, no IndexError."""
    url = ledger._db.url
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    Trimmer(empty, summarizer="extractive").close()
    for args in (["--db", empty], ["--db", url, "--since", "2030-01-01"]):
        page = tmp_path / "report.html"
        result = CliRunner().invoke(main, ["report", *args, "--html", str(page)])
        assert result.exit_code == 0, result.output
        assert "No requests in this period" in page.read_text()


def test_round_ticks() -> None:
    from context_trimmer._reports.html import nice_ticks

    cases = [(0, 17_859), (0, 0.0229), (0, 1), (-0.3, 2.7), (0, 378_307), (5, 5)]
    for low, high in cases:
        ticks = nice_ticks(low, high)
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert round(mantissa, 6) in (1, 2, 2.5, 5), (low, high, ticks)
        assert ticks[0] <= low and ticks[-1] >= high and len(ticks) <= 7, ticks
        assert all(round(t / step, 6) == round(t / step) for t in ticks), ticks
    assert nice_ticks(0, 17_859) == [0, 5_000, 10_000, 15_000, 20_000]


def test_back_to_back_requests_get_distinct_tick_labels(db_url: str) -> None:
    """Requests sent within one second read as request numbers, not one timestamp
    repeated; the table's percent and dollars are formatted."""
    from context_trimmer._reports.html import render_html

    with Trimmer(db_url, summarizer="extractive", background=False) as trimmer:
        messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
        for turn in range(12):
            messages.append({"role": "user", "content": f"Question {turn} about Lisbon."})
            trimmer.prepare(messages, model="gpt-4o")
            messages.append({"role": "assistant", "content": f"Answer {turn}."})
        page = render_html(
            trimmer.report(), trimmer.report(group_by="model"), trimmer.report(group_by="day")
        )
    chart = page.split('data-chart="tokens-over-time"', 1)[1].split("</section>", 1)[0]
    axis = [
        label.split("</text>", 1)[0]
        for label in chart.split('font-size="10">')[1:]
        if "</text>" in label
    ]
    x_labels = [label for label in axis if label.startswith("#")]
    assert len(x_labels) >= 3 and len(set(x_labels)) == len(x_labels), axis
    table = page.split("<table>", 1)[1]
    assert "%</td>" in table and "<td>$" in table
    assert not any(len(cell.split(".")[-1]) == 4 for cell in table.split("%</td>")[:-1])


def test_the_terminal_table_fits_the_terminal(ledger: Trimmer) -> None:
    """On an 80-column terminal the table keeps its most needed columns and says which it
    left out; written to a file it keeps them all."""
    for columns in ("80", "120"):
        result = CliRunner(env={"COLUMNS": columns}).invoke(
            main, ["report", "--db", ledger._db.url, "--group-by", "model"]
        )
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= int(columns), result.output
        table = "\n".join(lines)
        for needed in ("Requests", "Saved", "gpt-4o-mini", "TOTAL"):
            assert needed in table, table
        assert "left out to fit" in table
    full = render(ledger.report(group_by="model"), "table")
    assert "Net saved" in full and "vs uncached" in full and "left out" not in full


def test_the_readme_picture_is_made_by_its_script(tmp_path: Path) -> None:
    """scripts/report-picture runs the main job and screenshots its HTML report, so the
    README's picture can be re-made, not kept by hand."""
    _chromium()
    shot = tmp_path / "report.png"
    script = Path(__file__).resolve().parents[1] / "scripts" / "report-picture"
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(
        ["bash", str(script), str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VENV": str(venv)},
    )
    assert result.returncode == 0, result.stderr
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1500)
    pixels = {color for _count, color in image.getcolors(maxcolors=1 << 24) or []}
    for color in ((0xD9, 0x53, 0x4F), (0x2E, 0x7D, 0x32), (0x15, 0x65, 0xC0)):
        assert color in pixels


def _hand_ledger(trimmer: Trimmer) -> None:
    """The tree and requests of test_cached_baseline_on_a_hand_computed_ledger."""
    # m0 -> m1 -> m2 -> m3 -> m4, and a branch m2 -> b3; n0 -> n1 under 1,024.
    _tree(
        trimmer,
        [
            ("m0", None, 1_500),
            ("m1", "m0", 1_600),
            ("m2", "m1", 2_000),
            ("m3", "m2", 2_100),
            ("m4", "m3", 2_500),
            ("b3", "m2", 2_200),
            ("n0", None, 900),
            ("n1", "n0", 1_000),
        ],
    )
    _requests(
        trimmer,
        [
            ("c1", 0, "m2", 2_003, 500),  # nothing earlier: 0
            # Shares m2 (2,000) with the first: 1,024 + 7 x 128 = 1,920 cached. Its
            # sent prompt (2,400 + 3) shares all but m3..m4 (500): 1,900 -> 1,792.
            ("c1", 60, "m4", 2_503, 2_403),
            ("c1", 361, "b3", 2_203, 500),  # 301 s after the last use: expired, 0
            ("c1", 400, "m4", 2_503, 500),  # shares m2 with b3 (39 s earlier): 1,920
            ("c3", 401, "m4", 2_503, 500),  # same prefix, other conversation: 0
            ("c2", 0, "n0", 903, 500),
            ("c2", 10, "n1", 1_003, 500),  # shares 900 < 1,024: 0
        ],
    )


def _stored_figures(trimmer: Trimmer) -> list[tuple[int | None, int | None]]:
    c = REQUESTS.c
    with trimmer._db.engine.connect() as connection:
        rows = connection.execute(
            select(c.cache_baseline_tokens, c.cache_sent_tokens).order_by(c.id)
        ).all()
    return [(row[0], row[1]) for row in rows]


def test_cache_figures_are_stored_once_and_old_ledgers_report_the_same(db_url: str) -> None:
    with Trimmer(db_url, summarizer="extractive", background=False) as trimmer:
        _hand_ledger(trimmer)
        assert _stored_figures(trimmer) == [(None, None)] * 7  # as after migration 0011
        first = trimmer.report(group_by="conversation")
        stored = _stored_figures(trimmer)
        assert [baseline for baseline, _sent in stored] == [0, 1_920, 0, 1_920, 0, 0, 0]
        assert stored[1][1] == 1_792
        # Later reports sum the stored columns and agree; another lifetime is computed
        # in memory and leaves them alone.
        assert trimmer.report(group_by="conversation") == first
        assert trimmer.report(cache_lifetime=600).totals.baseline_cached_tokens == 6_272
        assert _stored_figures(trimmer) == stored
        # A ledger from before the columns (downgraded and upgraded again) reports the same.
        downgrade(trimmer._db.engine, "0009")
        upgrade(trimmer._db.engine, "head")
        assert _stored_figures(trimmer) == [(None, None)] * 7
        assert trimmer.report(group_by="conversation") == first
        assert _stored_figures(trimmer) == stored
        assert [p.baseline_cached_tokens for p in trimmer.report().requests] == [
            0,
            1_920,
            0,
            1_920,
            0,
            0,
            0,
        ]


def test_requests_of_the_last_minute_are_counted_but_not_stored(db_url: str) -> None:
    with Trimmer(db_url, summarizer="extractive", background=False) as trimmer:
        _tree(trimmer, [("m0", None, 1_500), ("m1", "m0", 2_000)])
        store = Ledger(trimmer._db)
        with trimmer._db.engine.begin() as connection:
            for head, baseline in (("m0", 1_503), ("m1", 2_003)):
                store.add_request(
                    connection,
                    request_row(head_hash=_node(head), baseline_tokens=baseline, prompt_tokens=9),
                )
        # 1,500 shared with the request just before: 1,024 + 3 x 128 = 1,408.
        assert trimmer.report().totals.baseline_cached_tokens == 1_408
        assert _stored_figures(trimmer) == [(None, None)] * 2  # an earlier one may still commit


def test_the_baseline_is_cut_to_the_context_window_less_the_reply(ledger: Trimmer) -> None:
    store = Ledger(ledger._db)
    with ledger._db.engine.begin() as connection:
        # gpt-4o: 128,000 tokens; less 16,384 reserved: 111,616. Less 1,000: 127,000.
        for baseline, reply in ((200_000, 16_384), (130_000, 1_000), (100_000, 16_384)):
            store.add_request(
                connection,
                request_row(
                    conversation_id="long",
                    baseline_tokens=baseline,
                    prompt_tokens=2_000,
                    max_tokens_baseline=reply,
                ),
            )
    report = ledger.report(group_by="conversation")
    long = {row.group: row for row in report.rows}["long"]
    assert long.baseline_tokens == 111_616 + 127_000 + 100_000
    assert (long.baseline_tokens_as_given, long.over_window_requests) == (430_000, 2)
    assert long.tpm_before == 128_000 + 128_000 + 116_384
    assert long.baseline_cost == pytest.approx(long.baseline_tokens * 2.50 / 1e6)
    assert report.totals.over_window_requests == 2
    assert max(point.baseline_tokens for point in report.requests) == 127_000
    assert json.loads(render(report, "json"))["totals"]["over_window_requests"] == 2
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert rows[-1]["over_window_requests"] == "2"
    assert rows[-1]["baseline_tokens_as_given"] == str(14_000 + 430_000)
    table = render(report, "table")
    assert "Over window" in table and "2 request(s) were over" in table


def test_replaying_440k_tokens_never_counts_a_baseline_over_the_window(tmp_path: Path) -> None:
    rng = random.Random(5)
    words = "flight hotel Lisbon budget Maria invoice Tuesday refund euros booking".split()
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You help with travel."}]
    for turn in range(800):
        for role in ("user", "assistant"):
            text = " ".join(rng.choice(words) for _ in range(260)) + f" ({turn})"
            messages.append({"role": role, "content": text})
    log = tmp_path / "long.jsonl"
    log.write_text(json.dumps({"messages": messages}) + "\n")
    result = CliRunner().invoke(
        main, ["replay", str(log), "--json", "--db", f"sqlite:///{tmp_path / 'r.db'}"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["replay"]["baseline_tokens_as_given"] > out["replay"]["baseline_tokens"]
    assert out["replay"]["over_window_requests"] > 0
    assert out["report"]["totals"]["over_window_requests"] == out["replay"]["over_window_requests"]
    with Trimmer(f"sqlite:///{tmp_path / 'r.db'}", background=False) as trimmer:
        points = trimmer.report().requests
        assert max(p.baseline_tokens for p in points) <= 128_000 - 16_384
        given = Ledger(trimmer._db).rows(None, None)
        assert 420_000 < max(row.baseline_tokens for row in given) < 480_000
