"""What prepare() and a fold return: small immutable values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Message = Mapping[str, Any]


@dataclass(frozen=True)
class Prepared:
    """A request made lighter. ``request()`` gives the kwargs for the SDK call."""

    messages: list[Message]
    max_tokens: int
    model: str
    baseline_tokens: int
    prompt_tokens: int
    request_id: int
    conversation_id: str
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    summary_id: int | None = None
    messages_folded: int = 0
    fold_pending: bool = False
    compression_saved_tokens: int = 0
    max_tokens_param: str = "max_tokens"

    @property
    def saved_tokens(self) -> int:
        """Prompt tokens not sent: ``baseline_tokens - prompt_tokens``."""
        return self.baseline_tokens - self.prompt_tokens

    def request(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments for ``client.chat.completions.create``; ``extra`` is merged in."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            self.max_tokens_param: self.max_tokens,
        }
        if self.tools:
            kwargs["tools"] = self.tools
        kwargs.update(extra)
        return kwargs


@dataclass(frozen=True)
class FoldResult:
    """What one fold did: the summary it stored (if any) and what it cost."""

    summary_id: int | None = None
    messages_folded: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    failures: int = 0
    reason: str = ""

    def __add__(self, later: FoldResult) -> FoldResult:
        """Two folds in a row: costs add up, the later summary and reason win."""
        return FoldResult(
            later.summary_id or self.summary_id,
            self.messages_folded + later.messages_folded,
            self.tokens_in + later.tokens_in,
            self.tokens_out + later.tokens_out,
            self.failures + later.failures,
            later.reason or self.reason,
        )
