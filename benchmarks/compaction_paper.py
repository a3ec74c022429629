"""Tokens sent per turn on the same replay: our trimming against OpenAI's server-side
compaction, the latter on paper (from its documented policy), on the LoCoMo sample.

Ours is measured: every turn goes through prepare() (the extractive summarizer, the
default options, folds run when due), as ``benchmarks/locomo_savings.py`` does.

OpenAI's compaction cannot run here (it is OpenAI's service), so it is modelled from
what OpenAI documents: with ``context_management=[{"type": "compaction",
"compact_threshold": T}]``, a request whose rendered input passes T tokens is compacted
on the server, which returns one opaque ``compaction`` item; the client sends that item
in place of everything before it from then on. Two figures are NOT documented and are
parameters here: the tokens a compaction item counts for when sent (``--item-tokens``,
a sweep), and what the compaction pass itself bills (left out: the figures below are
the input tokens of the requests only, a lower bound for compaction). The model:
``sent = full - replaced + item`` once something was compacted; a request over T is
sent as it is and compacts everything up to it.

    python benchmarks/compaction_paper.py [--data ../shared/data/locomo-sample.json]
        [--threshold 4000 8000 16000] [--item-tokens 500 2000] [--json]

LoCoMo (Maharana et al., 2024, https://github.com/snap-research/locomo) is CC BY-NC 4.0
and not shipped: see ``benchmarks/locomo_savings.py`` for where the file goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from context_trimmer import Trimmer
from context_trimmer._jobs.replay import Conversation, load_conversations, request_points

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo-sample.json"


def ours(conversation: Conversation) -> tuple[list[int], list[int]]:
    """(full history tokens, tokens sent) per turn through prepare()."""
    full: list[int] = []
    sent: list[int] = []
    with (
        tempfile.TemporaryDirectory() as folder,
        Trimmer(f"sqlite:///{folder}/bench.db", summarizer="extractive", background=False) as t,
    ):
        for end in request_points(conversation.messages):
            prefix = conversation.messages[:end]
            prepared = t.prepare(prefix, conversation_id=conversation.id)
            full.append(prepared.baseline_tokens)
            sent.append(prepared.prompt_tokens)
            if prepared.fold_pending:
                t.compact(prefix, conversation_id=conversation.id)
    return full, sent


def compaction(full: Sequence[int], threshold: int, item_tokens: int) -> tuple[list[int], int]:
    """Tokens sent per turn under the compaction-threshold policy, and how many
    compactions ran (see the module doc for the model)."""
    replaced = 0  # full-history tokens the newest compaction item stands for
    sent: list[int] = []
    passes = 0
    for tokens in full:
        now = tokens - replaced + (item_tokens if replaced else 0)
        sent.append(now)
        if now > threshold:
            replaced, passes = tokens, passes + 1
    return sent, passes


def run(data: Path, thresholds: Sequence[int], items: Sequence[int]) -> dict[str, Any]:
    rows = []
    for conversation in load_conversations(data):
        full, sent = ours(conversation)
        row: dict[str, Any] = {
            "conversation": conversation.id,
            "turns": len(full),
            "full_mean": round(statistics.mean(full)),
            "full_final": full[-1],
            "ours_mean": round(statistics.mean(sent)),
            "ours_final": sent[-1],
            "compaction": [],
        }
        for threshold in thresholds:
            for item in items:
                modelled, passes = compaction(full, threshold, item)
                row["compaction"].append(
                    {
                        "threshold": threshold,
                        "item_tokens": item,
                        "mean": round(statistics.mean(modelled)),
                        "final": modelled[-1],
                        "compactions": passes,
                    }
                )
        rows.append(row)
    return {"rows": rows}


def print_table(outcome: dict[str, Any]) -> None:
    print("mean (final) input tokens per request; compaction: threshold T, item C tokens")
    for row in outcome["rows"]:
        print(
            f"{row['conversation']}: {row['turns']} turns, full {row['full_mean']:,} "
            f"({row['full_final']:,}), ours {row['ours_mean']:,} ({row['ours_final']:,})"
        )
        for c in row["compaction"]:
            print(
                f"    compaction T={c['threshold']:,} C={c['item_tokens']:,}: "
                f"{c['mean']:,} ({c['final']:,}), {c['compactions']} compactions"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threshold", type=int, nargs="+", default=[4000, 8000, 16000])
    parser.add_argument("--item-tokens", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"{Path(sys.argv[0]).name}: no LoCoMo data at {args.data}", file=sys.stderr)
        sys.exit(2)
    outcome = run(args.data, args.threshold, args.item_tokens)
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        print_table(outcome)


if __name__ == "__main__":
    main()
