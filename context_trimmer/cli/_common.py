"""What every ``context-trimmer`` command shares: ``--db``, ``--json``, one-line errors,
durations such as ``10m`` or ``30d``, shares such as ``0.05`` or ``off``."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

import click

from .._exceptions import TrimmerError
from .._options import TrimmerOptions
from .._store.db import resolve_url, sqlite_file, url_origin

F = TypeVar("F", bound=Callable[..., Any])
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

db_option = click.option(
    "--db",
    "db_url",
    metavar="URL",
    default=None,
    help="Database URL (default: $CONTEXT_TRIMMER_DB, else the local SQLite file).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
LIBRARY = TrimmerOptions()
"""The one source of defaults: ``replay``, ``compact``, ``worker`` and ``serve`` show the
library's own (a test pins that they agree)."""


def folding_options(function: F) -> F:
    """``--keep-last``, ``--fold-every``, ``--summary-tokens`` and ``--summary-share``,
    defaulting to the library's values (use the ones your app's Trimmer uses)."""
    said = "As the app's Trimmer."
    for decorator in reversed(
        (
            click.option("--keep-last", default=LIBRARY.keep_last, show_default=True, help=said),
            click.option("--fold-every", default=LIBRARY.fold_every, show_default=True, help=said),
            click.option(
                "--summary-tokens", default=LIBRARY.summary_tokens, show_default=True, help=said
            ),
            click.option(
                "--summary-share",
                type=share,
                default=LIBRARY.summary_share,
                show_default=True,
                help=said + " off: a fixed --summary-tokens.",
            ),
        )
    ):
        function = decorator(function)
    return function


def user_errors(function: F) -> F:
    """Report library errors as one clear line, not a traceback."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except TrimmerError as error:
            raise click.ClickException(str(error)) from error

    return wrapper  # type: ignore[return-value]


def emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    """``data`` as JSON with ``--json``, else ``text``."""
    click.echo(json.dumps(data, indent=2) if as_json else text)


def duration(text: str) -> timedelta:
    """``30s``, ``10m``, ``2h`` or ``7d`` as a timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number and s, m, h or d, such as 10m or 30d")
    return timedelta(seconds=float(match.group(1)) * _SECONDS[match.group(2)])


def share(text: str | float | None) -> float | None:
    """A share such as ``0.05``, or ``off`` (or ``none``: None); its range is checked where
    it is used."""
    if text is None or isinstance(text, float):
        return text
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        message = f"{text!r}: use a number in (0, 1], such as 0.05, or off"
        raise click.BadParameter(message) from None


def terminal_width() -> int | None:
    """The width of the terminal the output goes to (``$COLUMNS`` when set), or None when
    it goes to a file or a pipe (then tables keep every column)."""
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        return None
    return max(40, shutil.get_terminal_size().columns)


def existing_db(db_url: str | None, command: str) -> str:
    """The store's URL for a command that only reads or edits what is stored: a SQLite
    file that does not exist is refused, naming the path looked at, rather than created
    (a mistyped path would read as an empty store)."""
    url = resolve_url(db_url)
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise click.ClickException(
            f"no database at {path} (from {url_origin(db_url)}): {command} works on an "
            "existing store and creates none. Check the path (--db URL or "
            "$CONTEXT_TRIMMER_DB); a store is created by its first write: the app, the "
            "gateway, keys create, or replay --db URL."
        )
    return url
