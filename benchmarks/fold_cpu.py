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
alone, whatever prepare() costs; the wall time is each fold's on that thread, from
its start to its end; per turn is the total over the turns.

Each size runs in its own process, ``--processes`` times (3), sizes alternating; the
figures are medians over processes, with the machine's core count and load.
``--before DIR`` runs every process a second time, in turn, with the package of
another checkout (``git worktree add DIR <commit>``), so both are measured under the
same load.

    python benchmarks/fold_cpu.py [--sizes 1000 10000 50000] [--turns 200] [--processes 3]
        [--before DIR]
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
        wall = _timed_folds(trimmer)
        spent, folds = 0.0, 0
        for _turn in range(turns):
            for _line in range(2):
                messages.append(dict(lines[(len(messages) - 1) % len(lines)]))
            before = on_thread(time.thread_time).result()
            folds += trimmer.prepare(messages).fold_pending
            trimmer.wait_for_background()
            spent += on_thread(time.thread_time).result() - before
    return {"cpu_per_turn": spent / turns, "wall_per_turn": wall[0] / turns, "folds": folds}


def _timed_folds(trimmer: Trimmer) -> list[float]:
    """The wall time of the folds the background thread runs from now on, added up."""
    folder = trimmer._folder
    fold = folder._fold_logged  # what schedule() hands the thread
    wall = [0.0]

    def timed(path: Any) -> Any:
        start = time.perf_counter()
        try:
            return fold(path)
        finally:
            wall[0] += time.perf_counter() - start

    folder._fold_logged = timed  # type: ignore[method-assign]
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--before", type=Path, help="an older checkout to measure in turn")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.sizes[0], args.turns, args.data)))
        return
    trees = {"this checkout": Path(__file__).resolve().parents[1]}
    if args.before:
        trees["before"] = args.before
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    for _process in range(args.processes):
        for size in args.sizes:
            for tree, path in trees.items():
                runs.setdefault((tree, size), []).append(run_worker(size, args, path))
    first, last = min(args.sizes), max(args.sizes)
    for tree in trees:
        cpu = {s: median(runs[tree, s], "cpu_per_turn") for s in args.sizes}
        wall = {s: median(runs[tree, s], "wall_per_turn") for s in args.sizes}
        print(f"{tree}:")
        for size in args.sizes:
            folds = median(runs[tree, size], "folds")
            print(
                f"{size:>7,} messages: fold CPU {cpu[size] * 1e3:.2f} ms per turn, wall "
                f"{wall[size] * 1e3:.2f} ms ({folds:.0f} folds in {args.turns} turns; "
                f"medians of {args.processes} processes)"
            )
        print(
            f"  {last:,} vs {first:,}: CPU {cpu[last] / cpu[first]:.2f}x (target <= 1.3x), "
            f"wall {wall[last] / wall[first]:.2f}x"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def run_worker(size: int, args: argparse.Namespace, tree: Path) -> dict[str, Any]:
    """One worker process, with the package of the checkout ``tree``."""
    command = [sys.executable, __file__, "--worker", "--sizes", str(size)]
    command += ["--turns", str(args.turns), "--data", str(args.data)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return dict(json.loads(output.stdout.splitlines()[-1]))


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


if __name__ == "__main__":
    main()
