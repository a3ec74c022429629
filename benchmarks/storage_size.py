"""Bytes the store takes per stored message, beyond the message's own JSON body.

A few long conversations (``--messages`` in all, bodies of about 290 bytes of canonical
JSON) are sent through ``prepare()`` as an app would, a few turns at a time, with folds
run when due (extractive summarizer, no network); then the space each table takes,
its indexes included, is divided by the number of stored messages:

- SQLite: a fresh file, WAL checkpointed and then ``VACUUM``-ed; each table's pages
  and its indexes' pages from ``dbstat``; the file's size is the total.
- PostgreSQL: a fresh database, ``VACUUM FULL``-ed; ``pg_total_relation_size`` per
  table (heap, indexes, TOAST, free-space and visibility maps); the sum of the tables
  is the total.

**The ratio the storage target is about** is that total (the file, or the database's
tables) divided by the stored messages' JSON (the bytes of every ``ct_messages.body``):
the issue asks for at most 2.5x on SQLite after VACUUM. The size before VACUUM is
printed too.

**The history store** is ``ct_messages`` and ``ct_token_counts`` (each message's row and
its token counts, with their indexes): its bytes minus the JSON bodies, per message, is
the figure the storage target is about. The recall index (FTS5 / tsvector, a feature
that copies each message's words) and the ledger, summaries and the rest are printed
on their own lines.

    python benchmarks/storage_size.py [--messages 20000] [--conversations 4]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
        [--time-prepare 50]

``--time-prepare N`` also times, once the stores are filled, N prepare() calls of each
conversation's whole list (everything stored: the read of its deepest summary, which
scans the conversation's newest 64 summaries, the plan and the ledger row): median CPU
and wall per call. Run it with ``PYTHONPATH`` set to another checkout to time that
code on the same data.

Without ``--postgres``, ``$CONTEXT_TRIMMER_TEST_POSTGRES_URL`` is used if set; with
neither, SQLite only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from context_trimmer import Trimmer

HISTORY = ("ct_messages", "ct_token_counts")
RECALL = "ct_message_search"
BODY_BYTES = 290
WORDS = (
    "flight hotel Lisbon budget Maria invoice Tuesday refund euros booking schedule "
    "meeting project deadline Paris contract review draft order shipment warehouse "
    "Berlin customer ticket password reset upgrade plan annual discount receipt train "
    "Madrid taxi airport luggage window aisle seat vegetarian dinner Friday morning "
    "report quarterly revenue forecast spreadsheet slides agenda minutes Kyoto Oslo"
).split()


def body_text(rng: random.Random, role: str) -> str:
    """Words, numbers and references making a canonical JSON body of ~290 bytes."""
    overhead = len(json.dumps({"content": "", "role": role}, separators=(",", ":")))
    target = rng.randint(BODY_BYTES - 60, BODY_BYTES + 60) - overhead
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < target:
        roll = rng.random()
        words.append(
            f"AC{rng.randint(100, 9999)}"
            if roll < 0.08
            else str(rng.randint(1, 500))
            if roll < 0.15
            else rng.choice(WORDS)
        )
    return " ".join(words)[:target]


def conversations(total: int, count: int) -> list[list[dict[str, Any]]]:
    rng = random.Random(total)
    chats = []
    for number in range(count):
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": f"You are agent {number} of Acme Travel. Be brief."}
        ]
        while len(messages) < total // count:
            role = "user" if messages[-1]["role"] != "user" else "assistant"
            messages.append({"role": role, "content": body_text(rng, role)})
        chats.append(messages)
    return chats


def fill(url: str, messages: int, count: int, step: int) -> None:
    """Send each conversation through prepare(), ``step`` messages at a time."""
    with Trimmer(url, summarizer="extractive", background=False) as trimmer:
        for number, chat in enumerate(conversations(messages, count)):
            for end in [*range(step, len(chat), step), len(chat)]:
                prepared = trimmer.prepare(
                    chat[:end], user=f"user-{number}", conversation_id=f"c{number}"
                )
                if prepared.fold_pending:
                    trimmer.compact(chat[:end], user=f"user-{number}", conversation_id=f"c{number}")


def time_prepare(url: str, messages: int, count: int, calls: int) -> tuple[float, float]:
    """Median CPU and wall (ms) of a prepare() of a whole stored conversation."""
    cpu, wall = [], []
    with Trimmer(url, summarizer="extractive", background=False) as trimmer:
        for number, chat in enumerate(conversations(messages, count)):
            who = {"user": f"user-{number}", "conversation_id": f"c{number}"}
            trimmer.prepare(chat, **who)  # this process's first sight of it: not timed
            for _ in range(calls):
                started, started_cpu = time.perf_counter(), time.process_time()
                trimmer.prepare(chat, **who)
                cpu.append(time.process_time() - started_cpu)
                wall.append(time.perf_counter() - started)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def group(table: str) -> str:
    if table in HISTORY:
        return table
    if table.startswith(RECALL):
        return "recall index"
    return table if table.startswith("ct_") else "other (schema, versions)"


def sqlite_sizes(connection: Connection) -> tuple[dict[str, int], int]:
    """Bytes per group from dbstat (indexes under their table), and the file's size."""
    connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    owners = dict(connection.execute(text("SELECT name, tbl_name FROM sqlite_schema")).all())
    sizes: dict[str, int] = defaultdict(int)
    pages_of = text("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
    for name, size in connection.execute(pages_of):
        sizes[group(owners.get(name, name))] += size
    pages = connection.execute(text("PRAGMA page_count")).scalar_one()
    page_size = connection.execute(text("PRAGMA page_size")).scalar_one()
    free = connection.execute(text("PRAGMA freelist_count")).scalar_one()
    sizes["free pages"] += free * page_size
    return dict(sizes), pages * page_size


def postgres_sizes(connection: Connection) -> tuple[dict[str, int], int]:
    """Bytes per group: pg_total_relation_size of every table (indexes, TOAST included)."""
    rows = connection.execute(
        text(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = current_schema()"
        )
    ).all()
    sizes: dict[str, int] = defaultdict(int)
    for name, size in rows:
        sizes[group(name)] += size
    return dict(sizes), sum(size for _name, size in rows)


def report(
    backend: str, connection: Connection, sizes: dict[str, int], total: int
) -> tuple[float, float]:
    """Print bytes per message per group; return the history store's beyond the bodies,
    and the total over the bodies."""
    sqlite = connection.dialect.name == "sqlite"
    length = "length(CAST(body AS BLOB))" if sqlite else "octet_length(body)"
    stored, bodies = connection.execute(
        text(f"SELECT count(*), sum({length}) FROM ct_messages")
    ).one()
    history = sum(sizes.get(name, 0) for name in HISTORY)
    beyond = (history - bodies) / stored
    print(f"\n{backend}: {stored:,} messages stored, JSON bodies {bodies / stored:.0f} B each")
    print(f"  {'part':<28} {'bytes':>12} {'per message':>12}")
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        print(f"  {name:<28} {size:>12,} {size / stored:>12.0f}")
    print(f"  {'total (file / database)':<28} {total:>12,} {total / stored:>12.0f}")
    print("  history store (ct_messages + ct_token_counts, indexes included) beyond the body:")
    print(f"  {beyond:.0f} bytes per message ({history / bodies:.2f}x the bodies)")
    print(f"  total / JSON bodies: {total / bodies:.2f}x")
    summaries = sizes.get("ct_summaries", 0)  # every fold's summary, kept whole
    print(f"  total without ct_summaries / JSON bodies: {(total - summaries) / bodies:.2f}x")
    return beyond, total / bodies


def measure(
    url: str, name: str, vacuum: str, messages: int, count: int, step: int, calls: int
) -> tuple[float, float]:
    """Fill the store at ``url``, size it before and after ``vacuum``, and time
    prepare() on it if ``calls``; the report's figures."""
    sizes_of = sqlite_sizes if url.startswith("sqlite") else postgres_sizes
    fill(url, messages, count, step)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        _sizes, before = sizes_of(connection)
        print(f"\n{name} before {vacuum}: {before:,} bytes")
        connection.execute(text(vacuum))
        sizes, total = sizes_of(connection)
        result = report(f"{name}, after {vacuum}", connection, sizes, total)
        if calls:  # after the sizes: its ledger rows are not counted
            cpu, wall = time_prepare(url, messages, count, calls)
            print(
                f"\n{name}: prepare() of a whole stored conversation: {cpu:.2f} ms CPU, "
                f"{wall:.2f} ms wall (median of {calls * count})"
            )
    engine.dispose()
    return result


def measure_sqlite(messages: int, count: int, step: int, calls: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'storage.db'}"
        return measure(url, "SQLite", "VACUUM", messages, count, step, calls)


@contextmanager
def scratch_database(server: str) -> Iterator[str]:
    """A fresh database on the server of ``server``, dropped afterwards."""
    name = f"ct_storage_{os.getpid()}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def measure_postgres(
    server: str, messages: int, count: int, step: int, calls: int
) -> tuple[float, float]:
    with scratch_database(server) as url:
        return measure(url, "PostgreSQL", "VACUUM FULL", messages, count, step, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--step", type=int, default=20, help="messages added per prepare()")
    parser.add_argument("--postgres", default=os.environ.get("CONTEXT_TRIMMER_TEST_POSTGRES_URL"))
    parser.add_argument("--time-prepare", type=int, default=0, metavar="N")
    arguments = parser.parse_args()
    shape = (arguments.messages, arguments.conversations, arguments.step, arguments.time_prepare)
    print(
        f"{arguments.messages:,} messages in {arguments.conversations} conversations "
        f"({arguments.step} per prepare())"
    )
    results = {"SQLite": measure_sqlite(*shape)}
    if arguments.postgres:
        results["PostgreSQL"] = measure_postgres(arguments.postgres, *shape)
    print("\nafter VACUUM: history store beyond the bodies (B/message), total / JSON bodies:")
    for backend, (beyond, ratio) in results.items():
        print(f"  {backend:<11} {beyond:>6.0f} {ratio:>8.2f}x")


if __name__ == "__main__":
    main()
