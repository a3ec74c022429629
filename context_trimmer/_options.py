"""The Trimmer's options: one frozen value, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass

from ._exceptions import ConfigurationError

FOLDS = ("thread", "queue")


@dataclass(frozen=True)
class TrimmerOptions:
    """How a :class:`Trimmer` trims; every field is checked when the value is made.

    ``keep_last``: conversational messages sent verbatim after a fold; ``fold_every``:
    how many more may accumulate before the next fold; ``keep_tokens``: optional token
    budget for the verbatim tail. ``summary_tokens``: the summary's budget; with
    ``summary_share`` (say 0.04) it is that share of the history the summary replaces,
    up to ``summary_tokens`` (None: a fixed ``summary_tokens``). ``max_tokens``: the
    default cap on each reply.
    ``recall_tokens``: the budget of the message that brings back the folded turns
    matching the newest user message (0: no recall); with ``recall_share`` (say 0.1)
    it is at most that share of the history's tokens too (None: ``recall_tokens`` alone).
    ``max_prompt_tokens``: fold synchronously above this. ``background``: fold on a
    worker thread when due (else call ``compact()``). ``lease_seconds``: how long a
    worker may hold a fold or rewrite before another may take it over.
    ``cache_bytes``: the memory the in-process caches may hold (the last list seen per
    conversation, mostly); the least recently used conversations are dropped past it.
    ``sync_fold_deadline``: seconds a fold on the request path may wait for the LLM
    summarizer before the extractive one folds instead.
    ``folds``: where a due fold runs: ``"thread"`` (this process's background thread)
    or ``"queue"`` (a job for ``context-trimmer worker``; PostgreSQL only, ``_trimming.queue``).
    """

    # Defaults measured on LoCoMo (benchmarks/locomo_questions.py; README, Benchmarks):
    # with recall_tokens=1500, the cell with the most answers among those sending at
    # most 11.5% of the history (half a point under the 12% goal).
    keep_last: int = 6
    fold_every: int = 10
    keep_tokens: int | None = None
    summary_tokens: int = 4000
    summary_share: float | None = 0.04
    recall_tokens: int = 1500
    recall_share: float | None = 0.1
    max_tokens: int = 1024
    max_prompt_tokens: int | None = None
    background: bool = True
    lease_seconds: float = 120.0
    cache_bytes: int = 64 * 1024 * 1024
    sync_fold_deadline: float = 10.0
    folds: str = "thread"

    def __post_init__(self) -> None:
        check_count("keep_last", self.keep_last, minimum=0)
        check_count("fold_every", self.fold_every, minimum=0)
        check_count("max_tokens", self.max_tokens, minimum=1)
        check_count("summary_tokens", self.summary_tokens, minimum=1)
        check_count("recall_tokens", self.recall_tokens, minimum=0)
        check_share("summary_share", self.summary_share)
        check_share("recall_share", self.recall_share)
        if self.keep_tokens is not None:
            check_count("keep_tokens", self.keep_tokens, minimum=1)
        if self.max_prompt_tokens is not None:
            check_count("max_prompt_tokens", self.max_prompt_tokens, minimum=1)
        check_count("cache_bytes", self.cache_bytes, minimum=0)
        check_seconds("lease_seconds", self.lease_seconds)
        check_seconds("sync_fold_deadline", self.sync_fold_deadline)
        if self.folds not in FOLDS:
            raise ConfigurationError(f"folds must be one of {', '.join(FOLDS)}; got {self.folds!r}")


def check_share(name: str, share: object) -> None:
    """``share`` must be None or a number (not a bool) in (0, 1]."""
    if share is not None and (
        isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1
    ):
        raise ConfigurationError(f"{name} must be a number in (0, 1], such as 0.085; got {share!r}")


def check_seconds(name: str, seconds: object) -> None:
    """``seconds`` must be a number (not a bool) above 0."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ConfigurationError(f"{name} must be a number > 0, got {seconds!r}")


def check_count(name: str, value: object, *, minimum: int) -> None:
    """``value`` must be an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
