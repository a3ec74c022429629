"""Recall's cost inside the LoCoMo benchmark, part by part, and at smaller settings.

``prepare_speed.py --recall --text locomo`` times whole turns and ``recall_build.py``
replays ``build`` apart from them. This one times, in the benchmark's own turns (its
``locomo_worker``: the same history, questions and dialogue lines), the ``recall()`` of
the Trimmer with recall on:

- each part of the turn's call: the probe of the question's terms' counts, the ranked
  search, the speaker boost, the neighbours, and ``build``;
- the same call made twice more at once: every line, count, session date and SQLite
  page then remembered, what a turn costs when nothing in it is new (the floor).

Each figure is a process's median over the turns (ms of the thread's CPU, each part
timed around its call, ~1 us a call for the timing), and the median over ``--processes``.

``--settings`` measures other settings instead, each ``DOC_BUDGET/MAX_HITS/recall_tokens``
(the messages the ranking scores, the hits kept, the budget): the CPU recall adds a
turn (``locomo_worker``, recall off and on, in processes alternating between settings)
and the answers present with the other defaults (``locomo_questions.py``'s replay):

    python benchmarks/recall_floor.py [--sizes 1000 10000] [--processes 5]
    python benchmarks/recall_floor.py --settings 100/40/1500 50/20/750 [--sizes 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prepare_speed import DEFAULT_DATA, locomo_worker
from recall_build import recall_budget

import context_trimmer._trimmer as trimmer_module
from context_trimmer import TrimmerOptions
from context_trimmer._jobs.replay import load_conversations
from context_trimmer._trimming import recall as recall_module

PARTS = {  # what is printed: the function of _trimming.recall timed
    "probe": "informative",
    "search": "search",
    "speaker boost": "by_speaker",
    "neighbours": "_with_neighbours",
    "build": "build",
}
CALLS = ("first call", "again", "a third time")


def parts_worker(size: int, turns: int, data: Path) -> dict[str, float]:
    """One process's medians (ms) of each part and of each call, per turn."""
    times: dict[str, list[float]] = {name: [] for name in [*PARTS, *CALLS]}
    timing = [False]

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not timing[0]:
                return function(*args, **kwargs)
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                times[name].append(time.thread_time() - start)

        return call

    originals = {function: getattr(recall_module, function) for function in PARTS.values()}
    recall = trimmer_module.recall

    def recalling(*args: Any, **kwargs: Any) -> Any:
        if recall_budget(args, kwargs) <= 0:  # the recall-off Trimmers'
            return recall(*args, **kwargs)
        results = []
        for number, name in enumerate(CALLS):
            timing[0] = number == 0
            start = time.thread_time()
            results.append(recall(*args, **kwargs))
            times[name].append(time.thread_time() - start)
            timing[0] = False
        return results[0]

    for name, function in PARTS.items():
        setattr(recall_module, function, timed(name, originals[function]))
    trimmer_module.recall = recalling
    try:
        locomo_worker(size, turns, None, data)
    finally:
        for function, original in originals.items():
            setattr(recall_module, function, original)
        trimmer_module.recall = recall
    return {name: statistics.median(found) * 1e3 for name, found in times.items() if found}


def parse_setting(text: str) -> tuple[int, int, int]:
    """``DOC_BUDGET/MAX_HITS/recall_tokens``."""
    documents, hits, tokens = (int(part) for part in text.split("/"))
    return documents, hits, tokens


def applied(setting: str) -> int:
    """Set recall's ranking bounds of ``setting`` in this process; its budget."""
    documents, hits, tokens = parse_setting(setting)
    recall_module.DOC_BUDGET, recall_module.MAX_HITS = documents, hits
    return tokens


def cpu_worker(size: int, turns: int, data: Path, setting: str) -> dict[str, float]:
    """The median CPU (ms) a turn's prepare() takes with recall off, and what recall adds."""
    run = locomo_worker(size, turns, None, data, recall_tokens=applied(setting))
    off = [t for kind in run.values() for t in kind[0]]
    on = [t for kind in run.values() for t in kind[1]]
    return {
        "off": statistics.median(t[1] for t in off) * 1e3,
        "added": statistics.median(b[1] - a[1] for a, b in zip(off, on, strict=True)) * 1e3,
    }


