"""A throwaway PostgreSQL server of a test's own, to stop, restart and freeze at will.

Faults are injected into this server only, never into the shared one the rest of the
suite uses. Run as root, the cluster belongs to the postgres user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL ``bin`` folder, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgServer:
    """``start()``, ``stop()``, ``freeze()`` (SIGSTOP on every server process), ``thaw()``."""

    def __init__(self, bin_dir: Path):
        # Not under pytest's temporary folder: the postgres user must be able to reach it.
        self.home = Path(tempfile.mkdtemp(prefix="context-trimmer-pg-"))
        self.home.chmod(0o755)
        self.directory = self.home / "pgdata"
        self.bin = bin_dir
        self.port = free_port()
        self.frozen: list[int] = []
        self.directory.mkdir()
        if os.getuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", str(self.directory), "-U", "postgres", "-A", "trust", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off"
        log = str(self.directory / "server.log")
        self._run("pg_ctl", "-D", str(self.directory), "-l", log, "-w", "-o", options, "start")

    def stop(self) -> None:
        self.thaw()
        self._run("pg_ctl", "-D", str(self.directory), "-w", "-m", "immediate", "stop")

    def processes(self) -> list[int]:
        """The postmaster and its children."""
        postmaster = int((self.directory / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(entry.name))
        return [postmaster, *children]

    def freeze(self) -> None:
        self.frozen = self.processes()
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):  # exited since (a vacuum worker)
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def close(self) -> None:
        if (self.directory / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def own_server() -> Iterator[PgServer]:
    """A running server for one test module (closed after it); the tests skip without the
    server binaries, or fail when ``CONTEXT_TRIMMER_REQUIRE_POSTGRES=1``."""
    binaries = server_binaries()
    if binaries is None:
        if os.environ.get("CONTEXT_TRIMMER_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL server binaries are needed for the fault tests")
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql-15)")
    server = PgServer(binaries)
    try:
        server.start()
        yield server
    finally:
        server.close()


def fresh_schema_url(server: PgServer) -> str:
    """A URL on ``server`` whose connections use a new, empty schema of their own."""
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    admin.dispose()
    return f"{server.url}?options=-csearch_path%3D{schema}"
