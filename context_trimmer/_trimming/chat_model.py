"""A small client for the library's own model calls (summaries, prompt rewrites).

These calls never share the application's client, stream or callbacks: each helper
owns an ``openai.OpenAI`` client (created lazily, closed with the Trimmer) pointed at
OpenAI or any compatible ``base_url``, and reports what the call cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Completion:
    """An answer's text, what it cost, and why it stopped (``"length"``: cut by
    ``max_tokens``)."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str | None = None


class ChatModel:
    """``complete(system, user, max_tokens)`` against one model; raises openai errors."""

    def __init__(
        self,
        model: str,
        *,
        client: Any = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
    ):
        self.model = model
        self._client = client
        self._owns_client = client is None
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._max_retries = max_retries

    @property
    def client(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                base_url=self._base_url,
                api_key=self._api_key,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )
        return self._client

    def complete(self, system: str | None, user: str, max_tokens: int) -> Completion:
        """One call: ``system`` (None: none; the instructions are then in ``user``)."""
        messages = [{"role": "user", "content": user}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        response = self.client.chat.completions.create(
            model=self.model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
        )
        usage = getattr(response, "usage", None)
        choices = getattr(response, "choices", None) or []
        return Completion(
            (choices[0].message.content if choices else None) or "",
            getattr(usage, "prompt_tokens", 0) or 0,
            getattr(usage, "completion_tokens", 0) or 0,
            getattr(choices[0], "finish_reason", None) if choices else None,
        )

    def close(self) -> None:
        """Close the HTTP client this object created (not one passed in)."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None
