"""Questions asked as the next turn: how much of the history is sent, and is the answer in it?

Each LoCoMo conversation is replayed turn by turn through prepare() with the extractive
summarizer (speaker A is the user, speaker B the assistant, session dates open each
session; due folds run in between). Then every question of categories 1 to 4 is asked
as the next user turn, and for each prepared request it reports:

- the share of the full history's tokens sent (``prompt_tokens / baseline_tokens``);
- whether the answer is in what is sent, the question itself left out: the answer's
  words, in order, among the sent words (case, accents and punctuation ignored).

Answers that are not in the full history either (inferred ones, computed dates) cannot
be present; they are counted as ``answerable`` apart, and the share present is given
over the answerable questions and over all of them.

    python benchmarks/locomo_questions.py [--data PATH] [--keep-last 20 ...]
        [--fold-every 10 ...] [--summary-tokens 4000] [--summary-share 0.085 ... | none]
        [--recall-tokens 0 300 ...] [--recall-share 0.08 ... | none]
        [--leave-one-out 0.12] [--misses] [--json]
        [--db postgresql+psycopg://USER@HOST/DB]

Several values of an option make a sweep over every combination (a replay per summary
setting; the recall settings reuse it). Without options it measures the defaults of
``TrimmerOptions``, with and without recall. ``--leave-one-out SHARE`` then measures
each conversation with the sweep's cell chosen on the other two (the most answers
present among cells sending at most SHARE of the history), so the figure is on a
conversation the settings were not tuned on. ``--db`` replays into a throwaway
database made on that PostgreSQL server for each conversation (default: a temporary
SQLite file).

The data: ``locomo-sample.json`` (three conversations of the LoCoMo benchmark, Maharana
et al. 2024, CC BY-NC 4.0), read from ``../shared/data/`` next to the repository, or
``--data PATH``; it is not part of this project.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from context_trimmer import Trimmer, TrimmerOptions
from context_trimmer._jobs.replay import Conversation, load_conversations, replay
from context_trimmer._store.recall_index import fold, message_text

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo-sample.json"
CATEGORIES = (1, 2, 3, 4)
DEFAULTS = TrimmerOptions()
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None  # the stores are throwaway


def words(text: str) -> str:
    """Lower-case words without accents or punctuation, space-separated and padded."""
    return " " + " ".join(re.findall(r"[^\W_]+", fold(text))) + " "


def present(answer: Any, sent_words: str) -> bool:
    wanted = words(str(answer))
    return wanted.strip() != "" and wanted in sent_words


def questions_of(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [q for q in item["qa"] if q.get("category") in CATEGORIES and "answer" in q]


def ask(
    url: str, conversation: Conversation, qa: Sequence[Mapping[str, Any]], **options: Any
) -> list[dict[str, Any]]:
    """Ask every question after the replayed ``conversation``; one row per question."""
    full_words = words("\n".join(message_text(m) for m in conversation.messages))
    rows = []
    with Trimmer(url, summarizer="extractive", background=False, **options) as trimmer:
        for item in qa:
            question = {"role": "user", "content": str(item["question"])}
            prepared = trimmer.prepare(
                [*conversation.messages, question], conversation_id=conversation.id
            )
            sent = words("\n".join(message_text(m) for m in prepared.messages[:-1]))
            rows.append(
                {
                    "share": prepared.prompt_tokens / prepared.baseline_tokens,
                    "answerable": present(item["answer"], full_words),
                    "present": present(item["answer"], sent),
                    "category": item["category"],
                    "question": item["question"],
                    "answer": str(item["answer"]),
                }
            )
    return rows


@contextlib.contextmanager
def store(db: str | None) -> Iterator[str]:
    """The URL of a fresh, empty store, removed after: a temporary SQLite file, or a
    database made on ``db``'s PostgreSQL server."""
    if db is None:
        with tempfile.TemporaryDirectory(dir=SCRATCH) as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    import sqlalchemy

    server = sqlalchemy.create_engine(db, isolation_level="AUTOCOMMIT")
    name = f"ct_locomo_bench_{os.getpid()}"
    try:
        with server.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        yield sqlalchemy.make_url(db).set(database=name).render_as_string(False)
    finally:
        with server.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        server.dispose()


def measure(
    data: Sequence[tuple[Mapping[str, Any], Conversation]],
    replay_options: Mapping[str, Any],
    recall_settings: Iterable[Mapping[str, Any]],
    db: str | None = None,
) -> list[dict[str, Any]]:
    """One result per recall setting (``recall_tokens``, ``recall_share``), each over
    every conversation (stored on SQLite, or on ``db``'s PostgreSQL server)."""
    settings = [dict(s) for s in recall_settings]
    per_setting: list[list[dict[str, Any]]] = [[] for _ in settings]
    for item, conversation in data:
        with store(db) as url:
            with Trimmer(
                url, summarizer="extractive", background=False, **replay_options
            ) as trimmer:
                replay(trimmer, [conversation])
            for setting, rows in zip(settings, per_setting, strict=True):
                asked = ask(url, conversation, questions_of(item), **replay_options, **setting)
                rows.extend({**row, "conversation": conversation.id} for row in asked)
    return [
        summarize(dict(replay_options, **s), rows)
        for s, rows in zip(settings, per_setting, strict=True)
    ]


