"""How many tokens a summary needs to keep a span's facts: the measurement behind the
summary budget's floor (``context_trimmer._trimming.plan.SUMMARY_FLOOR``, docs/summaries.md).

The three LoCoMo sample conversations are cut into spans of N consecutive turns (the
size of what one fold replaces). Each span is summarized by the extractive summarizer
(local, deterministic: the only one that can be run here at any budget) at budgets from
50 to 600 tokens, and for each budget it reports the share of the span's facts the
summary keeps. A fact here is what recall cannot bring back by itself once its turn is
folded: a name (a capitalized word not opening a sentence), a number, a month or a
weekday. A model summarizer writes terser bullets than extracted sentences, so these
shares are a lower bound of what a model keeps at the same budget.

    python benchmarks/summary_floor.py [--data PATH] [--turns 12 20 40]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from context_trimmer import SummaryRequest
from context_trimmer._text.tokens import counter_for
from context_trimmer._trimming.extractive import ExtractiveSummarizer
from context_trimmer._trimming.summarizers import render_transcript

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo-sample.json"
BUDGETS = (50, 100, 150, 200, 250, 300, 400, 600)
CALENDAR = set(
    "January February March April May June July August September October November December "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
)
NOT_NAMES = {"I", "I'm", "I've", "I'll", "I'd"}


def facts_of(text: str) -> set[str]:
    """Names, numbers, months and weekdays in ``text``."""
    found: set[str] = set()
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        words = [word.strip(".,!?'\"()") for word in sentence.split()]
        found |= {w for w in words[1:] if w[:1].isupper() and w not in NOT_NAMES}
        found |= {w for w in words if w in CALENDAR}
        found |= set(re.findall(r"\b\d(?:[\d,.:]*\d)?\b", sentence))
    return found


def turns_of(item: Mapping[str, Any]) -> list[dict[str, str]]:
    """A LoCoMo conversation as chat messages (speaker A is the user)."""
    talk = item["conversation"]
    turns: list[dict[str, str]] = []
    session = 1
    while f"session_{session}" in talk:
        for turn in talk[f"session_{session}"]:
            role = "user" if turn["speaker"] == talk["speaker_a"] else "assistant"
            turns.append({"role": role, "content": f"{turn['speaker']}: {turn['text']}"})
        session += 1
    return turns


def spans(conversations: Sequence[Mapping[str, Any]], size: int) -> Iterator[list[dict[str, str]]]:
    for item in conversations:
        turns = turns_of(item)
        for start in range(0, len(turns) - size + 1, size):
            yield turns[start : start + size]


def coverage(span: list[dict[str, str]], budget: int) -> float | None:
    """The share of the span's facts its extractive summary at ``budget`` keeps."""
    facts = facts_of(" ".join(m["content"].split(": ", 1)[1] for m in span))
    if not facts:
        return None
    count = counter_for("gpt-4o").text
    request = SummaryRequest(None, render_transcript(span), budget, count)
    text = ExtractiveSummarizer().summarize(request).text
    return sum(fact.lower() in text.lower() for fact in facts) / len(facts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--turns", type=int, nargs="+", default=[12, 20, 40])
    args = parser.parse_args()
    conversations = json.loads(args.data.read_text())
    count = counter_for("gpt-4o").text
    for size in args.turns:
        chosen = list(spans(conversations, size))
        tokens = statistics.median(count(render_transcript(span)) for span in chosen)
        print(f"spans of {size} turns: {len(chosen)} spans, median {tokens:.0f} tokens")
        for budget in BUDGETS:
            shares = [c for c in (coverage(span, budget) for span in chosen) if c is not None]
            print(f"  budget {budget:>3}: {statistics.mean(shares):.0%} of the facts kept (mean)")


if __name__ == "__main__":
    main()
