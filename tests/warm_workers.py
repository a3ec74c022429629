"""Worker processes for the multi-process tests, forked from one warmed-up server.

A spawned worker starts a fresh interpreter and pays, on its own, for importing the
package and loading the o200k_base encoding: seconds per worker on a busy host. With
the "forkserver" start method one server process does that once (importing this module
is its warm-up) and every worker is a fork of it, so the workers still run in processes
of their own, with their own engines and connections, and start in milliseconds.

The fork server is shared by the whole test session and keeps the environment of the
moment it started: pass workers what they need as arguments.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext
from pathlib import Path

import psycopg  # noqa: F401  (the PostgreSQL driver, otherwise imported by each worker)

from context_trimmer import count_tokens

count_tokens([{"role": "user", "content": "warm up"}])  # loads the default encoding

TESTS = str(Path(__file__).resolve().parent)


def warm_workers() -> ForkServerContext:
    """The multiprocessing context whose workers fork from the warmed-up server."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    # The server does not take over this process's sys.path (Python 3.11), and its first
    # entry would be the current directory, which may hold the source tree rather than
    # the installed package: start it with this directory as its path and no such entry.
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ.update(PYTHONPATH=TESTS, PYTHONSAFEPATH="1")
    try:
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    return context
