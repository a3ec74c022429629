"""Recall's ``build`` alone, replayed: the CPU of choosing and counting the recall
message's lines, apart from the noise of the rest of prepare().

The LoCoMo turns of ``prepare_speed.py --recall --text locomo`` (the same history,
questions and dialogue lines) are run once at each size, on SQLite in this process, and
every call of ``_trimming.recall.build`` is captured with its arguments (the path, the
ranked candidates, the summary's text, the budget). The same calls are then replayed
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
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prepare_speed import DEFAULT_DATA, Locomo

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


@contextmanager
def captured(size: int, turns: int, data: Path) -> Iterator[Captured]:
    """The calls of ``turns`` LoCoMo turns at ``size`` messages, the store kept open."""
    found = Captured()
    build, recall = recall_module.build, trimmer_module.recall

    def building(*args: Any, **kwargs: Any) -> Any:
        found.builds.append((args, kwargs))
        return build(*args, **kwargs)

    def recalling(*args: Any, **kwargs: Any) -> Any:
        found.recalls.append((args[1:], kwargs))
        return recall(*args, **kwargs)

    source = Locomo(data)
    rng = random.Random(size)
    messages = source.history(size)
    options: dict[str, Any] = {"summarizer": "extractive", "background": False}
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/recall.db"
        with Trimmer(url, recall_tokens=0, **options) as writer, Trimmer(url, **options) as on:
            for trimmer in (writer, on):
                trimmer.prepare(messages)
            writer.compact(messages, force=True)
            recall_module.build, trimmer_module.recall = building, recalling
            try:
                for turn in range(turns):
                    if turn % 2 == 0:
                        asked = {"role": "user", "content": rng.choice(source.questions)}
                    else:
                        asked = source.take("user")
                    messages.append(asked)
                    writer.prepare(messages)
                    prepared = on.prepare(messages)
                    messages.append(source.take("assistant"))
                    if prepared.fold_pending:
                        writer.compact(messages)
            finally:
                recall_module.build, trimmer_module.recall = build, recall
            with on._db.writing() as connection:
                found.connection = connection
                yield found


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
    calls: list[Call], run: Callable[[Call], Any], before: Any, repeats: int
) -> float:
    """The least CPU seconds per call of ``calls`` run through ``run``, ``before`` each replay."""
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
    least = {kind: float("inf") for kind in KINDS}
    built: list[Any] = []
    with captured(size, turns, data) as calls:
        for _repeat in range(repeats):
            for kind in KINDS:
                forgetting.get(kind, lambda: None)()
                start = time.process_time()
                built = [recall_module.build(*args, **kwargs) for args, kwargs in calls.builds]
                least[kind] = min(least[kind], (time.process_time() - start) / len(calls.builds))
        if parts:
            for name, forget in PARTS.items():
                least[name] = least_per_turn(
                    calls.builds,
                    lambda call: recall_module.build(*call[0], **call[1]),
                    forget,
                    repeats,
                )
            recall = recall_module.recall

            def whole(call: Call) -> Any:
                return recall(calls.connection, *call[0], **call[1])

            least["recall()"] = least_per_turn(calls.recalls, whole, lambda: None, repeats)
            build, recall_module.build = (
                recall_module.build,
                lambda *_a, **_k: recall_module.NOTHING,
            )
            try:
                least["recall() without build"] = least_per_turn(
                    calls.recalls, whole, lambda: None, repeats
                )
            finally:
                recall_module.build = build
    digest = hashlib.sha256(json.dumps([(r.message, r.tokens) for r in built]).encode())
    return {"least": least, "digest": digest.hexdigest()[:16], "turns": len(calls.builds)}


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
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {
        (tree, size): [] for tree in trees for size in args.sizes
    }
    for _process in range(args.processes):
        for size in args.sizes:
            for name, tree in trees.items():
                command = [sys.executable, __file__, "--worker", "--sizes", str(size)]
                command += ["--turns", str(args.turns), "--repeats", str(args.repeats)]
                command += ["--data", str(args.data)] + (["--parts"] if args.parts else [])
                env = None if tree is None else {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
                output = subprocess.run(
                    command, check=True, capture_output=True, text=True, env=env
                ).stdout
                runs[name, size].append(json.loads(output.splitlines()[-1]))
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
