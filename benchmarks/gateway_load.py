"""Throughput of the gateway against its upstream: N concurrent streaming clients,
direct and through it, in the same run.

Starts the local OpenAI-compatible test server and ``context-trimmer serve --workers N``
(each in its own processes, on 127.0.0.1, SQLite store), then, for each of --runs runs,
drives --clients concurrent streaming clients for --seconds against the upstream
directly, then through the gateway (each client resends its 20-message conversation
with one new user message every turn). Prints requests/s both ways and their ratio,
p50/p99 time to the end of each stream, and the CPU time (user + system, from /proc) of
the gateway's processes and of the upstream per request; the summary line is the
median of the runs. The machine's core count is printed: the clients, the upstream and
the gateway share it.

    python benchmarks/gateway_load.py [--workers 1 2 4] [--clients 16 --seconds 10 --runs 3]

``--profile FILE`` runs a one-worker gateway with a stack sampler (every 2 ms, every
thread not waiting for work) and writes to FILE the share of the samples in each
function, its own and inclusive.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
PROFILED_SERVE = """
import collections, signal, sys, threading, time
import uvicorn, context_trimmer.gateway
from context_trimmer.cli import main
IDLE = ("select", "wait", "_worker", "get", "sleep", "accept", "poll")
own, inclusive, samples = collections.Counter(), collections.Counter(), [0]
def where(code):
    return code.co_filename.split("site-packages/")[-1] + ":" + code.co_name
def sample():
    me = threading.get_ident()
    while True:
        time.sleep(0.002)
        for ident, frame in sys._current_frames().items():
            if ident == me or frame.f_code.co_name in IDLE:
                continue  # the sampler, or a thread waiting for work
            samples[0] += 1
            own[where(frame.f_code)] += 1
            seen = set()
            while frame is not None:
                seen.add(where(frame.f_code))
                frame = frame.f_back
            inclusive.update(seen)
signal.signal(signal.SIGTERM, lambda *_: None)  # uvicorn re-raises it once stopped
threading.Thread(target=sample, daemon=True).start()
try:
    main(sys.argv[2:], standalone_mode=False)
