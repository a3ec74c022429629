"""prepare() cost per turn against langchain_core's trim_messages, same messages, same run.

The app sends the full list every turn and one message is added. For each size, the
history is stored once, then each timed turn is one prepare() of the whole list (the
steady state: counts come from the store, nothing is recounted); folds run between
turns, untimed, as the background worker would. trim_messages gets an exact tiktoken
counter (the same per-message rules) and a token budget like the prepared request.

Every figure is measured in its own process (``--processes`` of them, 3 by default),
as CPU time (``time.process_time``) and wall time; the medians are printed with the
machine's core count and load, then the ratios the targets are about: warm prepare()
CPU at 50,000 stored messages against 1,000, trim_messages' CPU against prepare()'s at
20,000, and the cold start (a new process on the stored history: ``Trimmer()``, then
one prepare(), per stored message). Ratios from one run survive a noisy machine better
than absolute figures.

    python benchmarks/prepare_speed.py [--sizes 5000 ...] [--turns 15] [--processes 3]
                                       [--recall-tokens 0]
    python benchmarks/prepare_speed.py --recall [--sizes 10000] [--turns 41]
    python benchmarks/prepare_speed.py --recall --sizes 10000 --turns 21
        --db postgresql+psycopg://USER@HOST/DB [--processes 3]     # SQLite against PostgreSQL
    python benchmarks/prepare_speed.py --recall --text locomo [--sizes 1000 10000 50000]
        [--turns 40] [--processes 3] [--data PATH] [--db ...] [--against OLD_CHECKOUT]
    python benchmarks/prepare_speed.py --cold [--against OLD_CHECKOUT] [--processes 5]
    python benchmarks/prepare_speed.py --first [--sizes 10000] [--processes 3]

``--recall`` times prepare() with recall off and on (the default ``recall_tokens``),
wall and CPU medians, on the same messages, and the app's own call of each turn (it
stores the new messages and recalls); with common words only, and with each message
also naming a rare reference (``ref1234``) that later user turns ask about, so the
search finds and ranks matches. Without ``--db``, on SQLite in this process; with
``--db`` (a PostgreSQL server: a throwaway database is made there for each run), on
SQLite and on PostgreSQL in separate processes, alternating, ``--processes`` of each:
the medians of each and the PostgreSQL / SQLite ratios.

``--recall --text locomo`` does the same on real dialogue: the history is the LoCoMo
sample's sessions (``locomo-sample.json``, read from ``../shared/data/`` next to the
repository or ``--data``; three conversations, speaker A the user), cycled until it
has ``--sizes`` messages; the timed user turns alternate between a LoCoMo question and
the dialogue's next user line, so recall searches real words; each assistant reply is
the dialogue's next line. Each size is measured in ``--processes`` processes (3); the
figures are medians over processes of each process's medians (the added cost: of the
paired differences), questions and dialogue lines apart and together; with
``--against``, an older checkout is measured too, process by process in turn.

``--cold`` times only the cold start (``--sizes``, 1,000 and 50,000 by default), and
with ``--against`` a second source tree (an older checkout of this repository) in the
same run: each process imports the package from one tree (``PYTHONPATH``), the trees
alternate process by process on the same stored histories, so the two slopes compare
under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    trim_messages,
)

from context_trimmer import ModelTable, Trimmer, TrimmerOptions
from context_trimmer._jobs.replay import locomo_conversation
from context_trimmer._text.encodings import get_encoding
from context_trimmer._text.tokens import REPLY_PRIMING, TokenCounter

WORDS = (
    "flight hotel Lisbon budget Maria invoice Tuesday refund 42 euros booking "
    "schedule meeting project deadline Paris contract review draft order"
).split()


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 60))) + "."


def conversation(size: int, rng: random.Random) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful agent."}]
    while len(messages) < size:
        role = "user" if messages[-1]["role"] != "user" else "assistant"
        messages.append({"role": role, "content": text(rng)})
    return messages


def to_langchain(messages: list[dict[str, Any]]) -> list[BaseMessage]:
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](content=m["content"]) for m in messages]


def exact_counter(counter: TokenCounter) -> Any:
    roles = {"system": "system", "human": "user", "ai": "assistant"}

    def count(messages: list[BaseMessage]) -> int:
        return (
            sum(counter.message({"role": roles[m.type], "content": m.content}) for m in messages)
            + REPLY_PRIMING
        )

    return count


def compare_recall(sizes: list[int], turns: int, db: str | None = None) -> None:
    """prepare() with recall off and on (the default ``recall_tokens``) on one store, on
    SQLite (a temporary file) or on ``db`` (a PostgreSQL URL: a throwaway database made
    there and dropped after). Each turn's new message is stored first (timed as the
    ``turn`` column: the app's own call, which stores the new messages and recalls), then
    the turn is prepared by both, in alternating order, so the added cost is the median
    of paired differences, robust to a loaded machine."""
    budget = TrimmerOptions().recall_tokens
    print(
        f"{'stored':>7} {'text':>12} {'wall off':>9} {'wall on':>8} {'added':>6} "
        f"{'CPU off':>8} {'CPU on':>7} {'added':>6} {'turn wall':>10} {'turn CPU':>9}"
        "  (ms, medians)"
    )
    for size in sizes:
        for refs in (False, True):
            url, remove = recall_store(db)
            try:
                off, on, turn = time_recall(url, size, turns, refs, budget)
            finally:
                remove()
            kind = "with refs" if refs else "common words"
            print(
                f"{size:>7,} {kind:>12} {ms(off, 0):>9} {ms(on, 0):>8} {ms(on, 0, off):>6} "
                f"{ms(off, 1):>8} {ms(on, 1):>7} {ms(on, 1, off):>6} {ms(turn, 0):>10} "
                f"{ms(turn, 1):>9}",
                flush=True,
            )


# -- recall on LoCoMo dialogue (``--recall --text locomo``) ---------------------------

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo-sample.json"
KINDS = ("questions", "dialogue", "both")


class Locomo:
    """The LoCoMo sample's dialogue lines (speaker A: user) and questions, to cycle."""

    def __init__(self, path: Path) -> None:
        items = json.loads(path.read_text("utf-8"))
        self.lines = [
            message
            for index, item in enumerate(items)
            for message in locomo_conversation(item, index).messages
            if message["role"] != "system"
        ]
        self.questions = [str(qa["question"]) for item in items for qa in item["qa"]]
        self.next = 0

    def history(self, size: int) -> list[dict[str, Any]]:
        """A system prompt, then the dialogue's lines, cycled, up to ``size`` messages."""
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": "You are a friend, chatting. Remember what was said."}
        ]
        while len(messages) < size:
            messages.append(dict(self.take()))
        return messages

    def take(self, role: str | None = None) -> dict[str, Any]:
        """The dialogue's next line (of ``role``, when given), cycling."""
        while True:
            line = self.lines[self.next % len(self.lines)]
            self.next += 1
            if role is None or line["role"] == role:
                return {"role": line["role"] if role is None else role, "content": line["content"]}


