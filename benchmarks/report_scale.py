"""`context-trimmer report` on a large ledger: wall, CPU and peak RSS per process.

A ledger is built in bulk (no model, no prepare() per request): ``--conversations``
chats of ``--turns`` requests each, every request one user and one assistant message
longer than the one before, 40 s apart, the chats spread over a week; each request has
usage reported for about 90% of them (the rest estimated), an attempt row, and every
third conversation a summary. A few conversations (``--long``) grow past gpt-4o's
128k window, so the honest baseline and its over-window count are exercised too.

Then ``context-trimmer report`` (table) runs in ``--runs`` fresh processes each on:

- ``empty``: a store with no requests (import, start-up, migrations check);
- ``first``: a copy of the ledger as built, whose requests have no stored cache figures
  yet (the first report after an upgrade computes and stores them once);
- ``steady``: the same ledger once reported: every later report.

Printed: the median (and each run) of wall seconds, CPU seconds (user + system of the
report process) and peak RSS; then the difference steady - empty, the figure the
target is about (at most 1.0 s and 150 MB at ~20,000 requests).

    python benchmarks/report_scale.py [--conversations 4000] [--turns 5] [--runs 3]
        [--postgres postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from context_trimmer import Trimmer
from context_trimmer._models import ModelTable
from context_trimmer._store.history import COUNTS, MESSAGES
from context_trimmer._store.ledger import ATTEMPTS, REQUESTS, USAGE
from context_trimmer._store.summaries import SUMMARIES

MODEL = "gpt-4o-mini"
START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def build(url: str, conversations: int, turns: int, long: int, seed: int = 7) -> int:
    """Create the store and fill its ledger; returns the number of requests."""
    Trimmer(url, summarizer="extractive", background=False).close()
    key = ModelTable().get(MODEL).counting_key
    rng = random.Random(seed)
    engine = create_engine(url)
    request_id = 0
    with engine.begin() as connection:
        for c in range(conversations):
            rows = _conversation(c, turns, long, key, rng, request_id)
            request_id += len(rows["requests"])
            for table, values in (
                (MESSAGES, rows["messages"]),
                (COUNTS, rows["counts"]),
                (REQUESTS, rows["requests"]),
                (USAGE, rows["usage"]),
                (ATTEMPTS, rows["attempts"]),
                (SUMMARIES, rows["summaries"]),
            ):
                if values:
                    connection.execute(insert(table), values)
    engine.dispose()
    return request_id


def _conversation(
    c: int, turns: int, long: int, key: str, rng: random.Random, first_id: int
) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {
        name: [] for name in ("messages", "counts", "requests", "usage", "attempts", "summaries")
    }
    start = START + timedelta(seconds=rng.randrange(7 * 86400))
    parent: bytes | None = None
    depth = path_tokens = 0
    per_message = 30_000 if c < long else rng.randint(20, 400)
    for turn in range(turns):
        at = start + timedelta(seconds=40 * turn)
        for role in ("user", "assistant"):
            digest = hashlib.sha256(f"{c}/{depth}".encode()).digest()
            body = json.dumps({"role": role, "content": f"message {depth} of chat {c} " * 12})
            tokens = per_message
            path_tokens += tokens
            rows["messages"].append(
                {
                    "hash": digest,
                    "parent_hash": parent,
                    "depth": depth,
                    "role": role,
                    "body": body,
                    "created_at": at,
                }
            )
            rows["counts"].append(
                {
                    "message_hash": digest,
                    "counting_key": key,
                    "tokens": tokens,
                    "path_tokens": path_tokens,
                }
            )
            parent, depth = digest, depth + 1
        request_id = first_id + turn + 1
        baseline = path_tokens + 3
        sent = min(baseline, 1_500 + rng.randint(0, 800))
        rows["requests"].append(
            {
                "id": request_id,
                "created_at": at,
                "conversation_id": f"chat-{c}",
                "user": f"user-{c % 50}",
                "model": MODEL,
                "head_hash": parent,
                "message_count": depth,
                "messages_sent": min(depth, 12),
                "baseline_tokens": baseline,
                "prompt_tokens": sent,
                "summary_id": None,
                "summary_tokens": 0,
                "max_tokens_requested": None,
                "max_tokens_baseline": 16_384,
                "max_tokens": 1_024,
                "summarizer_tokens_in": 0,
                "summarizer_tokens_out": 0,
                "folded_synchronously": False,
                "summary_failures": 0,
                "compression_saved_tokens": 0,
                "recall_tokens": 0,
            }
        )
        if rng.random() < 0.9:
            rows["usage"].append(
                {
                    "request_id": request_id,
                    "model": MODEL + "-2024-07-18",
                    "prompt_tokens": sent,
                    "cached_tokens": sent // 2 // 128 * 128,
                    "completion_tokens": rng.randint(20, 300),
                    "estimated": False,
                    "recorded_at": at,
                }
            )
        rows["attempts"].append(
            {
                "request_id": request_id,
                "attempts": 1,
                "rate_limited": 0,
                "waited_ms": 0,
                "fallback_model": None,
                "outcome": "ok",
                "upstream": "openai (api.openai.com)",
                "created_at": at,
            }
        )
    if c % 3 == 0:
        rows["summaries"].append(
            {
                "anchor_hash": hashlib.sha256(f"{c}/0".encode()).digest(),
                "covers_hash": hashlib.sha256(f"{c}/1".encode()).digest(),
                "covers_depth": 1,
                "parent_id": None,
                "conversation_id": f"chat-{c}",
                "user": f"user-{c % 50}",
                "text": "summary",
                "summarizer": "openai:gpt-4o-mini",
                "prompt_version": "1",
                "messages_folded": 2,
                "tokens_in": 400,
                "tokens_out": 150,
                "created_at": start,
            }
        )
    return rows


def run_report(url: str) -> tuple[float, float, float]:
    """One ``context-trimmer report`` process: wall s, CPU s, peak RSS MB."""
    command = [sys.executable, "-m", "context_trimmer.cli", "report", "--db", url]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"report failed ({status}): {' '.join(command)}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def measure(label: str, urls: list[str]) -> tuple[float, float, float]:
    runs = [run_report(url) for url in urls]
    medians = tuple(statistics.median(run[i] for run in runs) for i in range(3))
    each = ", ".join(f"{w:.2f}s/{c:.2f}s/{m:.0f}MB" for w, c, m in runs)
    print(
        f"{label:>8}: wall {medians[0]:.2f} s, CPU {medians[1]:.2f} s, "
        f"peak RSS {medians[2]:.0f} MB  (each: {each})"
    )
    return medians  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=4000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--long", type=int, default=2, help="chats that outgrow 128k tokens")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        empty = f"sqlite:///{root / 'empty.db'}"
        Trimmer(empty, summarizer="extractive", background=False).close()
        built = time.perf_counter()
        source = root / "ledger.db"
        count = build(f"sqlite:///{source}", args.conversations, args.turns, args.long)
        print(f"ledger: {count:,} requests built in {time.perf_counter() - built:.1f} s")
        copies = []
        for i in range(args.runs):
            copy = root / f"first-{i}.db"
            shutil.copy(source, copy)
            copies.append(f"sqlite:///{copy}")
        base = measure("empty", [empty] * args.runs)
        measure("first", copies)
        steady = measure("steady", [copies[0]] * args.runs)
        with create_engine(copies[0]).connect() as connection:
            left = connection.execute(
                text("SELECT count(*) FROM ct_requests WHERE cache_baseline_tokens IS NULL")
            ).scalar()
        print(
            f"steady - empty: wall {steady[0] - base[0]:+.2f} s, CPU {steady[1] - base[1]:+.2f} s, "
            f"peak RSS {steady[2] - base[2]:+.0f} MB; requests without stored figures: {left}"
        )


if __name__ == "__main__":
    main()
