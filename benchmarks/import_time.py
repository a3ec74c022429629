"""What importing the package costs, against importing the OpenAI SDK alone.

Each statement runs in ``--runs`` fresh interpreters (``python -c STATEMENT``),
alternating, so a change of machine load hits every statement alike. Printed per
statement: the median wall time, CPU time (user + system of the process) and peak RSS,
and the ratio of the medians to ``import openai``'s.

- ``import openai``: the reference;
- ``import context_trimmer``: the package (its names load on first use);
- ``from context_trimmer import Trimmer``: what an app that trims pays;
- ``context-trimmer --help``: the CLI's start-up (``python -m context_trimmer.cli --help``).

    python benchmarks/import_time.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

STATEMENTS = {
    "import openai": ["-c", "import openai"],
    "import context_trimmer": ["-c", "import context_trimmer"],
    "from context_trimmer import Trimmer": ["-c", "from context_trimmer import Trimmer"],
    "context-trimmer --help": ["-m", "context_trimmer.cli", "--help"],
}


def run(arguments: list[str]) -> tuple[float, float, float]:
    """Wall s, CPU s, peak RSS MB of one fresh interpreter."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *arguments], stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"failed: {arguments}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    for arguments in STATEMENTS.values():
        run(arguments)  # warm the file cache and the bytecode
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in STATEMENTS}
    for _ in range(args.runs):
        for name, arguments in STATEMENTS.items():
            runs[name].append(run(arguments))
    medians = {
        name: tuple(statistics.median(r[i] for r in results) for i in range(3))
        for name, results in runs.items()
    }
    wall0, cpu0, _rss0 = medians["import openai"]
    for name, (wall, cpu, rss) in medians.items():
        print(
            f"{name:<38} wall {wall * 1000:7.0f} ms ({wall / wall0:.2f}x)  "
            f"CPU {cpu * 1000:7.0f} ms ({cpu / cpu0:.2f}x)  peak RSS {rss:5.0f} MB"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