def answers_worker(data: Path, setting: str) -> dict[str, Any]:
    """``locomo_questions.py``'s figures with the defaults but ``setting``."""
    import locomo_questions

    tokens = applied(setting)
    defaults = TrimmerOptions()
    replay_options = {
        "keep_last": defaults.keep_last,
        "fold_every": defaults.fold_every,
        "summary_tokens": defaults.summary_tokens,
        "summary_share": defaults.summary_share,
    }
    raw = json.loads(data.read_text("utf-8"))
    conversations = list(zip(raw, load_conversations(data), strict=True))
    recall = {"recall_tokens": tokens, "recall_share": defaults.recall_share}
    (result,) = locomo_questions.measure(conversations, replay_options, [recall])
    return {key: result[key] for key in ("present", "answerable", "mean_share_sent")}


def run_worker(command: list[str]) -> Any:
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


def measure_parts(args: argparse.Namespace) -> None:
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; recall() of the "
        f"recall-on Trimmer in {args.turns} LoCoMo turns, CPU ms per turn: medians of "
        f"{args.processes} processes, each the median over the turns"
    )
    names = [*PARTS, *CALLS]
    print(f"{'stored':>7} " + " ".join(f"{name:>13}" for name in names))
    for size in args.sizes:
        command = [sys.executable, __file__, "--worker", "parts", "--sizes", str(size)]
        command += ["--turns", str(args.turns), "--data", str(args.data)]
        runs = [run_worker(command) for _ in range(args.processes)]
        row = [statistics.median(run[name] for run in runs) for name in names]
        print(f"{size:>7,} " + " ".join(f"{figure:>13.3f}" for figure in row), flush=True)


def measure_settings(args: argparse.Namespace) -> None:
    common = ["--turns", str(args.turns), "--data", str(args.data)]
    cpu: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _process in range(args.processes):  # the settings alternate, process by process
        for size in args.sizes:
            for setting in args.settings:
                command = [sys.executable, __file__, "--worker", "cpu", "--sizes", str(size)]
                command += [*common, "--settings", setting]
                cpu.setdefault((setting, size), []).append(run_worker(command))
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; CPU recall adds a "
        f"turn (ms): medians of {args.processes} processes; answers: locomo_questions.py's "
        "with the other defaults"
    )
    print(f"{'DOC_BUDGET/MAX_HITS/recall_tokens':>34} {'stored':>7} {'off':>6} {'added':>6}")
    for setting in args.settings:
        for size in args.sizes:
            found = cpu[setting, size]
            off = statistics.median(run["off"] for run in found)
            added = statistics.median(run["added"] for run in found)
            print(f"{setting:>34} {size:>7,} {off:>6.2f} {added:>6.2f}", flush=True)
        command = [sys.executable, __file__, "--worker", "answers", *common]
        answers = run_worker([*command, "--settings", setting])
        print(
            f"{'':>34} answers present {answers['present']}/{answers['answerable']}, "
            f"{answers['mean_share_sent']:.1%} of the history sent",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--settings", nargs="+", help="DOC_BUDGET/MAX_HITS/recall_tokens ...")
    parser.add_argument("--worker", choices=["parts", "cpu", "answers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    for setting in args.settings or ():
        parse_setting(setting)  # a malformed one fails here, before any run
    if args.worker == "parts":
        print(json.dumps(parts_worker(args.sizes[0], args.turns, args.data)))
    elif args.worker == "cpu":
        print(json.dumps(cpu_worker(args.sizes[0], args.turns, args.data, args.settings[0])))
    elif args.worker == "answers":
        print(json.dumps(answers_worker(args.data, args.settings[0])))
    elif args.settings:
        measure_settings(args)
    else:
        measure_parts(args)


if __name__ == "__main__":
    main()