def summarize(options: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    conversations = sorted({r["conversation"] for r in rows})
    by_conversation = {}
    for name in conversations:
        mine = [r for r in rows if r["conversation"] == name]
        by_conversation[name] = _figures(mine)
    misses = [
        {"conversation": r["conversation"], "question": r["question"], "answer": r["answer"]}
        for r in rows
        if r["answerable"] and not r["present"]
    ]
    return {
        "options": dict(options),
        **_figures(rows),
        "conversations": by_conversation,
        "misses": misses,
    }


def leave_one_out(results: Sequence[Mapping[str, Any]], limit: float) -> dict[str, Any]:
    """Each conversation measured with the settings chosen on the others: the sweep's cell
    with the most answers present on the other conversations among those sending at most
    ``limit`` of the history there (fewer tokens breaking ties). Pooled over the held-out
    conversations: answers present over answerable, and the mean share sent per question."""
    names = sorted(results[0]["conversations"])
    held = []
    for name in names:

        def pooled(result: Mapping[str, Any], out: str = name) -> tuple[Any, ...]:
            parts = [result["conversations"][n] for n in names if n != out]
            questions = sum(f["questions"] for f in parts)
            sent = sum(f["mean_share_sent"] * f["questions"] for f in parts) / questions
            present = sum(f["present"] for f in parts) / sum(f["answerable"] for f in parts)
            return (sent <= limit, present, -sent)

        best = max(results, key=pooled)
        held.append((name, best["options"], best["conversations"][name]))
    questions = sum(f["questions"] for _, _, f in held)
    return {
        "held_out": [{"conversation": n, "options": o, **f} for n, o, f in held],
        "present": sum(f["present"] for _, _, f in held),
        "answerable": sum(f["answerable"] for _, _, f in held),
        "mean_share_sent": sum(f["mean_share_sent"] * f["questions"] for _, _, f in held)
        / questions,
    }


def print_leave_one_out(loo: Mapping[str, Any]) -> None:
    for row in loo["held_out"]:
        options = " ".join(f"{k}={v}" for k, v in row["options"].items())
        print(
            f"held out {row['conversation']:<8} ({options}): sent {row['mean_share_sent']:.1%}"
            f"  present {row['present']}/{row['answerable']} ({row['present_share']:.1%})"
        )
    print(
        f"leave-one-out: sent {loo['mean_share_sent']:.1%} of the history; answer present "
        f"{loo['present']}/{loo['answerable']} ({loo['present'] / loo['answerable']:.1%})"
    )


def _figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    answerable = [r for r in rows if r["answerable"]]
    return {
        "questions": len(rows),
        "answerable": len(answerable),
        "present": sum(r["present"] for r in answerable),
        "present_share": sum(r["present"] for r in answerable) / max(len(answerable), 1),
        "present_share_all": sum(r["present"] for r in rows) / max(len(rows), 1),
        "mean_share_sent": statistics.mean(r["share"] for r in rows),
    }


def print_result(result: Mapping[str, Any]) -> None:
    options = " ".join(f"{k}={v}" for k, v in result["options"].items())
    print(
        f"{options}: sent {result['mean_share_sent']:.1%} of the history; answer present "
        f"{result['present']}/{result['answerable']} ({result['present_share']:.1%}) of "
        f"the answerable, {result['present_share_all']:.1%} of all {result['questions']}"
    )
    for name, figures in result["conversations"].items():
        print(
            f"    {name:<8} sent {figures['mean_share_sent']:.1%}  present "
            f"{figures['present']}/{figures['answerable']} ({figures['present_share']:.1%})"
        )
    sys.stdout.flush()


def share(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--keep-last", type=int, nargs="+", default=[DEFAULTS.keep_last])
    parser.add_argument("--fold-every", type=int, nargs="+", default=[DEFAULTS.fold_every])
    parser.add_argument("--summary-tokens", type=int, nargs="+", default=[DEFAULTS.summary_tokens])
    parser.add_argument("--summary-share", type=share, nargs="+", default=[DEFAULTS.summary_share])
    parser.add_argument("--recall-tokens", type=int, nargs="+")
    parser.add_argument("--recall-share", type=share, nargs="+", default=[DEFAULTS.recall_share])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--db", help="store on this PostgreSQL server (default: SQLite)")
    parser.add_argument(
        "--leave-one-out",
        type=float,
        metavar="SHARE",
        help="choose the sweep's cell on two conversations (most answers, sending at most "
        "SHARE of the history), measure it on the third, for each",
    )
    parser.add_argument(
        "--misses",
        action="store_true",
        help="list the answerable questions whose answer is not sent",
    )
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(
            f"{args.data}: not found. The LoCoMo sample (Maharana et al. 2024, CC BY-NC 4.0) "
            "is read from ../shared/data/locomo-sample.json next to the repository; it is "
            "not part of this project. Pass --data PATH to a copy of it."
        )
    budgets = args.recall_tokens or sorted({0, DEFAULTS.recall_tokens})
    recall_settings = [
        {"recall_tokens": budget, "recall_share": share}
        for budget in budgets
        for share in (args.recall_share if budget else [DEFAULTS.recall_share])
    ]
    raw = json.loads(args.data.read_text())
    data = list(zip(raw, load_conversations(args.data), strict=True))
    results = []
    grid = itertools.product(
        args.keep_last, args.fold_every, args.summary_tokens, args.summary_share
    )
    for keep_last, fold_every, summary_tokens, summary_share in grid:
        started = time.perf_counter()
        replay_options = {
            "keep_last": keep_last,
            "fold_every": fold_every,
            "summary_tokens": summary_tokens,
            "summary_share": summary_share,
        }
        for result in measure(data, replay_options, recall_settings, args.db):
            results.append(result)
            if not args.json:
                print_result(result)
        if not args.json:
            print(f"    ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.misses and not args.json:
        for result in results:
            for miss in result["misses"]:
                print(f"  miss {miss['conversation']}: {miss['question']!r} -> {miss['answer']!r}")
    if args.leave_one_out and len(results) > 1:
        loo = leave_one_out(results, args.leave_one_out)
        if args.json:
            results.append({"leave_one_out": loo})
        else:
            print_leave_one_out(loo)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
