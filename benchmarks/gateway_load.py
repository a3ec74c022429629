"""Latency the gateway adds: N concurrent streaming clients, direct vs through it.

Starts the local OpenAI-compatible test server and ``context-trimmer serve`` (each in its
own process, on 127.0.0.1), then runs --clients concurrent streaming clients for
--seconds against the upstream directly, and again through the gateway (each client
resends its 20-message conversation with one new user message every turn). Reports
requests/s and p50/p99 time to the end of each stream.

    python benchmarks/gateway_load.py [--clients 16 --seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def client_loop(
    client: httpx.AsyncClient, url: str, key: str, worker: int, until: float, latencies: list[float]
) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are helpful."}]
    for turn in range(10):
        messages += [
            {"role": "user", "content": f"[{worker}] question {turn} " + "why " * 20},
            {"role": "assistant", "content": f"answer {turn} " + "because " * 20},
        ]
    turn = 0
    while time.monotonic() < until:
        turn += 1
        body = {
            "model": "gpt-4o",
            "stream": True,
            "max_tokens": 200,
            "messages": [*messages, {"role": "user", "content": f"and {turn}?"}],
        }
        started = time.perf_counter()
        async with client.stream(
            "POST", f"{url}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {await response.aread()!r}")
            async for _line in response.aiter_lines():
                pass
        latencies.append(time.perf_counter() - started)


async def measure(url: str, key: str, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    until = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(
            *(client_loop(client, url, key, worker, until, latencies) for worker in range(clients))
        )
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * cuts[98],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    args = parser.parse_args()
    upstream_port, gateway_port = free_port(), free_port()
    cli = [sys.executable, "-m", "context_trimmer.cli"]
    with tempfile.TemporaryDirectory() as folder:
        db = f"sqlite:///{folder}/gateway.db"
        env = {**os.environ, "OPENAI_API_KEY": "upstream-key"}
        key = json.loads(
            subprocess.run(
                [*cli, "keys", "create", "--user", "bench", "--db", db, "--json"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )["key"]
        upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "openai_server.py"), str(upstream_port)],
            stdout=subprocess.DEVNULL,
        )
        gateway = subprocess.Popen(
            [
                *cli,
                "serve",
                "--port",
                str(gateway_port),
                "--db",
                db,
                "--upstream",
                f"http://127.0.0.1:{upstream_port}/v1",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(f"http://127.0.0.1:{upstream_port}/v1/models")
            wait_for(f"http://127.0.0.1:{gateway_port}/healthz")
            direct = asyncio.run(
                measure(f"http://127.0.0.1:{upstream_port}/v1", "x", args.clients, args.seconds)
            )
            through = asyncio.run(
                measure(f"http://127.0.0.1:{gateway_port}/v1", key, args.clients, args.seconds)
            )
        finally:
            for process in (gateway, upstream):
                process.terminate()
                process.wait(timeout=30)
    print(
        f"{args.clients} concurrent streaming clients, {args.seconds:g}s each way, "
        f"{args.workers} gateway worker(s)"
    )
    print(f"{'path':<10} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for name, row in (("direct", direct), ("gateway", through)):
        print(
            f"{name:<10} {row['requests']:>8} {row['rps']:>7.1f} {row['p50_ms']:>7.1f} "
            f"{row['p99_ms']:>7.1f}"
        )
    print(
        f"added by the gateway: p50 {through['p50_ms'] - direct['p50_ms']:.1f} ms, "
        f"p99 {through['p99_ms'] - direct['p99_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
