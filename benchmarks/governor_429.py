"""429s with and without the rate-limit governor, against a server that enforces TPM.

A local OpenAI-compatible server (tests/openai_server.py) admits at most --tpm tokens
per --window seconds, counting each request as OpenAI does (characters / 4 +
max_tokens), and answers 429 with x-ratelimit-* and retry-after-ms headers otherwise.
--requests chat requests are sent by --workers threads, three ways:

- plain: the openai client alone (its default 2 retries, honouring retry-after);
- governor: trimmer.wrap(client) with trimming off (keep_last huge, system prompt
  untouched), so only the shared budget, full-jitter retries and waits differ;
- trimmer: trimmer.wrap(client) with the defaults (summary + window + governor).

    python benchmarks/governor_429.py [--requests 200 --workers 16 --tpm 40000 --window 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from openai_server import FakeOpenAI, Reply, TokenLimiter

from context_trimmer import Trimmer


def conversation(index: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a helpful support agent for Acme."}]
    for turn in range(12):
        messages.append(
            {
                "role": "user",
                "content": f"[{index}] Question {turn}: " + "the "
                "order arrived late and the box was damaged, what can I do? " * 2,
            }
        )
        messages.append(
            {
                "role": "assistant",
                "content": f"Answer {turn}: " + "we can "
                "replace it or refund it, whichever you prefer. " * 2,
            }
        )
    messages.append({"role": "user", "content": "Please refund it."})
    return messages


def run(label: str, args: argparse.Namespace, send: Any, server: FakeOpenAI) -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        outcomes = list(pool.map(lambda i: _attempt(send, i), range(args.requests)))
    elapsed = time.perf_counter() - started
    return {
        "mode": label,
        "completed": outcomes.count(True),
        "failed": outcomes.count(False),
        "429s received": server.statuses[429],
        "wall seconds": round(elapsed, 1),
    }


def _attempt(send: Any, index: int) -> bool:
    try:
        send(index)
    except openai.APIError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--tpm", type=int, default=40_000, help="tokens per window")
    parser.add_argument("--window", type=float, default=2.0, help="window in seconds")
    parser.add_argument("--max-tokens", type=int, default=300)
    args = parser.parse_args()
    rows = []
    for mode in ("plain", "governor", "trimmer"):
        limiter = TokenLimiter(limit=args.tpm, window=args.window)
        with (
            FakeOpenAI(default=lambda _b: Reply("Refund issued."), limiter=limiter) as server,
            tempfile.TemporaryDirectory() as folder,
        ):
            client = openai.OpenAI(base_url=server.base_url, api_key="bench")
            if mode == "plain":

                def send(i: int, c: Any = client) -> Any:
                    return c.chat.completions.create(
                        model="gpt-4o", messages=conversation(i), max_tokens=args.max_tokens
                    )

                rows.append(run(mode, args, send, server))
                continue
            options: dict[str, Any] = {"summarizer": "extractive", "max_wait": 120}
            if mode == "governor":
                options |= {"keep_last": 10_000, "system_prompt": "off"}
            max_wait = options.pop("max_wait")
            with Trimmer(f"sqlite:///{folder}/bench.db", **options) as trimmer:
                wrapped = trimmer.wrap(client, max_wait=max_wait)

                def send(i: int, c: Any = wrapped) -> Any:
                    return c.chat.completions.create(
                        model="gpt-4o", messages=conversation(i), max_tokens=args.max_tokens
                    )

                rows.append(run(mode, args, send, server))
    print(
        f"{args.requests} requests, {args.workers} workers, server limit {args.tpm:,} tokens "
        f"per {args.window:g}s"
    )
    print(f"{'mode':<10} {'completed':>9} {'failed':>7} {'429s received':>14} {'wall s':>7}")
    for row in rows:
        print(
            f"{row['mode']:<10} {row['completed']:>9} {row['failed']:>7} "
            f"{row['429s received']:>14} {row['wall seconds']:>7}"
        )


if __name__ == "__main__":
    main()
