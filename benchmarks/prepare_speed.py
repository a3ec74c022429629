"""prepare() cost per turn against langchain_core's trim_messages, same messages, same run.

The app sends the full list every turn and one message is added. For each size, the
history is stored once, then each timed turn is one prepare() of the whole list (the
steady state: counts come from the store, nothing is recounted); folds run between
turns, untimed, as the background worker would. trim_messages gets an exact tiktoken
counter (the same per-message rules) and a token budget like the prepared request.

    python benchmarks/prepare_speed.py [--sizes 1000 5000 10000] [--turns 15]
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

from context_trimmer import ModelTable, Trimmer
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


def time_prepare(size: int, turns: int) -> tuple[float, int]:
    rng = random.Random(size)
    messages = conversation(size, rng)
    timings = []
    with (
        tempfile.TemporaryDirectory() as folder,
        Trimmer(
            f"sqlite:///{folder}/bench.db", summarizer="extractive", background=False
        ) as trimmer,
    ):
        trimmer.prepare(messages)
        trimmer.compact(messages, force=True)
        for _ in range(turns):
            messages.append({"role": "user", "content": text(rng)})
            start = time.perf_counter()
            prepared = trimmer.prepare(messages)
            timings.append(time.perf_counter() - start)
            messages.append({"role": "assistant", "content": text(rng)})
            if prepared.fold_pending:
                trimmer.compact(messages)
    return statistics.median(timings), prepared.prompt_tokens


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
    args = parser.parse_args()
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
