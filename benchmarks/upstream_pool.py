"""One upstream against two, under a load one alone cannot carry.

Two local OpenAI-compatible servers (tests/openai_server.py) each admit at most --tpm
tokens per --window seconds, counting each request as OpenAI does (characters / 4 +
max_tokens), and answer 429 (with x-ratelimit-* and retry-after-ms headers) otherwise.
Requests arrive at a fixed rate (--rate per second for --seconds, each on its own
thread, as users of a gateway would), each through trimmer.wrap(...) with trimming off
(so only the send path differs) and --max-wait seconds of patience for the budget:

- one upstream: trimmer.wrap(client_a);
- two upstreams: trimmer.wrap(client_a, client_b), each request sent to the one with the
  most budget left, on to the other at a 429.

Printed per case: requests answered per second, 429s reaching the client (a request
whose budget wait would exceed --max-wait, or that stayed rate-limited after retries),
429s the upstreams sent, the share each upstream served, wall and CPU time.

    python benchmarks/upstream_pool.py [--rate 8 --seconds 20 --tpm 12000 --window 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from openai_server import FakeOpenAI, Reply, TokenLimiter

from context_trimmer import RateLimitBudgetExceeded, RetryPolicy, Trimmer

QUESTION = "My order arrived late and the box was damaged; what can I do about it? " * 12


def messages(index: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful support agent for Acme."},
        {"role": "user", "content": f"[{index}] {QUESTION}"},
    ]


def send(wrapped: openai.OpenAI, index: int, max_tokens: int) -> str:
    """``ok``, ``429`` (a rate limit reached the caller) or ``error``."""
    try:
        wrapped.chat.completions.create(
            model="gpt-4o", messages=messages(index), max_tokens=max_tokens
        )
    except (RateLimitBudgetExceeded, openai.RateLimitError):
        return "429"
    except openai.APIError:
        return "error"
    return "ok"


def run(upstreams: int, args: argparse.Namespace) -> dict[str, Any]:
    servers = [
        FakeOpenAI(lambda _b: Reply("Refund issued."), limiter=TokenLimiter(args.tpm, args.window))
        for _ in range(upstreams)
    ]
    for server in servers:
        server.__enter__()
    clients = [
        openai.OpenAI(base_url=s.base_url, api_key=f"key-{n}") for n, s in enumerate(servers)
    ]
    total = int(args.rate * args.seconds)
    try:
        with (
            tempfile.TemporaryDirectory() as folder,
            Trimmer(
                f"sqlite:///{folder}/bench.db",
                summarizer="extractive",
                keep_last=10_000,
                system_prompt="off",
                recall_tokens=0,
            ) as trimmer,
        ):
            wrapped = trimmer.wrap(*clients, max_wait=args.max_wait, retry=RetryPolicy(4))
            outcomes: list[Future[str]] = []
            cpu, started = time.process_time(), time.perf_counter()
            with ThreadPoolExecutor(max_workers=256) as pool:
                for index in range(total):
                    delay = started + index / args.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    outcomes.append(pool.submit(send, wrapped, index, args.max_tokens))
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.__exit__()
    results = [future.result() for future in outcomes]
    served = [server.statuses[200] for server in servers]
    return {
        "upstreams": upstreams,
        "requests": total,
        "answered": results.count("ok"),
        "per_second": results.count("ok") / wall,
        "client_429s": results.count("429"),
        "errors": results.count("error"),
        "upstream_429s": sum(server.statuses[429] for server in servers),
        "shares": [s / max(1, sum(served)) for s in served],
        "wall": wall,
        "cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=8.0, help="requests arriving per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long they arrive")
    parser.add_argument("--tpm", type=int, default=12_000, help="tokens per window, each")
    parser.add_argument("--window", type=float, default=5.0, help="the limit's window (s)")
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--max-wait", type=float, default=5.0, help="patience for the budget")
    args = parser.parse_args()
    cost = len(str(messages(0))) // 4 + args.max_tokens  # roughly what the servers count
    capacity = args.tpm / args.window / cost
    print(
        f"{os.cpu_count()} cores; {args.rate:g} requests/s for {args.seconds:g} s; each upstream "
        f"admits {args.tpm:,} tokens per {args.window:g} s (~{capacity:.1f} requests/s of "
        f"~{cost} tokens); max_wait {args.max_wait:g} s"
    )
    rows = [run(n, args) for n in (1, 2)]
    print(
        f"{'upstreams':>9} {'requests':>8} {'answered':>8} {'answered/s':>10} "
        f"{'429s to clients':>15} {'other errors':>12} {'429s from upstreams':>19} "
        f"{'share served':>14} {'wall s':>6} {'CPU s':>5}"
    )
    for row in rows:
        share = " / ".join(f"{s:.0%}" for s in row["shares"])
        print(
            f"{row['upstreams']:>9} {row['requests']:>8} {row['answered']:>8} "
            f"{row['per_second']:>10.2f} {row['client_429s']:>15} {row['errors']:>12} "
            f"{row['upstream_429s']:>19} "
            f"{share:>14} {row['wall']:>6.1f} {row['cpu']:>5.1f}"
        )


if __name__ == "__main__":
    main()