def locomo_worker(
    size: int,
    turns: int,
    db: str | None,
    data: Path,
    then: Callable[[Trimmer], None] | None = None,
    recall_tokens: int | None = None,
) -> dict[str, Any]:
    """(wall, CPU) seconds of each turn's prepare() with recall off and on, on LoCoMo text:
    ``{"questions": [off, on], "dialogue": [off, on]}``, each a list of (wall, CPU);
    ``then``: called with the Trimmer with recall on after the turns, the store open;
    ``recall_tokens``: its budget (None: the default)."""
    source = Locomo(data)
    rng = random.Random(size)
    messages = source.history(size)
    budget = TrimmerOptions().recall_tokens if recall_tokens is None else recall_tokens
    times: dict[str, tuple[list[Any], list[Any]]] = {"questions": ([], []), "dialogue": ([], [])}
    options = {"summarizer": "extractive", "background": False}
    url, remove = recall_store(db)
    try:
        with (
            Trimmer(url, recall_tokens=0, **options) as writer,
            Trimmer(url, recall_tokens=0, **options) as off,
            Trimmer(url, recall_tokens=budget, **options) as on,
        ):
            for trimmer in (writer, off, on):
                trimmer.prepare(messages)
            writer.compact(messages, force=True)
            for turn in range(turns):
                kind = "questions" if turn % 2 == 0 else "dialogue"
                if kind == "questions":
                    asked = {"role": "user", "content": rng.choice(source.questions)}
                else:
                    asked = source.take("user")
                messages.append(asked)
                writer.prepare(messages)  # untimed: stores the new message
                for which in (0, 1) if (turn // 2) % 2 else (1, 0):
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    prepared = (off, on)[which].prepare(messages)
                    times[kind][which].append(
                        (time.perf_counter() - start, time.thread_time() - start_cpu)
                    )
                messages.append(source.take("assistant"))
                if prepared.fold_pending:
                    writer.compact(messages)
            if then is not None:
                then(on)
    finally:
        remove()
    return {kind: list(pair) for kind, pair in times.items()}


def in_trees(
    command_for: Callable[[int], list[str]],
    trees: Mapping[str, str | None],
    sizes: Sequence[int],
    processes: int,
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Each size's worker (``command_for(size)``, printing its JSON result last) in
    ``processes`` processes per source tree (None: this one; else imported from that
    tree), the trees alternating process by process so they share the load."""
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {
        (tree, size): [] for tree in trees for size in sizes
    }
    for _process in range(processes):
        for size in sizes:
            for name, tree in trees.items():
                env = None if tree is None else {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
                output = subprocess.run(
                    command_for(size), check=True, capture_output=True, text=True, env=env
                ).stdout
                runs[name, size].append(json.loads(output.splitlines()[-1]))
    return runs


def compare_recall_locomo(args: argparse.Namespace) -> None:
    """``--recall --text locomo``: each size in ``--processes`` worker processes; with
    ``--against``, another source tree too, process by process in turn (same load)."""
    trees = {"this": None, **({"against": args.against} if args.against else {})}

    def command_for(size: int) -> list[str]:
        command = [sys.executable, __file__, "--worker", "locomo", "--sizes", str(size)]
        command += ["--turns", str(args.turns), "--data", str(args.data)]
        return command + (["--db", args.db] if args.db else [])

    runs = in_trees(command_for, trees, args.sizes, args.processes)
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; LoCoMo text, "
        f"{'PostgreSQL' if args.db else 'SQLite'}, recall_tokens="
        f"{TrimmerOptions().recall_tokens}; medians of {args.processes} processes, each the "
        f"median of {args.turns // 2} turns per kind"
    )
    print(
        f"{'tree':>7} {'stored':>7} {'user turn':>10} {'wall off':>9} {'wall on':>8} "
        f"{'added':>6} {'CPU off':>8} {'CPU on':>7} {'added':>6}  (ms)"
    )
    for size in args.sizes:
        for name in trees:
            for kind in KINDS:
                figures = [_locomo_figures(run, kind) for run in runs[name, size]]
                row = [statistics.median(f[i] for f in figures) * 1000 for i in range(6)]
                print(
                    f"{name:>7} {size:>7,} {kind:>10} {row[0]:>9.2f} {row[1]:>8.2f} "
                    f"{row[2]:>6.2f} {row[3]:>8.2f} {row[4]:>7.2f} {row[5]:>6.2f}",
                    flush=True,
                )


def _locomo_figures(run: dict[str, Any], kind: str) -> list[float]:
    """One process's medians: wall off, on, added (paired), CPU off, on, added (paired)."""
    kinds = ("questions", "dialogue") if kind == "both" else (kind,)
    off = [t for k in kinds for t in run[k][0]]
    on = [t for k in kinds for t in run[k][1]]
    figures = []
    for column in (0, 1):
        figures.append(statistics.median(t[column] for t in off))
        figures.append(statistics.median(t[column] for t in on))
        figures.append(
            statistics.median(b[column] - a[column] for a, b in zip(off, on, strict=True))
        )
    return figures


BACKEND_COLUMNS = (("turn", "the app's turn"), ("off", "recall off"), ("on", "recall on"))


def recall_worker(size: int, turns: int, refs: bool, db: str | None) -> dict[str, Any]:
    """One process's medians (seconds) of :func:`time_recall` on SQLite or on ``db``."""
    url, remove = recall_store(db)
    try:
        off, on, turn = time_recall(url, size, turns, refs, TrimmerOptions().recall_tokens)
    finally:
        remove()
    series = {"off": off, "on": on, "turn": turn}
    return {
        f"{name} {kind}": statistics.median(t[i] for t in times)
        for name, times in series.items()
        for i, kind in enumerate(("wall", "cpu"))
    }


def compare_backends(args: argparse.Namespace) -> None:
    """:func:`recall_worker` on SQLite and on ``args.db`` in separate processes,
    alternating, ``args.processes`` of each per size and text; medians, and the
    PostgreSQL / SQLite ratios (the issue's target: the turn's wall at most 2x)."""
    runs: dict[tuple[int, bool, str], list[dict[str, Any]]] = {}
    backends = {"SQLite": "", "PostgreSQL": args.db}
    for _process in range(args.processes):
        for size in args.sizes:
            for refs in (False, True):
                for name, db in backends.items():
                    command = [sys.executable, __file__, "--worker", "recall", "--sizes"]
                    command += [str(size), "--turns", str(args.turns), f"--db={db}"]
                    command += ["--refs"] if refs else []
                    output = subprocess.run(
                        command, check=True, capture_output=True, text=True
                    ).stdout
                    result = json.loads(output.splitlines()[-1])
                    runs.setdefault((size, refs, name), []).append(result)
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; warm prepare(), "
        f"medians of {args.processes} processes, each the median of {args.turns} turns "
        "(ms; CPU: the calling thread's)"
    )
    header = "".join(f" {label + ' wall':>19} {label + ' CPU':>18}" for _, label in BACKEND_COLUMNS)
    print(f"{'stored':>7} {'text':>12} {'store':>19}{header}")
    for size in args.sizes:
        for refs in (False, True):
            kind = "with refs" if refs else "common words"
            medians = {}
            for name in backends:
                medians[name] = {
                    field: median_of(runs[size, refs, name], field)
                    for field in runs[size, refs, name][0]
                }
                cells = "".join(
                    f" {medians[name][f'{column} wall'] * 1e3:>19.2f} "
                    f"{medians[name][f'{column} cpu'] * 1e3:>18.2f}"
                    for column, _ in BACKEND_COLUMNS
                )
                print(f"{size:>7,} {kind:>12} {name:>19}{cells}")
            ratios = "".join(
                f" {medians['PostgreSQL'][f'{c} wall'] / medians['SQLite'][f'{c} wall']:>18.2f}x"
                f" {medians['PostgreSQL'][f'{c} cpu'] / medians['SQLite'][f'{c} cpu']:>17.2f}x"
                for c, _ in BACKEND_COLUMNS
            )
            print(f"{size:>7,} {kind:>12} {'PostgreSQL/SQLite':>19}{ratios}", flush=True)


def ms(times: list[tuple[float, float]], kind: int, base: Any = ()) -> str:
    """Median of ``times[i][kind]`` (minus ``base[i][kind]``, paired), in milliseconds."""
    values = [t[kind] - (base[i][kind] if base else 0.0) for i, t in enumerate(times)]
    return f"{statistics.median(values) * 1000:.2f}"


def recall_store(db: str | None) -> tuple[str, Any]:
    """A fresh, empty store and what removes it: a temporary SQLite file, or a database
    made on ``db``'s PostgreSQL server."""
    if db is None:
        folder = tempfile.TemporaryDirectory()
        return f"sqlite:///{folder.name}/bench.db", folder.cleanup
    import os

    import sqlalchemy

    server = sqlalchemy.create_engine(db, isolation_level="AUTOCOMMIT")
    name = f"ct_recall_bench_{os.getpid()}"

    def run(statement: str) -> None:
        with server.connect() as connection:
            connection.exec_driver_sql(statement)

    run(f"DROP DATABASE IF EXISTS {name}")
    run(f"CREATE DATABASE {name}")

    def remove() -> None:
        run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        server.dispose()

    return sqlalchemy.make_url(db).set(database=name).render_as_string(False), remove


def time_recall(
    url: str, size: int, turns: int, refs: bool, budget: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], list[tuple[float, float]]]:
    """(wall, CPU) seconds of each turn's prepare() with recall off, and with
    ``recall_tokens=budget``, on the same store and messages (CPU: this thread's), and of
    the call before them that stores the turn's new messages (with recall). With
    ``refs`` each message also names a rare ``refNNNN`` that later user turns ask about."""
    rng = random.Random(size)
    say = (lambda r: f"{text(r)} About ref{r.randint(0, 9999)}.") if refs else text
    messages = conversation(size, rng)
    if refs:
        messages = [messages[0], *({**m, "content": say(rng)} for m in messages[1:])]
    times: tuple[list[tuple[float, float]], list[tuple[float, float]]] = ([], [])
    stores: list[tuple[float, float]] = []
    options = {"summarizer": "extractive", "background": False}
    with (
        Trimmer(url, recall_tokens=budget, **options) as writer,
        Trimmer(url, recall_tokens=0, **options) as off,
        Trimmer(url, recall_tokens=budget, **options) as on,
    ):
        for trimmer in (writer, off, on):
            trimmer.prepare(messages)
        writer.compact(messages, force=True)
        for turn in range(turns):
            messages.append({"role": "user", "content": say(rng)})
            start, start_cpu = time.perf_counter(), time.thread_time()
            writer.prepare(messages)  # stores the new messages, so off and on do the
            # same work but recall, in alternating order
            stores.append((time.perf_counter() - start, time.thread_time() - start_cpu))
            for which in (0, 1) if turn % 2 else (1, 0):
                start, start_cpu = time.perf_counter(), time.thread_time()
                prepared = (off, on)[which].prepare(messages)
                times[which].append((time.perf_counter() - start, time.thread_time() - start_cpu))
            messages.append({"role": "assistant", "content": say(rng)})
            if prepared.fold_pending:
                writer.compact(messages)
    return (*times, stores)


