"""Folds through the PostgreSQL task queue: throughput with 1, 2 and 4 worker processes,
and prepare()'s p50/p99 in the app process while folds are due (thread vs queue).

1. **Workers.** --conversations conversations, each with one fold due, are queued as
   jobs; then N ``context-trimmer worker`` processes (already started and registered,
   so their start-up is not timed) run them. Summaries come from a local
   OpenAI-compatible server answering after --latency seconds (an LLM call is mostly
   waiting), or with ``--summarizer extractive`` from the local summarizer (CPU-bound).
   Printed: folds per second (wall), the workers' CPU seconds (from /proc), per N.
2. **prepare() with folds due** (issue 16, item 5): --conversations conversations of
   --turns turns, one turn each in turn, in this process; each prepare() timed (wall
   and this thread's CPU). Three ways: no folds (``background=False``, the reference),
   folds on this process's background thread, folds as jobs for one worker process.

    python benchmarks/fold_queue.py [--db URL] [--workers 1 2 4] [--conversations 32]
        [--summarizer openai|extractive] [--latency 0.5] [--skip-prepare]

(``--workers`` with no number: only the prepare() part.)

Without --db (or $CONTEXT_TRIMMER_TEST_POSTGRES_URL) it starts a throwaway PostgreSQL
with scripts/postgres. Each measurement runs in its own fresh schema.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from openai_server import FakeOpenAI, Reply

from context_trimmer import Trimmer
from context_trimmer._trimming.queue import FOLD_TASK, QUEUE, QueueDispatch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("context-trimmer")
TICK = os.sysconf("SC_CLK_TCK")
OPTIONS: dict[str, Any] = {"keep_last": 6, "fold_every": 10, "recall_tokens": 0}


def turns(n: int, label: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a helpful support agent for Acme."}]
    for i in range(n):
        messages.append(
            {"role": "user", "content": f"[{label}] Question {i}: the box arrived damaged. " * 3}
        )
        messages.append({"role": "assistant", "content": f"Answer {i}: we can replace it. " * 3})
    return messages


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    started = subprocess.run(
        ["bash", str(ROOT / "scripts/postgres"), "start"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        yield started
    finally:
        subprocess.run(["bash", str(ROOT / "scripts/postgres"), "stop", started], check=False)


@contextmanager
def fresh_schema(base: str) -> Iterator[str]:
    schema = f"b_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        polling = ENGINES.pop(f"{base}{separator}options=-csearch_path%3D{schema}", None)
        if polling is not None:
            polling.dispose()
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


ENGINES: dict[str, Any] = {}


def scalar(url: str, sql: str) -> Any:
    engine = ENGINES.get(url) or ENGINES.setdefault(url, create_engine(url, pool_size=1))
    with engine.connect() as connection:
        return connection.execute(text(sql)).scalar()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


@contextmanager
def workers(url: str, count: int, args: argparse.Namespace, base_url: str) -> Iterator[list[int]]:
    """``count`` worker processes, running and registered with the queue."""
    env = {**os.environ, "OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": base_url}
    command = [str(SCRIPT), "worker", "--db", url, "--summarizer", args.summarizer]
    procs = [subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) for _ in range(count)]
    try:
        deadline = time.monotonic() + 300
        while (scalar(url, "SELECT to_regclass('procrastinate_workers')") is None) or scalar(
            url, "SELECT count(*) FROM procrastinate_workers"
        ) < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("the workers did not start")
            time.sleep(0.2)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)


def queued_jobs(url: str, conversations: int) -> list[dict[str, Any]]:
    """One due fold per conversation, queued, then taken off the queue: their arguments."""
    with Trimmer(url, folds="queue", summarizer="extractive", **OPTIONS) as trimmer:
        for i in range(conversations):
            trimmer.prepare(turns(10, f"c{i}"), model="gpt-4o", conversation_id=f"c{i}")
        trimmer.wait_for_background()
    engine = create_engine(url)
    with engine.begin() as connection:
        jobs = [row[0] for row in connection.execute(text("SELECT args FROM procrastinate_jobs"))]
        connection.execute(text("DELETE FROM procrastinate_jobs"))
    engine.dispose()
    return jobs


def through_workers(base: str, count: int, args: argparse.Namespace, server: FakeOpenAI) -> str:
    with fresh_schema(base) as url:
        jobs = queued_jobs(url, args.conversations)
        with (
            workers(url, count, args, server.base_url) as pids,
            Trimmer(url, folds="queue", summarizer="extractive") as app,
        ):
            dispatch = app._folder.dispatch
            assert isinstance(dispatch, QueueDispatch)
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            began = time.perf_counter()
            dispatch.app.configure_task(FOLD_TASK, queue=QUEUE).batch_defer(*jobs)
            done = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            while scalar(url, done) < len(jobs):
                time.sleep(0.1)
            wall = time.perf_counter() - began
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        folded = scalar(url, "SELECT count(*) FROM ct_summaries")
    return (
        f"| {count} | {folded} | {wall:.2f} s | {folded / wall:.1f} | {cpu:.2f} s "
        f"| {cpu / folded * 1000:.0f} ms |"
    )


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def prepare_times(
    url: str, mode: str, args: argparse.Namespace, server: FakeOpenAI
) -> dict[str, Any]:
    """Each prepare()'s wall and CPU time (ms), the conversations interleaved."""
    options = dict(
        OPTIONS, background=mode != "none", folds="queue" if mode == "queue" else "thread"
    )
    summarizer: Any = "extractive"
    if args.summarizer == "openai":
        from context_trimmer import OpenAISummarizer

        summarizer = OpenAISummarizer(base_url=server.base_url, api_key="bench")
    walls, cpus = [], []
    conversations = [turns(args.turns, f"p{i}") for i in range(args.conversations)]
    with Trimmer(url, summarizer=summarizer, **options) as trimmer:
        for turn in range(1, args.turns + 1):
            for i, messages in enumerate(conversations):
                wall, cpu = time.perf_counter(), time.thread_time()
                trimmer.prepare(messages[: 1 + 2 * turn], model="gpt-4o", conversation_id=f"p{i}")
                cpus.append((time.thread_time() - cpu) * 1000)
                walls.append((time.perf_counter() - wall) * 1000)
        trimmer.wait_for_background()
    return {
        "p50": statistics.median(walls),
        "p99": percentile(walls, 0.99),
        "cpu50": statistics.median(cpus),
        "cpu99": percentile(cpus, 0.99),
    }


