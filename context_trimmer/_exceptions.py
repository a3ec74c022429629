"""Every error context-trimmer raises on purpose derives from one base class.

    TrimmerError
    ├── InvalidMessagesError        a message list the Chat Completions API would reject
    ├── EncodingUnavailableError    tiktoken's BPE files could not be loaded offline
    ├── ConfigurationError          an argument or setting that cannot work
    ├── StoreError                  the history database could not be reached, opened or used
    ├── PromptTooLargeError         even the smallest valid request exceeds the limit
    ├── SummarizerError             a summary could not be made (never stored, never sent)
    ├── RateLimitBudgetExceeded     the shared rate-limit budget would need too long a wait
    └── QuotaExceeded               a user's token quota for a minute or a day is spent

Catch ``TrimmerError`` to handle them all. Each carries the context a caller needs to
act: which message and which field, which limit, which database.
"""

from __future__ import annotations


class TrimmerError(Exception):
    """Base class of every error raised by context-trimmer."""


class InvalidMessagesError(TrimmerError, ValueError):
    """A message list the Chat Completions API would reject.

    ``index`` is the position of the offending message (``None`` for the list itself)
    and ``field`` the key at fault, e.g. ``"role"`` or ``"tool_calls[0].id"``.
    Nothing is written to the database when this is raised.
    """

    def __init__(self, problem: str, *, index: int | None = None, field: str | None = None):
        self.problem = problem
        self.index = index
        self.field = field
        where = "messages" if index is None else f"messages[{index}]"
        if field:
            where += f".{field}"
        super().__init__(f"{where}: {problem}")


class EncodingUnavailableError(TrimmerError):
    """tiktoken's encoding files could not be loaded without the network."""


class ConfigurationError(TrimmerError, ValueError):
    """An argument or setting that cannot work, with what to change. ``param`` names the
    request field at fault when one does (the gateway answers it as the 400's ``param``)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class StoreError(TrimmerError):
    """The history database could not be reached, opened, migrated, read or written.

    Every database failure reaches the caller as this error, whatever the driver
    (SQLAlchemy, psycopg, sqlite3) or the operating system said; the original is its
    ``__cause__``. ``url`` is the store's URL without its password; the message says
    what failed and what to check.
    """

    def __init__(self, message: str, *, url: str | None = None):
        self.url = url
        super().__init__(message)


class PromptTooLargeError(TrimmerError):
    """The smallest request that keeps the newest user turn still exceeds the limit."""

    def __init__(self, message: str, *, prompt_tokens: int, limit: int):
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        super().__init__(message)


class SummarizerError(TrimmerError):
    """A summarizer failed or answered with something that is not a summary.

    Such an answer is never stored and never sent; ``tokens_in`` / ``tokens_out`` are
    what the failed call cost, when the API reported it.
    """

    def __init__(self, message: str, *, tokens_in: int = 0, tokens_out: int = 0):
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        super().__init__(message)


class RateLimitBudgetExceeded(TrimmerError):
    """Sending now would exceed the API key's rate limit, and waiting for the reset
    would take longer than the configured bound (``wait_seconds`` says how long)."""

    def __init__(self, message: str, *, model: str, wait_seconds: float):
        self.model = model
        self.wait_seconds = wait_seconds
        super().__init__(message)


class QuotaExceeded(TrimmerError):
    """``user`` has spent their tokens for the ``window`` (``"minute"`` or ``"day"``)."""

    def __init__(
        self, message: str, *, user: str, window: str, used: int, limit: int, retry_after: float
    ):
        self.user = user
        self.window = window
        self.used = used
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(message)