def time_trim(size: int, turns: int, budget: int) -> tuple[float, float]:
    """Median wall and CPU seconds of one trim_messages() call on ``size`` messages."""
    rng = random.Random(size)
    messages = to_langchain(conversation(size, rng))
    counter = exact_counter(TokenCounter(ModelTable().get("gpt-4o")))
    walls, cpus = [], []
    for _ in range(turns):
        messages.append(HumanMessage(content=text(rng)))
        start, start_cpu = time.perf_counter(), time.process_time()
        trim_messages(
            messages,
            max_tokens=budget,
            token_counter=counter,
            strategy="last",
            include_system=True,
            start_on="human",
        )
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
        messages.append(AIMessage(content=text(rng)))
    return statistics.median(walls), statistics.median(cpus)


# -- one measurement per process (``--worker``), medians over processes (main) ---------


def warm_worker(size: int, turns: int, folder: str, recall_tokens: int) -> dict[str, Any]:
    """Store ``size`` messages in ``folder``/SIZE.db, then time warm prepare() turns."""
    rng = random.Random(size)
    messages = conversation(size, rng)
    walls, cpus = [], []
    with Trimmer(
        f"sqlite:///{folder}/{size}.db",
        summarizer="extractive",
        background=False,
        recall_tokens=recall_tokens,
    ) as trimmer:
        trimmer.prepare(messages)
        trimmer.compact(messages, force=True)
        for _ in range(turns):
            messages.append({"role": "user", "content": text(rng)})
            start, start_cpu = time.perf_counter(), time.process_time()
            prepared = trimmer.prepare(messages)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
            messages.append({"role": "assistant", "content": text(rng)})
            if prepared.fold_pending:
                trimmer.compact(messages)
    return {
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "prompt_tokens": prepared.prompt_tokens,
    }