def prepare_row(
    base: str, mode: str, args: argparse.Namespace, server: FakeOpenAI
) -> dict[str, Any]:
    with fresh_schema(base) as url:
        if mode != "queue":
            return prepare_times(url, mode, args, server)
        with Trimmer(url, folds="queue"):  # the queue's schema, before the worker starts
            pass
        with workers(url, 1, args, server.base_url):
            return prepare_times(url, mode, args, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("CONTEXT_TRIMMER_TEST_POSTGRES_URL"))
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--turns", type=int, default=40, help="for the prepare() part")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per summary")
    parser.add_argument("--summarizer", choices=["openai", "extractive"], default="openai")
    parser.add_argument("--repeat", type=int, default=3, help="prepare() runs per way")
    parser.add_argument("--skip-prepare", action="store_true")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}; summarizer: {args.summarizer}, latency {args.latency} s")
    reply = Reply(
        "- The customer's box arrived damaged; a replacement was offered.", delay=args.latency
    )
    with postgres(args.db) as base, FakeOpenAI(default=lambda _body: reply) as server:
        if args.workers:
            print("\n| workers | folds | wall | folds/s | workers' CPU | CPU per fold |")
            print("|---:|---:|---:|---:|---:|---:|")
        for count in args.workers:
            print(through_workers(base, count, args, server), flush=True)
        if args.skip_prepare:
            return
        print(
            f"\nprepare() with folds due: {args.conversations} conversations x {args.turns} turns,"
        )
        print(f"median of {args.repeat} runs of each percentile")
        print("\n| folds | p50 wall | p99 wall | p50 CPU | p99 CPU |")
        print("|---|---:|---:|---:|---:|")
        for mode in ("none", "thread", "queue"):
            runs = [prepare_row(base, mode, args, server) for _ in range(args.repeat)]
            row = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            print(
                f"| {mode} | {row['p50']:.2f} ms | {row['p99']:.2f} ms | {row['cpu50']:.2f} ms "
                f"| {row['cpu99']:.2f} ms |",
                flush=True,
            )


if __name__ == "__main__":
    main()
