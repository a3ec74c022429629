"""prepare() cost per turn against langchain_core's trim_messages, same messages, same run.

The app sends the full list every turn and one message is added. For each size, the
history is stored once, then each timed turn is one prepare() of the whole list (the
steady state: counts come from the store, nothing is recounted); folds run between
turns, untimed, as the background worker would. trim_messages gets an exact tiktoken
counter (the same per-message rules) and a token budget like the prepared request.

    python benchmarks/prepare_speed.py [--sizes 1000 5000 10000] [--turns 15]
    python benchmarks/prepare_speed.py --recall [--sizes 10000] [--turns 41]
        [--db postgresql+psycopg://USER@HOST/DB]

``--recall`` times prepare() with recall off and on (the default ``recall_tokens``),
wall and CPU medians, on the same messages, on SQLite or on a PostgreSQL server
(``--db``: a throwaway database is made there for each run); each message also names
a rare reference (``ref1234``) that later user turns ask about, so the search finds
and ranks matches.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    trim_messages,
)

from context_trimmer import ModelTable, Trimmer, TrimmerOptions
from context_trimmer._tokens import REPLY_PRIMING, TokenCounter

WORDS = (
    "flight hotel Lisbon budget Maria invoice Tuesday refund 42 euros booking "
    "schedule meeting project deadline Paris contract review draft order"
).split()


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 60))) + "."


def conversation(size: int, rng: random.Random) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful agent."}]
    while len(messages) < size:
        role = "user" if messages[-1]["role"] != "user" else "assistant"
        messages.append({"role": role, "content": text(rng)})
    return messages


def to_langchain(messages: list[dict[str, Any]]) -> list[BaseMessage]:
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](content=m["content"]) for m in messages]


def exact_counter(counter: TokenCounter) -> Any:
    roles = {"system": "system", "human": "user", "ai": "assistant"}

    def count(messages: list[BaseMessage]) -> int:
        return (
            sum(counter.message({"role": roles[m.type], "content": m.content}) for m in messages)
            + REPLY_PRIMING
        )

    return count


def time_prepare(size: int, turns: int, **options: Any) -> tuple[float, int]:
    wall, _cpu, tokens = time_prepare_cpu(size, turns, **options)
    return wall, tokens


def time_prepare_cpu(
    size: int, turns: int, *, refs: bool = False, **options: Any
) -> tuple[float, float, int]:
    """Median wall and CPU seconds of prepare() per turn, and the last prompt's tokens."""
    rng = random.Random(size)
    say = (lambda r: f"{text(r)} About ref{r.randint(0, 9999)}.") if refs else text
    messages = conversation(size, rng)
    if refs:
        messages = [messages[0], *({**m, "content": say(rng)} for m in messages[1:])]
    walls, cpus = [], []
    with (
        tempfile.TemporaryDirectory() as folder,
        Trimmer(
            f"sqlite:///{folder}/bench.db", summarizer="extractive", background=False, **options
        ) as trimmer,
    ):
        trimmer.prepare(messages)
        trimmer.compact(messages, force=True)
        for _ in range(turns):
            messages.append({"role": "user", "content": say(rng)})
            start, start_cpu = time.perf_counter(), time.process_time()
            prepared = trimmer.prepare(messages)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
            messages.append({"role": "assistant", "content": say(rng)})
            if prepared.fold_pending:
                trimmer.compact(messages)
    return statistics.median(walls), statistics.median(cpus), prepared.prompt_tokens


def compare_recall(sizes: list[int], turns: int, db: str | None = None) -> None:
    """prepare() with recall off and on (the default ``recall_tokens``) on one store, on
    SQLite (a temporary file) or on ``db`` (a PostgreSQL URL: a throwaway database made
    there and dropped after). Each turn's new message is stored first (untimed), then
    the turn is prepared by both, in alternating order, so the added cost is the median
    of paired differences, robust to a loaded machine."""
    budget = TrimmerOptions().recall_tokens
    print(
        f"{'stored':>7} {'text':>12} {'wall off':>9} {'wall on':>8} {'added':>6} "
        f"{'CPU off':>8} {'CPU on':>7} {'added':>6}  (ms, medians)"
    )
    for size in sizes:
        for refs in (False, True):
            url, remove = recall_store(db)
            try:
                off, on = time_recall(url, size, turns, refs, budget)
            finally:
                remove()
            kind = "with refs" if refs else "common words"
            print(
                f"{size:>7,} {kind:>12} {ms(off, 0):>9} {ms(on, 0):>8} {ms(on, 0, off):>6} "
                f"{ms(off, 1):>8} {ms(on, 1):>7} {ms(on, 1, off):>6}",
                flush=True,
            )