def cold_worker(size: int, folder: str, recall_tokens: int) -> dict[str, Any]:
    """A new process on the history ``warm_worker`` stored: Trimmer(), then one prepare()
    of the whole list plus a new message (the encoding loads during it)."""
    rng = random.Random(size)
    messages = [*conversation(size, rng), {"role": "user", "content": "one more question"}]
    start, start_cpu = time.perf_counter(), time.process_time()
    trimmer = Trimmer(
        f"sqlite:///{folder}/{size}.db",
        summarizer="extractive",
        background=False,
        recall_tokens=recall_tokens,
    )
    made, made_cpu = time.perf_counter(), time.process_time()
    get_encoding("o200k_base")  # what the first prepare() loads: timed on its own
    loaded, loaded_cpu = time.perf_counter(), time.process_time()
    trimmer.prepare(messages)
    done, done_cpu = time.perf_counter(), time.process_time()
    trimmer.close()
    return {
        "init_wall": made - start,
        "init_cpu": made_cpu - start_cpu,
        "encoding_cpu": loaded_cpu - made_cpu,
        "wall": done - loaded,
        "cpu": done_cpu - loaded_cpu,
    }


def first_messages(size: int) -> list[dict[str, Any]]:
    """The history of ``--first``: ``size`` messages ending with a user turn."""
    rng = random.Random(size)
    return [*conversation(size - 1, rng), {"role": "user", "content": text(rng)}]