finally:
    with open(sys.argv[1], "w") as out:
        print(samples[0], "busy samples; share of them in each function:", file=out)
        for title, table in (("own", own), ("inclusive", inclusive)):
            print("--", title, file=out)
            for name, count in table.most_common(70):
                print(f"{100 * count / samples[0]:5.1f}%  {name}", file=out)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 180  # four workers starting on a busy 2-core host
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    said = log.read_text()[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{url} did not come up\n{said}")


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its live descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / TICKS
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return total


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


async def drive(url: str, key: str, clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    until = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(
            *(client_loop(client, url, key, worker, until, latencies) for worker in range(clients))
        )
    return latencies


def measure(url: str, key: str, args: argparse.Namespace, pids: dict[str, int]) -> dict[str, Any]:
    """One load phase: its requests, req/s, latencies, and the CPU per request of each
    process tree in ``pids``."""
    before = {name: tree_cpu(pid) for name, pid in pids.items()}
    latencies = asyncio.run(drive(url, key, args.clients, args.seconds))
    row: dict[str, Any] = {
        "requests": len(latencies),
        "rps": len(latencies) / args.seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * statistics.quantiles(latencies, n=100)[98],
    }
    for name, pid in pids.items():
        row[f"{name}_cpu_ms"] = 1000 * (tree_cpu(pid) - before[name]) / len(latencies)
    return row


@contextmanager
def servers(workers: int, profile: str | None) -> Iterator[tuple[str, str, str, dict[str, int]]]:
    """The upstream and the gateway, running: their URLs, a gateway key, their pids."""
    upstream_port, gateway_port = free_port(), free_port()
    cli = [sys.executable, "-m", "context_trimmer.cli"]
    with tempfile.TemporaryDirectory() as folder, open(Path(folder) / "gateway.log", "w") as errors:
        db = f"sqlite:///{folder}/gateway.db"
        log = Path(errors.name)
        env = {**os.environ, "OPENAI_API_KEY": "upstream-key"}
        created = subprocess.run(
            [*cli, "keys", "create", "--user", "bench", "--db", db, "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        key = json.loads(created.stdout)["key"]
        upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "openai_server.py"), str(upstream_port)],
            stdout=subprocess.DEVNULL,
        )
        serve = ["serve", "--port", str(gateway_port), "--db", db, "--workers", str(workers)]
        serve += ["--upstream", f"http://127.0.0.1:{upstream_port}/v1"]
        command = [*cli, *serve]
        if profile:  # sampled every 2 ms: where the gateway's busy threads are
            command = [sys.executable, "-c", PROFILED_SERVE, profile, *serve]
        gateway = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            wait_for(f"http://127.0.0.1:{upstream_port}/v1/models")
            wait_for(f"http://127.0.0.1:{gateway_port}/healthz", log)
            pids = {"gateway": gateway.pid, "upstream": upstream.pid}
            direct_url = f"http://127.0.0.1:{upstream_port}/v1"
            yield direct_url, f"http://127.0.0.1:{gateway_port}/v1", key, pids
        finally:
            for process in (gateway, upstream):
                process.terminate()
                process.wait(timeout=60)


def bench(workers: int, args: argparse.Namespace) -> dict[str, float]:
    """--runs runs of direct then gateway; prints each, returns the medians."""
    runs: list[dict[str, float]] = []
    with servers(workers, args.profile) as (direct_url, gateway_url, key, pids):
        measure(gateway_url, key, argparse.Namespace(**{**vars(args), "seconds": 1.0}), pids)
        for number in range(1, args.runs + 1):
            direct = measure(direct_url, "x", args, pids)
            through = measure(gateway_url, key, args, pids)
            run = {
                "direct_rps": direct["rps"],
                "gateway_rps": through["rps"],
                "ratio": through["rps"] / direct["rps"],
                "direct_p50": direct["p50_ms"],
                "gateway_p50": through["p50_ms"],
                "gateway_p99": through["p99_ms"],
                "gateway_cpu_ms": through["gateway_cpu_ms"],
                "upstream_cpu_ms": through["upstream_cpu_ms"],
            }
            runs.append(run)
            print(f"  run {number}: " + line(workers, run), flush=True)
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def line(workers: int, row: dict[str, float]) -> str:
    return (
        f"{workers} worker(s): direct {row['direct_rps']:6.1f} req/s, gateway "
        f"{row['gateway_rps']:6.1f} req/s, ratio {row['ratio']:.2f}; p50 direct "
        f"{row['direct_p50']:.1f} ms, gateway {row['gateway_p50']:.1f} ms (p99 "
        f"{row['gateway_p99']:.1f}); CPU/request gateway {row['gateway_cpu_ms']:.2f} ms, "
        f"upstream {row['upstream_cpu_ms']:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3, help="runs per worker count (median)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="gateway worker processes"
    )
    parser.add_argument("--profile", help="sample a one-worker gateway's stacks into FILE")
    args = parser.parse_args()
    if args.profile:
        args.workers = [1]
    print(
        f"{os.cpu_count()} cores; {args.clients} concurrent streaming clients, "
        f"{args.seconds:g} s per phase, median of {args.runs} runs",
        flush=True,
    )
    results = {workers: bench(workers, args) for workers in args.workers}
    print("medians:")
    print(
        "| gateway workers | direct req/s | gateway req/s | ratio | gateway p50 | gateway p99 "
        "| gateway CPU/request |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for workers, row in results.items():
        print(
            f"| {workers} | {row['direct_rps']:.1f} | {row['gateway_rps']:.1f} | "
            f"{row['ratio']:.2f}x | {row['gateway_p50']:.1f} ms | {row['gateway_p99']:.1f} ms | "
            f"{row['gateway_cpu_ms']:.2f} ms |"
        )


if __name__ == "__main__":
    main()