def ms(times: list[tuple[float, float]], kind: int, base: Any = ()) -> str:
    """Median of ``times[i][kind]`` (minus ``base[i][kind]``, paired), in milliseconds."""
    values = [t[kind] - (base[i][kind] if base else 0.0) for i, t in enumerate(times)]
    return f"{statistics.median(values) * 1000:.2f}"


def recall_store(db: str | None) -> tuple[str, Any]:
    """A fresh, empty store and what removes it: a temporary SQLite file, or a database
    made on ``db``'s PostgreSQL server."""
    if db is None:
        folder = tempfile.TemporaryDirectory()
        return f"sqlite:///{folder.name}/bench.db", folder.cleanup
    import os

    import sqlalchemy

    server = sqlalchemy.create_engine(db, isolation_level="AUTOCOMMIT")
    name = f"ct_recall_bench_{os.getpid()}"

    def run(statement: str) -> None:
        with server.connect() as connection:
            connection.exec_driver_sql(statement)

    run(f"DROP DATABASE IF EXISTS {name}")
    run(f"CREATE DATABASE {name}")

    def remove() -> None:
        run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        server.dispose()

    return sqlalchemy.make_url(db).set(database=name).render_as_string(False), remove


def time_recall(
    url: str, size: int, turns: int, refs: bool, budget: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(wall, CPU) seconds of each turn's prepare() with recall off, and with
    ``recall_tokens=budget``, on the same store and messages (CPU: this thread's). With
    ``refs`` each message also names a rare ``refNNNN`` that later user turns ask about."""
    rng = random.Random(size)
    say = (lambda r: f"{text(r)} About ref{r.randint(0, 9999)}.") if refs else text
    messages = conversation(size, rng)
    if refs:
        messages = [messages[0], *({**m, "content": say(rng)} for m in messages[1:])]
    times: tuple[list[tuple[float, float]], list[tuple[float, float]]] = ([], [])
    options = {"summarizer": "extractive", "background": False}
    with (
        Trimmer(url, recall_tokens=0, **options) as writer,
        Trimmer(url, recall_tokens=0, **options) as off,
        Trimmer(url, recall_tokens=budget, **options) as on,
    ):
        for trimmer in (writer, off, on):
            trimmer.prepare(messages)
        writer.compact(messages, force=True)
        for turn in range(turns):
            messages.append({"role": "user", "content": say(rng)})
            writer.prepare(messages)  # untimed: stores the new message, so off and on
            # do the same work but recall, in alternating order
            for which in (0, 1) if turn % 2 else (1, 0):
                start, start_cpu = time.perf_counter(), time.thread_time()
                prepared = (off, on)[which].prepare(messages)
                times[which].append((time.perf_counter() - start, time.thread_time() - start_cpu))
            messages.append({"role": "assistant", "content": say(rng)})
            if prepared.fold_pending:
                writer.compact(messages)
    return times


def time_trim(size: int, turns: int, budget: int) -> float:
    rng = random.Random(size)
    messages = to_langchain(conversation(size, rng))
    counter = exact_counter(TokenCounter(ModelTable().get("gpt-4o")))
    timings = []
    for _ in range(turns):
        messages.append(HumanMessage(content=text(rng)))
        start = time.perf_counter()
        trim_messages(
            messages,
            max_tokens=budget,
            token_counter=counter,
            strategy="last",
            include_system=True,
            start_on="human",
        )
        timings.append(time.perf_counter() - start)
        messages.append(AIMessage(content=text(rng)))
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--recall", action="store_true", help="recall off and on")
    parser.add_argument("--db", help="--recall on this PostgreSQL server (default: SQLite)")
    args = parser.parse_args()
    if args.recall:
        compare_recall(args.sizes, args.turns, args.db)
        return
    print(f"{'stored':>7} {'prepare() ms':>13} {'trim_messages ms':>17} {'speed-up':>9}")
    results = []
    for size in args.sizes:
        prepare_s, budget = time_prepare(size, args.turns)
        trim_s = time_trim(size, max(3, args.turns // 5), budget)
        results.append((size, prepare_s))
        print(
            f"{size:>7,} {prepare_s * 1000:>13.2f} {trim_s * 1000:>17.1f} "
            f"{trim_s / prepare_s:>8.0f}x"
        )
    (small, t_small), (large, t_large) = results[0], results[-1]
    per_message = (t_large - t_small) / (large - small) * 1e6
    print(
        f"prepare() cost per extra stored message: {per_message:.2f} µs "
        f"(encoding one message with tiktoken costs ~10-50 µs)"
    )


if __name__ == "__main__":
    main()