def first_worker(size: int, folder: str) -> dict[str, Any]:
    """The first prepare() of ``size`` messages on an empty store (default options), then
    what it left: within the limit, every message stored, the fold done after it."""
    messages = first_messages(size)
    get_encoding("o200k_base")  # loaded once per process: not what is compared
    url = f"sqlite:///{folder}/first-{size}-{os.getpid()}.db"
    with Trimmer(url, summarizer="extractive") as trimmer:
        start, start_cpu = time.perf_counter(), time.thread_time()
        prepared = trimmer.prepare(messages)
        wall, cpu = time.perf_counter() - start, time.thread_time() - start_cpu
        info = trimmer.models.get("gpt-4o")
        within = prepared.prompt_tokens + prepared.max_tokens <= info.context_window
        trimmer.wait_for_background()
        after = trimmer.prepare(messages)
        with trimmer._db.reading() as connection:
            stored = connection.exec_driver_sql("SELECT count(*) FROM ct_messages").scalar()
    return {
        "wall": wall,
        "cpu": cpu,
        "prompt_tokens": prepared.prompt_tokens,
        "sent": len(prepared.messages),
        "within": within,
        "stored": stored == size,
        "folded_after": prepared.summary_id is None and after.summary_id is not None,
    }


def trim_first_worker(size: int) -> dict[str, Any]:
    """trim_messages' first call on the ``--first`` messages, cut to the prompt limit
    prepare() works under (gpt-4o's window less the default reply)."""
    counter = TokenCounter(ModelTable().get("gpt-4o"))
    limit = counter.info.context_window - TrimmerOptions().max_tokens
    messages = to_langchain(first_messages(size))
    get_encoding("o200k_base")
    start, start_cpu = time.perf_counter(), time.thread_time()
    kept = trim_messages(
        messages,
        max_tokens=limit,
        token_counter=exact_counter(counter),
        strategy="last",
        include_system=True,
        start_on="human",
    )
    return {
        "wall": time.perf_counter() - start,
        "cpu": time.thread_time() - start_cpu,
        "sent": len(kept),
    }


