"""System and developer messages, compressed once per distinct prompt.

``SystemPrompts.compress(text)`` is on prepare()'s hot path: a dictionary lookup after
the first time a prompt is seen. Modes:

- ``"safe"`` (default): :func:`compress_safe`, deterministic, computed in process.
- ``"llm"``: a terse rewrite by a chat model, accepted only if :func:`check_rewrite`
  passes. The rewrite runs in the background, under a lease so that one worker of a
  deployment does it; the result (or the rejection and its reason) is stored in SQL
  under the prompt's hash and reused by every process. Until it is ready, the safe
  version is sent, so the rewrite never blocks a request. A failed call is retried
  after the lease expires; a rejected rewrite is final.
- ``"off"``, or any ``Callable[[str], str]`` of your own.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import Table, select

from .._exceptions import ConfigurationError
from .._inline import refuse
from .._store.db import Database, insert_if_absent
from .._store.leases import Leases
from .._store.schema import PromptCompression, utcnow
from .._text.compress import VERSION, Compression, check_rewrite, compress_safe
from .._text.tokens import TokenCounter
from .chat_model import ChatModel, Completion
from .hashing import canonical_json

log = logging.getLogger("context_trimmer")
COMPRESSIONS: Table = PromptCompression.__table__  # type: ignore[assignment]

Mode = Literal["safe", "llm", "off"]
RECHECK_SECONDS = 10.0

REWRITE_PROMPT = """\
Rewrite the system prompt you are given so that it uses as few tokens as possible \
while instructing exactly the same behaviour. Keep, character for character: code, \
JSON, XML and YAML, template placeholders such as {name}, {{name}} and <var>, quoted \
strings, URLs, e-mail addresses, numbers, and every name. Keep every negation and \
every modal word that carries an instruction (never, not, no, do not, must, only, \
always, should, cannot, avoid). Remove only redundancy and filler. Output only the \
rewritten prompt."""


class PromptRewriter:
    """Rewrites a prompt tersely with a chat model (gpt-4o-mini by default)."""

    def __init__(self, model: str = "gpt-4o-mini", **client_options: Any):
        self.model = model
        self.chat = ChatModel(model, **client_options)

    def rewrite(self, prompt: str, max_tokens: int) -> Completion:
        return self.chat.complete(REWRITE_PROMPT, prompt, max_tokens)

    def close(self) -> None:
        self.chat.close()


class CompressionCache:
    """LLM rewrites of system prompts stored in SQL by the prompt's key, for every process."""

    def __init__(self, db: Database):
        self._db = db

    def get(self, key: str) -> Compression | None:
        """The stored compression for ``key``: the accepted rewrite, or the safe version
        with the reason the rewrite was rejected."""
        c = COMPRESSIONS.c
        with self._db.reading() as connection:
            row = connection.execute(
                select(c.text, c.mode, c.original_tokens, c.tokens, c.reason).where(c.key == key)
            ).first()
        if row is None:
            return None
        return Compression(row.text, row.mode, row.original_tokens, row.tokens, row.reason)

    def add(self, values: dict[str, Any]) -> bool:
        """Store a rewrite (or its rejection); False when one was stored already."""
        with self._db.writing() as connection:
            return insert_if_absent(connection, COMPRESSIONS, {**values, "created_at": utcnow()})


