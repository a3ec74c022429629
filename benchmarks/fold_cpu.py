"""The background fold's CPU per turn against the length of the history, on LoCoMo text.

A fold should cost what it folds, not what came before it. Each size's history is the
LoCoMo sample's dialogue (``locomo-sample.json``, read from ``../shared/data/`` next to
the repository, or ``--data``; never copied here): its sessions, each opening with its
date, cycled (speaker A the user) until the history has ``--sizes`` messages. It is
stored and folded once (untimed), then ``--turns`` turns follow, each a user line and
an assistant line of the dialogue's next session lines: prepare() of the whole list
(default options: folds in the background, the extractive summarizer, so no network),
then the turn waits for the background thread. The CPU is that thread's own
(``time.thread_time`` read on it before and after each turn), so it is the folds' CPU
alone, whatever prepare() costs; per turn is the total over the turns.

Each size runs in its own process, ``--processes`` times (3), sizes alternating; the
figures are medians over processes, with the machine's core count and load.

    python benchmarks/fold_cpu.py [--sizes 1000 10000 50000] [--turns 200] [--processes 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from context_trimmer import Trimmer
from context_trimmer._jobs.replay import locomo_conversation

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo-sample.json"


def dialogue(data: Path) -> list[dict[str, Any]]:
    """The sample's conversations, one after another, without their system prompts."""
    items = json.loads(data.read_text("utf-8"))
    return [
        message
        for index, item in enumerate(items)
        for message in locomo_conversation(item, index).messages
        if message["role"] != "system"
    ]


def history(lines: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """A system prompt, then the dialogue's lines, cycled, up to ``size`` messages."""
    messages = [{"role": "system", "content": "You are a friend, chatting. Remember it all."}]
    while len(messages) < size:
        messages.append(dict(lines[(len(messages) - 1) % len(lines)]))
    return messages


def worker(size: int, turns: int, data: Path) -> dict[str, Any]:
    """Store and fold ``size`` messages, then time the background folds of ``turns``."""
    lines = dialogue(data)
    messages = history(lines, size)
    with (
        tempfile.TemporaryDirectory() as folder,
        Trimmer(f"sqlite:///{folder}/fold.db", summarizer="extractive") as trimmer,
    ):
        trimmer.prepare(messages)
        trimmer.wait_for_background()
        trimmer.compact(messages, force=True)
        on_thread = trimmer._background.submit  # what runs on the fold thread
        spent, folds = 0.0, 0
        for _turn in range(turns):
            for _line in range(2):
                messages.append(dict(lines[(len(messages) - 1) % len(lines)]))
            before = on_thread(time.thread_time).result()
            folds += trimmer.prepare(messages).fold_pending
            trimmer.wait_for_background()
            spent += on_thread(time.thread_time).result() - before
    return {"cpu_per_turn": spent / turns, "folds": folds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.sizes[0], args.turns, args.data)))
        return
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in args.sizes}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    for _process in range(args.processes):
        for size in args.sizes:
            command = [sys.executable, __file__, "--worker", "--sizes", str(size)]
            command += ["--turns", str(args.turns), "--data", str(args.data)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[size].append(json.loads(output.splitlines()[-1]))
    cpu = {s: statistics.median(r["cpu_per_turn"] for r in runs[s]) for s in args.sizes}
    for size in args.sizes:
        folds = statistics.median(r["folds"] for r in runs[size])
        print(
            f"{size:>7,} messages: fold CPU {cpu[size] * 1e3:.2f} ms per turn "
            f"({folds:.0f} folds in {args.turns} turns; medians of {args.processes} processes)"
        )
    first, last = min(args.sizes), max(args.sizes)
    print(
        f"{last:,} vs {first:,}: {cpu[last] / cpu[first]:.2f}x (target <= 1.3x); "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )


if __name__ == "__main__":
    main()
