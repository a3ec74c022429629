"""Recall's ``build`` alone, replayed: the CPU of choosing and counting the recall
message's lines, apart from the noise of the rest of prepare().

The LoCoMo turns of ``prepare_speed.py --recall --text locomo`` (its worker: the same
history, questions and dialogue lines) are run once at each size, on SQLite in this
process, and every call of ``_trimming.recall.build`` (and of ``recall()``) is captured
with its arguments (the path, the ranked candidates, the summary's text, the budget).
The same calls are then replayed
``--repeats`` times three ways:

- cold: every cache of recall emptied first (a process that has seen nothing);
- lines cold: the lines and summaries forgotten, the words' counts kept (a server that
  knows the language, not the conversation);
- warm: nothing forgotten (a process that has seen every line).

The replay does the same work each time, so the least of the repeats is the least noisy
figure (ms per turn); each tree is measured in ``--processes`` processes, alternating
with ``--against`` (an older checkout: ``git archive HEAD context_trimmer migrations``),
and the median of their least figures is printed, with the SHA-256 of the recall
messages built (the same selection in both trees, or not).

    python benchmarks/recall_build.py [--sizes 1000 10000] [--turns 40] [--repeats 15]
                                      [--processes 3] [--against OLD_CHECKOUT] [--parts]

``--parts`` also replays forgetting one cache at a time (the others kept: what each
costs a turn when it misses), and ``recall()`` whole with every line remembered, with
and without ``build`` (the probe, the search, the speaker boost, the neighbours).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prepare_speed import DEFAULT_DATA, in_trees, locomo_worker

import context_trimmer._trimmer as trimmer_module
from context_trimmer import Trimmer
from context_trimmer._trimming import recall as recall_module

KINDS = ("cold", "lines cold", "warm")
Call = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass
class Captured:
    """The ``build`` calls and the ``recall`` calls (their arguments after the
    connection) of the turns, and a connection to the store they ran on."""

    builds: list[Call] = field(default_factory=list)
    recalls: list[Call] = field(default_factory=list)
    connection: Any = None


def replayed(size: int, turns: int, data: Path, measure: Callable[[Captured], None]) -> None:
    """``measure`` the calls of the turns of ``prepare_speed.py --recall --text locomo``
    at ``size`` messages (its ``locomo_worker``), with the store still open."""
    found = Captured()
    build, recall = recall_module.build, trimmer_module.recall

    def building(*args: Any, **kwargs: Any) -> Any:
        found.builds.append((args, kwargs))
        return build(*args, **kwargs)

    def recalling(*args: Any, **kwargs: Any) -> Any:
        if recall_budget(args, kwargs) > 0:
            found.recalls.append((args[1:], kwargs))  # not the calls with recall off
        return recall(*args, **kwargs)

    def then(on: Trimmer) -> None:
        recall_module.build, trimmer_module.recall = build, recall
        with on._db.writing() as connection:
            found.connection = connection
            measure(found)

    recall_module.build, trimmer_module.recall = building, recalling
    try:
        locomo_worker(size, turns, None, data, then)
    finally:
        recall_module.build, trimmer_module.recall = build, recall


_RECALL = inspect.signature(recall_module.recall)


def recall_budget(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    """The ``budget`` of a call of ``recall()`` (0: the call of a Trimmer with recall off)."""
    budget: int = _RECALL.bind(*args, **kwargs).arguments["budget"]
    return budget


def forget_lines() -> None:
    """Forget the lines and summaries recall remembers, keep the words' counts."""
    forget_rendered()
    forget_summaries()
    forget_line_counts()


def forget_rendered() -> None:
    """Forget each message's line and session date."""
    with recall_module.Lines._lock:
        recall_module.Lines._known.clear()


def forget_summaries() -> None:
    """Forget each summary's words and answers."""
    with recall_module.Summarized._lock:
        recall_module.Summarized._known.clear()


def forget_line_counts() -> None:
    """Forget the lines' token counts, keep the words'."""
    for words in recall_module.Words._known.values():
        words.lines.clear()


def forget_words() -> None:
    """Forget the words' and the lines' token counts."""
    for words in recall_module.Words._known.values():
        words.forget()


# --parts: one cache forgotten at a time, the others kept
PARTS: dict[str, Callable[[], None]] = {
    "lines and dates": forget_rendered,
    "line counts": forget_line_counts,
    "summary checks": forget_summaries,
    "words and line counts": forget_words,
}


