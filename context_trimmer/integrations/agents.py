"""An OpenAI Agents SDK ``Session`` whose history lives in the trimmer's store and whose
reads are trimmed.

``TrimmerSession(session_id, trimmer)`` keeps every item the runner adds (messages,
function calls and their outputs) in the store as chat messages, the conversion the
wrapped client uses for ``responses.create`` (``_client.responses_api``), and remembers where
the session's history ends (``ct_sessions``). What the runner reads back,
``get_items()``, is what prepare() would send for that history: the summary of the
folded part, then the window of the newest items; so each run sends fewer tokens while
the store keeps everything (``trimmer.export(user, session_id)``).

Recall needs the new input, which the runner hands only to
``RunConfig(session_input_callback=session.recall)``: that callback rebuilds the view for
history plus the new input, with the stored turns that match the new question placed
right before it. Without it, the runner gets summary + window alone.

Reasoning items are not stored (the wrapper does not store them either: they travel
with the request only), nor can items the conversion does not know be (a ``compaction``
item from OpenAI's server-side compaction, a hosted tool's call): ``add_items`` refuses
them with :class:`~context_trimmer.ConfigurationError`. Do not wrap a TrimmerSession
in ``OpenAIResponsesCompactionSession``: use one or the other (``docs/agents.md``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .._client.responses_api import chat_to_items, to_chat, untrimmable
from .._exceptions import ConfigurationError
from .._trimmer import Trimmer

__all__ = ["TrimmerSession"]

Item = Any
"""An Agents SDK ``TResponseInputItem`` (a TypedDict: a plain dict at run time)."""


def _key(message: Mapping[str, Any]) -> str:
    return json.dumps(message, sort_keys=True, ensure_ascii=False, default=str)


class TrimmerSession:
    """An Agents SDK session (``Runner.run(agent, text, session=...)``) stored by
    ``trimmer``. ``user`` labels the history (erasure, export, quotas); ``model`` is
    the model whose tokenizer and context window the trimming counts with."""

    session_settings: Any = None

    def __init__(
        self, session_id: str, trimmer: Trimmer, *, user: str | None = None, model: str = "gpt-4o"
    ):
        if not session_id:
            raise ConfigurationError("TrimmerSession needs a non-empty session_id")
        self.session_id = session_id
        self.trimmer = trimmer
        self.user = user
        self.model = model
        self._written: set[str] = set()  # what this session wrote itself (summary, recall)

    # -- the Session protocol ---------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[Item]:
        """The trimmed history: summary, then the newest items (the last ``limit``)."""
        items = await asyncio.to_thread(self._view, [])
        return items if limit is None else items[-limit:] if limit > 0 else []

    async def add_items(self, items: list[Item]) -> None:
        """Store ``items`` after the session's history (what the session wrote itself,
        the recall message, is left out)."""
        await asyncio.to_thread(self._add, list(items))

    async def pop_item(self) -> Item | None:
        """Remove the newest stored item and return it (see :meth:`_pop`)."""
        return await asyncio.to_thread(self._pop)

    async def clear_session(self) -> None:
        """Erase the session from the store, as ``trimmer.forget(user, session_id)``."""
        await asyncio.to_thread(self.trimmer.forget, self.user, self.session_id)

    # -- the recall hook --------------------------------------------------------------

    async def recall(self, history: list[Item], new_items: list[Item]) -> list[Item]:
        """``RunConfig(session_input_callback=session.recall)``: the view for history plus
        ``new_items``, with the stored turns matching the new question before it."""
        view = await asyncio.to_thread(self._view, new_items)
        return [*view, *new_items]

    # -- the work, on a worker thread -------------------------------------------------

    def _history(self) -> list[dict[str, Any]]:
        return self.trimmer._session_history(self.session_id, self.user)

    def _view(self, new_items: Sequence[Item]) -> list[Item]:
        """The items to send before ``new_items``: summary, recall, window."""
        stored = self._history()
        new = _as_chat(new_items)
        messages = [*stored, *new]
        if not messages:
            return []
        view = self.trimmer._session_view(
            messages,
            model=self.model,
            user=self.user,
            conversation_id=self.session_id,
            recalling=bool(new),
        )
        view = view[: len(view) - len(new)] if new else view
        known = {_key(m) for m in messages}
        self._written.update(_key(m) for m in view if _key(m) not in known)
        return chat_to_items(view)

    def _add(self, items: list[Item]) -> None:
        new = [m for m in _as_chat(items) if _key(m) not in self._written]
        if new:
            messages = [*self._history(), *new]
            self.trimmer._session_save(self.session_id, self.user, self.model, messages)

    def _pop(self) -> Item | None:
        """The head moves back one stored message (its text stays stored, as every
        message does, until ``clear_session``/``forget``); when that message held
        several items (parallel function calls), the others are stored back. A summary
        that already covers the popped turn keeps it: popping corrects the history the
        runner reads next, it does not erase what was summarized. Popping the only item
        left empties the session, which erases it (as ``clear_session``)."""
        popped = self.trimmer._session_pop(self.session_id, self.user, self.model)
        if popped is None:
            return None
        message, only = popped
        if only:  # the session empties: what it stored would be out of any erasure's reach
            self.trimmer.forget(self.user, self.session_id)
        items = chat_to_items([message])
        if len(items) > 1:
            self._add(items[:-1])
        return items[-1] if items else None


def _as_chat(items: Sequence[Item]) -> list[dict[str, Any]]:
    """``items`` as chat messages (the wrapper's conversion); reasoning items drop out."""
    given = [dict(item) for item in items if isinstance(item, Mapping)]
    if len(given) != len(items):
        raise ConfigurationError("TrimmerSession.add_items() takes Responses input items (dicts)")
    given = [item for item in given if item.get("type") != "reasoning"]
    if not given:
        return []
    reason = untrimmable({"input": given})
    if reason is not None:
        raise ConfigurationError(
            f"TrimmerSession cannot store these items: {reason}. A compaction item belongs "
            "to OpenAI's server-side compaction: use OpenAIResponsesCompactionSession (or a "
            "plain session) for that conversation, not both (see docs/agents.md)."
        )
    return [dict(m) for m in to_chat({"input": given}).messages]
