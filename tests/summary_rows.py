"""Stored summary rows as a test reads them: a superseded one's text decoded from its
delta (``_store.summary_text``), every other column as stored."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection

from context_trimmer._store.summary_text import text_of


def decoded(connection: Connection, rows: Iterable[Any]) -> list[Any]:
    """``rows`` of ct_summaries (all columns), each with its whole text."""
    found = []
    for row in rows:
        values = dict(row._mapping)
        if values.get("base_id") is not None:
            values["text"] = text_of(connection, values["id"])
        found.append(SimpleNamespace(**values))
    return found
