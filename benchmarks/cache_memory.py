"""Memory stops growing at ``cache_bytes``: conversations of 4 KB messages through prepare().

300 conversations (20 messages of 4 KB each, their own ``conversation_id``) are prepared
once each by one Trimmer with ``cache_bytes`` = 8 MiB (SQLite store, recall off). The
memory the second 150 add is measured two ways: Python's own allocations
(``tracemalloc``, started before the first conversation, so what the cache evicts counts
as freed) and the process's resident set size (RSS, from /proc; it also holds SQLite's
page cache and whatever the allocator keeps). The target: at most a third of the second
150's text size (150 x 20 x 4 KB = 12 MB).

    python benchmarks/cache_memory.py [--conversations 300] [--cache-mib 8]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import tracemalloc
from typing import Any

from context_trimmer import Trimmer

MESSAGES = 20
TEXT = 4096


def conversation(number: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful agent."}]
    for i in range(1, MESSAGES):
        role = "user" if i % 2 else "assistant"
        messages.append({"role": role, "content": f"{number} {i} " + "x" * TEXT})
    return messages


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--cache-mib", type=int, default=8)
    args = parser.parse_args()
    half = args.conversations // 2
    with (
        tempfile.TemporaryDirectory() as folder,
        Trimmer(
            f"sqlite:///{folder}/memory.db",
            summarizer="extractive",
            background=False,
            recall_tokens=0,
            cache_bytes=args.cache_mib * 1024 * 1024,
        ) as trimmer,
    ):
        trimmer.prepare(conversation(-1), conversation_id="warm-up")  # encoding, statements
        tracemalloc.start()
        first_rss = rss()
        for number in range(half):
            trimmer.prepare(conversation(number), conversation_id=f"c{number}")
        gc.collect()
        traced, resident = tracemalloc.get_traced_memory()[0], rss()
        first = {"tracemalloc": traced, "RSS": resident - first_rss}
        for number in range(half, args.conversations):
            trimmer.prepare(conversation(number), conversation_id=f"c{number}")
        gc.collect()
        traced_grown = tracemalloc.get_traced_memory()[0] - traced
        rss_grown = rss() - resident
        held = trimmer._chains.held_bytes
        tracemalloc.stop()
    text = (args.conversations - half) * (MESSAGES - 1) * TEXT
    print(
        f"cache_bytes {args.cache_mib} MiB; {args.conversations} conversations of "
        f"{MESSAGES} messages (4 KB each); chain cache holds {held / 2**20:.1f} MiB (estimate)"
    )
    print(f"text of the last {args.conversations - half}: {text / 2**20:.1f} MiB")
    for name, grown in (("tracemalloc", traced_grown), ("RSS", rss_grown)):
        verdict = "ok" if grown <= text / 3 else "OVER"
        print(
            f"{name:>11}: +{first[name] / 2**20:.1f} MiB over the first {half}, "
            f"+{grown / 2**20:.2f} MiB over the last {args.conversations - half}, "
            f"{grown / text:.1%} of their text (target <= 33%): {verdict}"
        )


if __name__ == "__main__":
    main()