def least_per_turn(
    calls: list[Call], run: Callable[[Call], Any], before: Callable[[], None], repeats: int
) -> float:
    """The least CPU seconds per call (a turn's) of ``calls`` run through ``run``,
    ``before`` called ahead of each replay."""
    least = float("inf")
    for _repeat in range(repeats):
        before()
        start = time.process_time()
        for call in calls:
            run(call)
        least = min(least, (time.process_time() - start) / len(calls))
    return least


def worker(size: int, turns: int, repeats: int, data: Path, parts: bool) -> dict[str, Any]:
    """Least CPU seconds per turn of each kind of replay, and the messages' digest; with
    ``parts``, of a replay forgetting each cache alone, and of ``recall()`` whole (every
    line remembered), with and without ``build``."""
    forgetting = {"cold": recall_module.forget_recalled, "lines cold": forget_lines}
    least: dict[str, float] = {}
    result: dict[str, Any] = {"least": least}

    def build(call: Call) -> Any:
        return recall_module.build(*call[0], **call[1])

    def measure(calls: Captured) -> None:
        for kind in KINDS:
            least[kind] = least_per_turn(
                calls.builds, build, forgetting.get(kind, _nothing), repeats
            )
        built = [build(call) for call in calls.builds]
        digest = hashlib.sha256(json.dumps([(r.message, r.tokens) for r in built]).encode())
        result["digest"] = digest.hexdigest()[:16]
        if parts:
            for name, forget in PARTS.items():
                least[name] = least_per_turn(calls.builds, build, forget, repeats)
            least.update(whole_recall(calls, repeats))

    replayed(size, turns, data, measure)
    return result


def whole_recall(calls: Captured, repeats: int) -> dict[str, float]:
    """Least CPU seconds per turn of ``recall()`` replayed warm, with and without ``build``."""
    recall, build = recall_module.recall, recall_module.build

    def whole(call: Call) -> Any:
        return recall(calls.connection, *call[0], **call[1])

    figures = {"recall()": least_per_turn(calls.recalls, whole, _nothing, repeats)}
    recall_module.build = lambda *_args, **_kwargs: recall_module.NOTHING  # type: ignore[assignment]
    try:
        figures["recall() without build"] = least_per_turn(calls.recalls, whole, _nothing, repeats)
    finally:
        recall_module.build = build  # type: ignore[assignment]
    return figures


def _nothing() -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--against", help="another source tree, measured in turn")
    parser.add_argument("--parts", action="store_true", help="each cache alone, recall() whole")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.sizes[0], args.turns, args.repeats, args.data, args.parts)
        print(json.dumps(result))
        return
    trees = {"this": None, **({"against": args.against} if args.against else {})}

    def command_for(size: int) -> list[str]:
        command = [sys.executable, __file__, "--worker", "--sizes", str(size)]
        command += ["--turns", str(args.turns), "--repeats", str(args.repeats)]
        return command + ["--data", str(args.data)] + (["--parts"] if args.parts else [])

    runs = in_trees(command_for, trees, args.sizes, args.processes)
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; recall's build "
        f"replayed, CPU ms per turn: the median over {args.processes} processes of the "
        f"least of {args.repeats} replays of {args.turns} LoCoMo turns"
    )
    print(f"{'tree':>7} {'stored':>7} {'cold':>6} {'lines cold':>10} {'warm':>6}  recalled")
    for size in args.sizes:
        for name in trees:
            found = runs[name, size]
            figures = [statistics.median(r["least"][kind] for r in found) * 1e3 for kind in KINDS]
            digests = sorted({r["digest"] for r in found})
            print(
                f"{name:>7} {size:>7,} {figures[0]:>6.3f} {figures[1]:>10.3f} "
                f"{figures[2]:>6.3f}  {', '.join(digests)}",
                flush=True,
            )
    if not args.parts:
        return
    print("one cache forgotten at a time (the others kept), and recall() whole, every line")
    print("remembered (--parts), CPU ms per turn:")
    for size in args.sizes:
        for name in trees:
            found = runs[name, size]
            for part in (*PARTS, "recall()", "recall() without build"):
                figure = statistics.median(r["least"][part] for r in found) * 1e3
                print(f"{name:>7} {size:>7,} {part:>24} {figure:>6.3f}")


if __name__ == "__main__":
    main()