def measure_first(args: argparse.Namespace) -> None:
    """``--first``: fresh processes, prepare() and trim_messages alternating."""
    sizes = [10000] if args.sizes == [1000, 20000, 50000] else args.sizes
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    for size in sizes:
        runs: dict[str, list[dict[str, Any]]] = {"first": [], "trimfirst": []}
        with tempfile.TemporaryDirectory() as folder:
            for process in range(args.processes):
                order = ("first", "trimfirst") if process % 2 == 0 else ("trimfirst", "first")
                for kind in order:
                    runs[kind].append(in_process(kind, size, folder, args))
        ours, theirs = runs["first"], runs["trimfirst"]
        checks = all(run["within"] and run["stored"] and run["folded_after"] for run in ours)
        print(
            f"{size:,} messages, medians of {args.processes} processes (thread CPU, wall): "
            f"first prepare() {median_of(ours, 'cpu') * 1e3:.0f} ms CPU, "
            f"{median_of(ours, 'wall') * 1e3:.0f} ms wall, {median_of(ours, 'sent'):.0f} "
            f"messages sent ({median_of(ours, 'prompt_tokens'):,.0f} tokens); trim_messages "
            f"{median_of(theirs, 'cpu') * 1e3:.0f} ms CPU, {median_of(theirs, 'wall') * 1e3:.0f}"
            f" ms wall, {median_of(theirs, 'sent'):.0f} messages kept"
        )
        print(
            f"  prepare() / trim_messages: {median_of(ours, 'cpu') / median_of(theirs, 'cpu'):.2f}x"
            f" CPU, {median_of(ours, 'wall') / median_of(theirs, 'wall'):.2f}x wall (target <= 2x);"
            f" {median_of(ours, 'cpu') / size * 1e6:.0f} µs CPU per message; within the window,"
            f" every message stored, folded after: {'yes' if checks else 'NO'}"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def run_worker(args: argparse.Namespace) -> None:
    kind, size = args.worker, args.sizes[0]
    if kind == "locomo":
        print(json.dumps(locomo_worker(size, args.turns, args.db, args.data)))
        return
    if kind == "first":
        print(json.dumps(first_worker(size, args.folder)))
        return
    if kind == "trimfirst":
        print(json.dumps(trim_first_worker(size)))
        return
    if kind == "recall":
        result = recall_worker(size, args.turns, args.refs, args.db or None)
    elif kind == "warm":
        result = warm_worker(size, args.turns, args.folder, args.recall_tokens)
    elif kind == "cold":
        result = cold_worker(size, args.folder, args.recall_tokens)
    else:
        wall, cpu = time_trim(size, max(3, args.turns // 5), args.budget)
        result = {"wall": wall, "cpu": cpu}
    print(json.dumps(result))


def in_process(
    kind: str,
    size: int,
    folder: str,
    args: argparse.Namespace,
    tree: str | None = None,
    **extra: Any,
) -> Any:
    """Run one ``--worker`` process; ``tree``: import the package from that source tree."""
    command = [sys.executable, __file__, "--worker", kind, "--sizes", str(size)]
    command += ["--turns", str(args.turns), "--folder", folder]
    command += ["--recall-tokens", str(args.recall_tokens)]
    command += [f"--{k}={v}" for k, v in extra.items()]
    env = None if tree is None else {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.splitlines()[-1])


def measure_cold(args: argparse.Namespace) -> None:
    """The cold start alone, for this package and (``--against``) another source tree,
    alternating process by process on the same stored histories."""
    sizes = sorted(set(args.sizes))
    trees = {"this": None, **({"against": args.against} if args.against else {})}
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(t, s): [] for t in trees for s in sizes}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            store_history(size, folder)
        for _process in range(args.processes):
            for size in sizes:
                for name, tree in trees.items():
                    runs[name, size].append(in_process("cold", size, folder, args, tree))
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; cold start, medians "
        f"of {args.processes} processes per tree and size, CPU time; SQLite"
    )
    slopes: dict[tuple[str, str], float] = {}
    for name in trees:
        for kind, pick in (("median", statistics.median), ("min", min)):
            cpu = {size: pick(run["cpu"] for run in runs[name, size]) for size in sizes}
            slopes[name, kind] = (cpu[sizes[-1]] - cpu[sizes[0]]) / (sizes[-1] - sizes[0])
            figures = ", ".join(f"{size:,}: {cpu[size] * 1e3:.1f} ms" for size in sizes)
            print(
                f"{name:>8} ({kind:>6}): first prepare() {figures}; "
                f"{slopes[name, kind] * 1e6:.2f} µs CPU per stored message"
            )
        print(f"{'':>8} Trimmer() {median_of(runs[name, sizes[0]], 'init_cpu') * 1e3:.0f} ms CPU")
    if args.against:
        for kind in ("median", "min"):
            ratio = slopes["this", kind] / slopes["against", kind]
            print(f"this tree / against ({kind}s): {ratio:.2f}x the CPU per stored message")


def store_history(size: int, folder: str) -> None:
    """Store the ``size`` messages the cold workers send, as the app's first call would."""
    with Trimmer(
        f"sqlite:///{folder}/{size}.db", summarizer="extractive", background=False
    ) as trimmer:
        trimmer.prepare(conversation(size, random.Random(size)))


def median_of(runs: list[dict[str, Any]], field: str) -> float:
    return statistics.median(run[field] for run in runs)


def measure(args: argparse.Namespace) -> None:
    sizes = sorted(set(args.sizes) | {1000, 20000, 50000})
    warm: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    cold: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    trim: list[dict[str, Any]] = []
    for _process in range(args.processes):
        with tempfile.TemporaryDirectory() as folder:
            for size in sizes:
                warm[size].append(in_process("warm", size, folder, args))
                cold[size].append(in_process("cold", size, folder, args))
            budget = int(statistics.median(run["prompt_tokens"] for run in warm[20000]))
            trim.append(in_process("trim", 20000, folder, args, budget=budget))
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; medians of "
        f"{args.processes} processes, each the median of {args.turns} turns; SQLite; "
        f"recall_tokens={args.recall_tokens}"
    )
    print(
        f"{'stored':>7} {'warm CPU ms':>12} {'warm wall ms':>13} "
        f"{'cold CPU ms':>12} {'cold wall ms':>13}  (cold: first prepare(), encoding loaded)"
    )
    for size in sizes:
        print(
            f"{size:>7,} {median_of(warm[size], 'cpu') * 1e3:>12.2f} "
            f"{median_of(warm[size], 'wall') * 1e3:>13.2f} "
            f"{median_of(cold[size], 'cpu') * 1e3:>12.1f} "
            f"{median_of(cold[size], 'wall') * 1e3:>13.1f}"
        )
    report_ratios(warm, cold, trim)


