"""Recording what a prepared request cost: the ledger row written by prepare(), and the
``usage`` the API reported (or an estimate, marked as one, when it reported none)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from .._prepared import FoldResult, Prepared
from .._responses import field_of
from .._store.ledger import Ledger
from .._text.tokens import REPLY_PRIMING, TokenCounter
from .path import StoredPath
from .plan import Plan


def baseline_tokens(path: StoredPath) -> int:
    """What the app's own messages would have cost as the prompt."""
    return path.total_tokens + REPLY_PRIMING + path.tools_tokens


def request_row(
    path: StoredPath, plan: Plan, reply: int, sync_fold: FoldResult | None
) -> dict[str, Any]:
    """The ledger row of one prepared request."""
    info, max_tokens = path.info, path.max_tokens
    return {
        "conversation_id": path.conversation_id,
        "user": path.user,
        "model": info.name,
        "head_hash": path.hashes[-1],
        "message_count": len(path.messages),
        "messages_sent": len(plan.messages),
        "baseline_tokens": baseline_tokens(path),
        "prompt_tokens": plan.prompt_tokens,
        "summary_id": plan.summary.id if plan.summary else None,
        "summary_tokens": plan.summary_tokens,
        "max_tokens_requested": max_tokens,
        "max_tokens_baseline": max_tokens if max_tokens is not None else info.max_output,
        "max_tokens": reply,
        "summarizer_tokens_in": sync_fold.tokens_in if sync_fold else 0,
        "summarizer_tokens_out": sync_fold.tokens_out if sync_fold else 0,
        "folded_synchronously": sync_fold is not None,
        "summary_failures": sync_fold.failures if sync_fold else 0,
        "compression_saved_tokens": plan.compression_saved,
        "recall_tokens": plan.recall_tokens,
    }


class Recorder:
    """Stores the usage of prepared requests in the ledger."""

    def __init__(self, ledger: Ledger, counter: Callable[[str], TokenCounter]):
        self._ledger = ledger
        self._counter = counter

    def record(
        self, prepared: Prepared, response: Any, connection: Connection | None = None
    ) -> bool:
        """Store the usage of ``response`` (in ``connection``'s transaction, else its
        own); False if already recorded."""
        values = self.usage_of(prepared, response)
        model = field_of(response, "model") or prepared.model
        row = {"request_id": prepared.request_id, "model": model, **values}
        return self._ledger.add_usage(row, connection)

    def usage_of(self, prepared: Prepared, response: Any) -> dict[str, Any]:
        """The API's ``usage``, or an estimate (the exact prepared prompt, the answer's
        text counted) marked as one."""
        usage = field_of(response, "usage")
        if usage is None:
            return {
                "prompt_tokens": prepared.prompt_tokens,
                "cached_tokens": 0,
                "completion_tokens": self._completion_estimate(prepared, response),
                "estimated": True,
            }
        details = field_of(usage, "prompt_tokens_details")
        return {
            "prompt_tokens": int(field_of(usage, "prompt_tokens") or 0),
            "cached_tokens": int(field_of(details, "cached_tokens") or 0),
            "completion_tokens": int(field_of(usage, "completion_tokens") or 0),
            "estimated": False,
        }

    def _completion_estimate(self, prepared: Prepared, response: Any) -> int:
        choices = field_of(response, "choices") or []
        message = field_of(choices[0], "message") if choices else None
        text = field_of(message, "content") if message is not None else None
        return self._counter(prepared.model).text(text) if isinstance(text, str) else 0