class SystemPrompts:
    """The configured compression of system/developer message text, cached."""

    def __init__(
        self,
        mode: Mode | Callable[[str], str],
        *,
        db: Database,
        count: Callable[[str], int],
        schedule: Callable[[Callable[[], None]], None],
        protect: Sequence[str] = (),
        rewriter: PromptRewriter | None = None,
        lease_seconds: float = 120.0,
    ):
        if not callable(mode) and mode not in ("safe", "llm", "off"):
            raise ConfigurationError(
                f"system_prompt must be 'safe', 'llm', 'off' or a callable, not {mode!r}"
            )
        self.mode = mode
        self.protect = tuple(protect)
        self.rewriter = rewriter or (PromptRewriter() if mode == "llm" else None)
        self._cache = CompressionCache(db)
        self._leases = Leases(db)
        self._count = count
        self._schedule = schedule
        self._lease_seconds = lease_seconds
        self._done: dict[str, str] = {}
        self._safe: dict[str, str] = {}
        self._checked: dict[str, float] = {}
        self._message_tokens: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def compress(self, text: str) -> str:
        """What to send instead of ``text``."""
        done = self._done.get(text)
        if done is not None:
            return done
        if callable(self.mode):
            refuse("the app's compression, run once per prompt")  # it may take its time
            return self._remember(text, self.mode(text))
        if self.mode == "off":
            return text
        if self.mode == "safe":
            return self._remember(text, self.safe(text))
        return self._llm(text)

    def compress_message(self, message: Mapping[str, Any]) -> Mapping[str, Any]:
        """``message`` with its text compressed (the same object when nothing changed)."""
        content = message.get("content")
        if isinstance(content, str):
            new_content: Any = self.compress(content)
        elif isinstance(content, list):
            new_content = [
                {**part, "text": self.compress(part["text"])}
                if part.get("type") == "text"
                else part
                for part in content
            ]
        else:
            return message
        return {**message, "content": new_content} if new_content != content else message

    def message_tokens(self, counter: TokenCounter, message: Mapping[str, Any]) -> int:
        """The tokens of a compressed message, counted once per distinct message."""
        key = (counter.key, canonical_json(message))
        tokens = self._message_tokens.get(key)
        if tokens is None:
            tokens = counter.message(message)
            if len(self._message_tokens) < 10_000:
                self._message_tokens[key] = tokens
        return tokens

    def safe(self, text: str) -> str:
        safe = self._safe.get(text)
        if safe is None:
            safe = compress_safe(text, self.protect)
            if len(self._safe) >= 10_000:
                self._safe.clear()  # a bound, not a policy: the common prompts come back
            self._safe[text] = safe
        return safe

    def key(self, text: str) -> str:
        assert self.rewriter is not None
        material = "\0".join(["llm", VERSION, self.rewriter.model, *self.protect, text])
        return hashlib.sha256(material.encode()).hexdigest()

    def _remember(self, text: str, result: str) -> str:
        if len(self._done) < 10_000:
            self._done[text] = result
        return result

    def _llm(self, text: str) -> str:
        key = self.key(text)
        now = time.monotonic()
        with self._lock:
            due = now - self._checked.get(key, -RECHECK_SECONDS) >= RECHECK_SECONDS
            if due:
                self._checked[key] = now
        if due:
            stored = self._cache.get(key)
            if stored is not None:
                return self._remember(text, stored.text)
            self._schedule(lambda: discard(self.rewrite_now(text)))
        return self.safe(text)

    def rewrite_now(self, text: str) -> Compression:
        """The LLM compression of ``text``: stored if any worker made it, else made now
        (unless another worker holds the lease: then the safe version, for now)."""
        key = self.key(text)
        stored = self._cache.get(key)
        if stored is not None:
            return stored
        owner = f"prompt-{threading.get_ident()}-{time.monotonic_ns()}"
        if not self._leases.acquire(f"compress:{key}", owner, self._lease_seconds):
            return self._pending(text, "another worker is rewriting this prompt")
        return self._rewrite_under_lease(text, key, owner)

    def _pending(self, text: str, reason: str) -> Compression:
        safe = self.safe(text)
        return Compression(safe, "safe", self._count(text), self._count(safe), reason)

    def _rewrite_under_lease(self, text: str, key: str, owner: str) -> Compression:
        import openai

        assert self.rewriter is not None
        safe = self.safe(text)
        try:
            answer = self.rewriter.rewrite(safe, max_tokens=self._count(safe))
        except openai.OpenAIError as error:
            log.warning("system prompt rewrite failed, sending the safe version: %s", error)
            # The lease stays until it expires: that is the back-off before a retry.
            return self._pending(text, f"the rewrite call failed: {error}")
        reason = check_rewrite(text, safe, answer.text.strip(), self._count, self.protect)
        kept = safe if reason else answer.text.strip()
        result = Compression(kept, "llm", self._count(text), self._count(kept), reason)
        self._cache.add(
            {
                "key": key,
                "mode": "llm",
                "model": self.rewriter.model,
                "text": result.text,
                "accepted": reason is None,
                "reason": reason,
                "original_tokens": result.original_tokens,
                "tokens": result.tokens,
                "tokens_in": answer.tokens_in,
                "tokens_out": answer.tokens_out,
            }
        )
        self._leases.release(f"compress:{key}", owner)
        if reason:
            log.info("system prompt rewrite rejected: %s", reason)
        self._remember(text, result.text)
        return result

    def close(self) -> None:
        if self.rewriter is not None:
            self.rewriter.close()


def discard(_value: object) -> None:
    """Run for the side effect (the stored rewrite); the result is not needed."""