def report_ratios(
    warm: dict[int, list[dict[str, Any]]],
    cold: dict[int, list[dict[str, Any]]],
    trim: list[dict[str, Any]],
) -> None:
    def cpu(size: int) -> float:
        return median_of(warm[size], "cpu")

    trim_cpu, trim_wall = median_of(trim, "cpu"), median_of(trim, "wall")
    slope = (median_of(cold[50000], "cpu") - median_of(cold[1000], "cpu")) / 49000
    print(
        f"warm prepare() CPU, 50,000 vs 1,000 stored: {cpu(50000) / cpu(1000):.2f}x (target <= 2x)"
    )
    print(
        f"trim_messages at 20,000 (exact counter): {trim_cpu * 1e3:.1f} ms CPU, "
        f"{trim_wall * 1e3:.1f} ms wall; prepare() uses {trim_cpu / cpu(20000):.0f}x less CPU "
        f"(target >= 100x), {trim_wall / median_of(warm[20000], 'wall'):.0f}x less wall"
    )
    print(
        f"cold start: Trimmer() {median_of(cold[1000], 'init_cpu') * 1e3:.0f} ms CPU, loading "
        f"the encoding (once per process) {median_of(cold[1000], 'encoding_cpu') * 1e3:.0f} ms "
        f"CPU, then the first prepare() {slope * 1e6:.2f} µs CPU per stored message "
        "(50,000 vs 1,000; target <= 1)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000, 50000])
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--processes", type=int, default=3, help="separate processes per figure")
    parser.add_argument("--recall-tokens", type=int, default=0, help="0: recall off")
    parser.add_argument("--recall", action="store_true", help="recall off and on")
    parser.add_argument(
        "--text",
        choices=["synthetic", "locomo"],
        default="synthetic",
        help="--recall: the 20-word vocabulary, or LoCoMo dialogue",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="--text locomo: the file")
    parser.add_argument(
        "--worker",
        choices=["warm", "cold", "trim", "locomo", "recall", "first", "trimfirst"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--refs", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--db", help="--recall on this PostgreSQL server (default: SQLite)")
    parser.add_argument("--cold", action="store_true", help="the cold start alone")
    parser.add_argument(
        "--against", help="--cold, --recall --text locomo: also this source tree, alternating"
    )
    parser.add_argument("--first", action="store_true", help="the first prepare() of a history")
    args = parser.parse_args()
    if args.first and not args.worker:
        measure_first(args)
    elif args.cold:
        if args.sizes == parser.get_default("sizes"):
            args.sizes = [1000, 50000]
        measure_cold(args)
    elif args.recall and args.text == "locomo":
        if args.sizes == parser.get_default("sizes"):
            args.sizes = [1000, 10000, 50000]
        if args.turns == parser.get_default("turns"):
            args.turns = 40
        compare_recall_locomo(args)
    elif args.worker:
        run_worker(args)
    elif args.recall and args.db:
        compare_backends(args)
    elif args.recall:
        compare_recall(args.sizes, args.turns)
    else:
        measure(args)


if __name__ == "__main__":
    main()
