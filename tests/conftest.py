"""Shared fixtures: an isolated environment, no network but loopback, both databases.

PostgreSQL tests run when ``CONTEXT_TRIMMER_TEST_POSTGRES_URL`` names a server
(``scripts/test`` starts a throwaway one); with ``CONTEXT_TRIMMER_REQUIRE_POSTGRES=1``
(set by CI) a missing server is an error instead of a skip.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from context_trimmer import Trimmer

POSTGRES_ENV = "CONTEXT_TRIMMER_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "CONTEXT_TRIMMER_REQUIRE_POSTGRES"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's files, keys or databases."""
    for variable in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "CONTEXT_TRIMMER_DB",
        "CONTEXT_TRIMMER_MODELS",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


_real_connect = socket.socket.connect


def _loopback_only(sock: socket.socket, address: Any) -> Any:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            allowed = ipaddress.ip_address(host).is_loopback
        except ValueError:
            allowed = host == "localhost"
        if not allowed:
            raise ConnectionRefusedError(f"tests may not reach the network ({host})")
    return _real_connect(sock, address)


@pytest.fixture(autouse=True, scope="session")
def no_network() -> Iterator[None]:
    """Any connection attempt off this machine fails loudly."""
    socket.socket.connect = _loopback_only  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


def postgres_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if not url and os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
        pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {POSTGRES_ENV} is not set")
    return url


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh, empty PostgreSQL schema."""
    base = postgres_url()
    if not base:
        pytest.skip(f"PostgreSQL half: set {POSTGRES_ENV} (scripts/test starts a server)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'history.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    return str(request.getfixturevalue("postgres_schema_url"))


@pytest.fixture
def trimmer(db_url: str) -> Iterator[Trimmer]:
    # Small windows, a fixed summary budget and no recall: the layout these tests check.
    with Trimmer(
        db_url,
        keep_last=4,
        fold_every=2,
        summary_tokens=1000,
        summary_share=None,
        recall_tokens=0,
        summarizer="extractive",
        background=False,
    ) as instance:
        yield instance
