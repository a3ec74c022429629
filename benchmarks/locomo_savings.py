"""Savings and memory on the LoCoMo conversations, replayed turn by turn.

For each conversation: speaker A is the user, speaker B the assistant, session dates
open each session. Every request goes through prepare(); due folds run in between.
Reports mean and final prompt tokens sent against the full history, and the share of
Q&A answers (categories 1-4) whose text is still in the final prepared context among
those the full history contains.

    python benchmarks/locomo_savings.py [--data ../shared/data/locomo-sample.json]
        [--summarizer extractive|openai] [--keep-last 20] [--fold-every 10]
        [--summary-tokens 4000] [--summary-share 0.085 [0.09 ...] | none] [--json]

The data: three conversations (conv-26, conv-30, conv-41) of LoCoMo (Maharana et al.,
2024, "Evaluating Very Long-Term Conversational Memory of LLM Agents",
https://github.com/snap-research/locomo), licensed CC BY-NC 4.0 and so not shipped with
this project. By default it is read from ../shared/data/locomo-sample.json next to the
repository; --data PATH reads any file in the LoCoMo JSON format instead (the figures in
the README are for those three conversations).

The summary's budget is ``--summary-share`` of the history it replaces, never above
``--summary-tokens``; ``none`` makes it a fixed ``--summary-tokens``. Several shares
make a sweep. --summarizer openai uses OPENAI_API_KEY / OPENAI_BASE_URL (any
compatible endpoint).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from context_trimmer import OpenAISummarizer, Trimmer, TrimmerError
from context_trimmer._jobs.replay import Conversation, load_conversations, replay

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo-sample.json"


MISSING_DATA = """\
{prog}: no LoCoMo data at {path}
This benchmark replays conversations from LoCoMo (Maharana et al., 2024, "Evaluating Very
Long-Term Conversational Memory of LLM Agents", https://github.com/snap-research/locomo).
Its licence is CC BY-NC 4.0 (non-commercial), so the project does not ship it: put the
sample at ../shared/data/locomo-sample.json next to the repository (the default path), or
pass a file in the LoCoMo JSON format with --data PATH (e.g. data/locomo10.json from that
repository; the README's figures are for conv-26, conv-30 and conv-41)."""


def load(path: Path) -> list[tuple[Any, Conversation]]:
    """The LoCoMo samples at ``path`` with their conversations; exits 2 if unreadable."""
    prog = Path(sys.argv[0]).name
    if not path.is_file():
        print(MISSING_DATA.format(prog=prog, path=path), file=sys.stderr)
        sys.exit(2)
    try:
        raw = json.loads(path.read_text())
        return list(zip(raw, load_conversations(path), strict=True))
    except (OSError, ValueError, TrimmerError) as error:
        print(f"{prog}: {path} is not readable LoCoMo JSON: {error}", file=sys.stderr)
        sys.exit(2)


def answers_in(text: str, qa: list[dict[str, Any]]) -> set[int]:
    lowered = text.lower()
    return {i for i, item in enumerate(qa) if str(item["answer"]).lower() in lowered}


def share(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


def run(
    args: argparse.Namespace, summary_share: float | None, data: list[tuple[Any, Conversation]]
) -> dict[str, Any]:
    rows = []
    for item, conversation in data:
        qa = [q for q in item["qa"] if q.get("category") in (1, 2, 3, 4) and "answer" in q]
        summarizer: Any = "extractive" if args.summarizer == "extractive" else OpenAISummarizer()
        with (
            tempfile.TemporaryDirectory() as folder,
            Trimmer(
                f"sqlite:///{folder}/bench.db",
                keep_last=args.keep_last,
                fold_every=args.fold_every,
                summary_tokens=args.summary_tokens,
                summary_share=summary_share,
                recall_tokens=args.recall_tokens,
                summarizer=summarizer,
                background=False,
            ) as trimmer,
        ):
            result = replay(trimmer, [conversation])
            final = trimmer.prepare(conversation.messages)
        full_text = "\n".join(m["content"] for m in conversation.messages)
        sent_text = "\n".join(m["content"] for m in final.messages)
        in_full = answers_in(full_text, qa)
        kept = answers_in(sent_text, qa) & in_full
        rows.append(
            {
                "conversation": conversation.id,
                "messages": len(conversation.messages),
                "requests": result.requests,
                "mean_sent": round(result.prompt_tokens / result.requests),
                "mean_full": round(result.baseline_tokens / result.requests),
                "final_sent": final.prompt_tokens,
                "final_full": final.baseline_tokens,
                "final_ratio": round(final.prompt_tokens / final.baseline_tokens, 4),
                "answers_in_full": len(in_full),
                "answers_kept": len(kept),
                "kept_share": round(len(kept) / len(in_full), 4) if in_full else None,
            }
        )
    totals = {
        "final_ratio_mean": round(statistics.mean(r["final_ratio"] for r in rows), 4),
        "final_ratio_max": max(r["final_ratio"] for r in rows),
        "kept_share_overall": round(
            sum(r["answers_kept"] for r in rows) / sum(r["answers_in_full"] for r in rows), 4
        ),
    }
    return {"summary_share": summary_share, "rows": rows, "totals": totals}


def print_run(args: argparse.Namespace, outcome: dict[str, Any]) -> None:
    print(
        f"summarizer={args.summarizer} keep_last={args.keep_last} "
        f"fold_every={args.fold_every} summary_tokens={args.summary_tokens} "
        f"summary_share={outcome['summary_share']} recall_tokens={args.recall_tokens}"
    )
    print(
        f"{'conversation':<12} {'msgs':>5} {'mean sent':>9} {'mean full':>9} "
        f"{'final sent':>10} {'final full':>10} {'ratio':>6} {'answers kept':>14}"
    )
    for r in outcome["rows"]:
        print(
            f"{r['conversation']:<12} {r['messages']:>5} {r['mean_sent']:>9,} "
            f"{r['mean_full']:>9,} {r['final_sent']:>10,} {r['final_full']:>10,} "
            f"{r['final_ratio']:>6.1%} {r['answers_kept']:>5}/{r['answers_in_full']:<3} "
            f"{r['kept_share']:.0%}"
        )
    totals = outcome["totals"]
    print(
        f"final prompt / full history: mean {totals['final_ratio_mean']:.1%}, "
        f"max {totals['final_ratio_max']:.1%}; "
        f"answers kept overall: {totals['kept_share_overall']:.1%}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        metavar="PATH",
        help="LoCoMo JSON (CC BY-NC, not shipped; default: %(default)s)",
    )
    parser.add_argument("--summarizer", choices=["extractive", "openai"], default="extractive")
    parser.add_argument("--keep-last", type=int, default=20)
    parser.add_argument("--fold-every", type=int, default=10)
    parser.add_argument("--summary-tokens", type=int, default=4000)
    parser.add_argument("--summary-share", type=share, nargs="+", default=[0.085])
    # The summary alone by default; benchmarks/locomo_questions.py measures recall.
    parser.add_argument("--recall-tokens", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    data = load(args.data)
    outcomes = [run(args, value, data) for value in args.summary_share]
    if args.json:
        print(json.dumps({"summarizer": args.summarizer, "runs": outcomes}, indent=2))
        return
    for outcome in outcomes:
        print_run(args, outcome)


if __name__ == "__main__":
    main()
