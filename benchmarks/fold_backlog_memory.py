"""Memory under many new conversations with background folds: RSS from the 500th to the
2,000th new conversation.

Each process runs one Trimmer (SQLite in a scratch directory, extractive summarizer,
background folds on, ``cache_bytes`` 8 MiB, other options at their defaults) and sends
``--conversations`` new conversations of 30 messages (about 300 bytes each) through
prepare() as an app would, at 10, 20 and 30 messages, with no pause. RSS (from /proc)
is read after the 500th and after the last conversation; printed: the growth between
them, the folds still queued and the due folds skipped (not queued, see
``_trimming.background``), medians of ``--runs`` processes.

``--fold-ms`` makes every summary call take that long (the extractive summarizer plus
a sleep, as an LLM call would): with 0 the thread keeps up, with 30 ms it falls behind.
``--max-pending N`` sets the backlog bound (default: the library's, 64); a large value
shows the unbounded queue of before.

    python benchmarks/fold_backlog_memory.py [--conversations 2000] [--runs 3]
        [--fold-ms 30] [--max-pending 64]
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
from typing import Any

WORDS = "flight hotel Lisbon budget Maria invoice Tuesday refund euros booking".split()


def conversation(number: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a travel agent."}]
    for i in range(1, 30):
        role = "user" if i % 2 else "assistant"
        text = " ".join(WORDS[(number + i + k) % len(WORDS)] for k in range(40))
        messages.append({"role": role, "content": f"{number}/{i}: {text}"})
    return messages


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class SlowSummarizer:
    """The extractive summarizer, ``seconds`` slower per call (a model's latency)."""

    def __init__(self, seconds: float):
        from context_trimmer import ExtractiveSummarizer

        self._inner = ExtractiveSummarizer()
        self.name = "slow-extractive"
        self.prompt_version = self._inner.prompt_version
        self.input_tokens = self._inner.input_tokens
        self._seconds = seconds

    def summarize(self, request: Any) -> Any:
        time.sleep(self._seconds)
        return self._inner.summarize(request)


def one_process(count: int, max_pending: int | None, fold_ms: float) -> dict[str, float]:
    from context_trimmer import Trimmer

    with tempfile.TemporaryDirectory() as scratch:
        trimmer = Trimmer(
            f"sqlite:///{scratch}/store.db",
            summarizer=SlowSummarizer(fold_ms / 1000) if fold_ms else "extractive",
            cache_bytes=8 * 2**20,
        )
        if max_pending is not None:
            trimmer._background._max_pending = max_pending
        started = time.process_time()
        at_500 = 0.0
        for number in range(count):
            messages = conversation(number)
            for end in (10, 20, 30):
                trimmer.prepare(messages[:end], model="gpt-4o", conversation_id=f"c{number}")
            if number + 1 == 500:
                at_500 = rss_mb()
        result = {
            "rss_500": at_500,
            "rss_end": rss_mb(),
            "backlog": trimmer._background.backlog,
            "skipped": trimmer._background.skipped,
            "cpu": time.process_time() - started,
        }
        trimmer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-pending", type=int, default=None)
    parser.add_argument("--fold-ms", type=float, default=0.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_process(args.conversations, args.max_pending, args.fold_ms)))
        return
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    command = [sys.executable, __file__, "--child", "--conversations", str(args.conversations)]
    command += ["--fold-ms", str(args.fold_ms)]
    if args.max_pending is not None:
        command += ["--max-pending", str(args.max_pending)]
    runs = [
        json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        for _ in range(args.runs)
    ]
    for run in runs:
        print(
            f"  RSS {run['rss_500']:.0f} MB at 500 -> {run['rss_end']:.0f} MB at the end; "
            f"backlog {run['backlog']}, skipped {run['skipped']}, CPU {run['cpu']:.1f} s"
        )
    growth = statistics.median(run["rss_end"] - run["rss_500"] for run in runs)
    print(f"median RSS growth from the 500th to the last conversation: {growth:+.1f} MB")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
