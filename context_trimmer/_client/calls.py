"""One intercepted API call (Chat Completions or Responses): what prepare() gets, the
body sent for a model, and how its answer's usage reads.

A wrapped client sees each call as the SDK is about to POST it: the JSON body the SDK
built (``omit`` / ``NOT_GIVEN`` arguments already left out) and the request headers.
``None`` for ``max_tokens``, ``max_completion_tokens`` or ``max_output_tokens`` also
means "not set". The conversation and user come from ``with conversation(...)``, the
``X-Conversation-Id`` / ``X-User-Id`` headers (removed before sending), or ``user``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .._arguments import check_finite
from .._exceptions import ConfigurationError
from .._models import ModelTable
from .._prepared import Prepared
from .responses_api import ChatView, ResponsesStreamSummary, to_chat, to_responses, untrimmable
from .responses_api import usage_view as responses_usage
from .streams import StreamSummary

CONVERSATION_HEADER = "x-conversation-id"
USER_HEADER = "x-user-id"
RAW_HEADER = "x-stainless-raw-response"
RELAY = "relay"
"""The ``X-Stainless-Raw-Response`` value that asks for the answer as bytes
(``_client.relayed``)."""
_OURS = frozenset({CONVERSATION_HEADER, USER_HEADER, RAW_HEADER})
_identity: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "context_trimmer_identity", default=(None, None)
)


@contextmanager
def conversation(conversation_id: str | None = None, user: str | None = None) -> Iterator[None]:
    """Calls made inside belong to this conversation and user (works across awaits)."""
    token = _identity.set((conversation_id, user))
    try:
        yield
    finally:
        _identity.reset(token)


@dataclass(frozen=True)
class Call:
    """A call on its way out: ``body`` and ``headers`` less what the trimmer rewrites or
    reads; ``raw_mode`` is the caller's ``with_raw_response`` ("true") or
    ``with_streaming_response`` ("stream"), or the gateway's "relay" (the answer as
    bytes, see ``_client.relayed``); ``view`` is set for a Responses call."""

    prepare: dict[str, Any]
    body: dict[str, Any]
    headers: dict[str, Any]
    raw_mode: str | None = None
    view: ChatView | None = None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def hides_usage(self) -> bool:
        """Whether the usage chunk is asked for on the caller's behalf and hidden from
        it: a chat stream whose caller did not ask for ``stream_options.include_usage``,
        read by the wrapper or relayed by the gateway (a raw response is the caller's
        to read, untouched). A Responses stream always ends with its usage."""
        if not self.stream or self.view is not None or self.raw_mode not in (None, RELAY):
            return False
        options = self.body.get("stream_options")
        return not (isinstance(options, Mapping) and options.get("include_usage"))

    def body_for(self, prepared: Prepared, model: str, models: ModelTable) -> dict[str, Any]:
        """The body to send to ``model``: the prepared messages and the reply cap (and,
        for a stream that :attr:`hides_usage`, the usage asked for, to record it)."""
        body = self.body_with(prepared.messages, prepared.max_tokens, model, models)
        if self.hides_usage:
            options = self.body.get("stream_options")
            given = dict(options) if isinstance(options, Mapping) else {}
            body["stream_options"] = {**given, "include_usage": True}
        return body

    def body_with(
        self, messages: Sequence[Mapping[str, Any]], cap: int, model: str, models: ModelTable
    ) -> dict[str, Any]:
        """The body to send to ``model`` with ``messages`` (chat form) and reply ``cap``."""
        if self.view is None:
            param = models.get(model).max_tokens_param
            return {**self.body, "model": model, "messages": list(messages), param: cap}
        instructions, items = to_responses(list(messages), self.view)
        body = {**self.body, "model": model, "input": items, "max_output_tokens": cap}
        if instructions is not None:
            body["instructions"] = instructions
        return body

    def headers_for_send(self) -> dict[str, Any]:
        """The caller's headers; the answer always comes back raw (for its headers)."""
        mode = "stream" if self.raw_mode == RELAY else self.raw_mode  # relay: body unread
        return {**self.headers, "X-Stainless-Raw-Response": mode or "true"}

    def usage_view(self, response: Any) -> Any:
        """The answer as the recorder reads it (chat-shaped ``usage``)."""
        return response if self.view is None else responses_usage(response)

    def stream_summary(self) -> StreamSummary:
        return StreamSummary() if self.view is None else ResponsesStreamSummary()


def given(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` without ``omit`` / ``NOT_GIVEN`` values."""
    import openai  # loaded by then (the SDK built ``body``); not at import: Trimmer needs none

    return {k: v for k, v in body.items() if not isinstance(v, (openai.Omit, openai.NotGiven))}


def split_headers(headers: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The headers to forward, and ours (lower-cased names) that must not be."""
    forward: dict[str, Any] = {}
    ours: dict[str, Any] = {}
    for name, value in (headers or {}).items():
        if str(name).lower() in _OURS:
            ours[str(name).lower()] = value
        else:
            forward[name] = value
    return forward, ours


def chat_call(body: Mapping[str, Any], headers: Mapping[str, Any] | None) -> Call:
    """A ``POST /chat/completions`` as a :class:`Call`."""
    rest = given(body)
    check_finite({k: v for k, v in rest.items() if k != "messages"})  # messages: validated
    try:
        messages, model = rest.pop("messages"), rest.pop("model")
    except KeyError as missing:
        raise ConfigurationError(f"chat.completions.create() needs {missing}") from None
    max_tokens = rest.pop("max_tokens", None)
    completion_tokens = rest.pop("max_completion_tokens", None)
    if completion_tokens is not None:
        max_tokens = completion_tokens
    forward, ours = split_headers(headers)
    prepare = _prepare(messages, model, rest.get("tools"), max_tokens, ours, rest)
    return Call(prepare, rest, forward, _raw_mode(ours))


def responses_call(body: Mapping[str, Any], headers: Mapping[str, Any] | None) -> Call | str:
    """A ``POST /responses`` as a :class:`Call`, or why it must pass through untouched."""
    rest = given(body)
    check_finite(rest)  # before anything, a call passed through untouched included
    reason = untrimmable(rest)
    if reason is None and not isinstance(rest.get("model"), str):
        reason = "it names no model"
    if reason is not None:
        return reason
    view = to_chat(rest)
    model = rest.pop("model")
    max_tokens = rest.pop("max_output_tokens", None)
    rest.pop("input")
    rest.pop("instructions", None)
    forward, ours = split_headers(headers)
    prepare = _prepare(view.messages, model, view.tools, max_tokens, ours, rest)
    return Call(prepare, rest, forward, _raw_mode(ours), view)


def _prepare(
    messages: Any,
    model: str,
    tools: Any,
    max_tokens: Any,
    ours: Mapping[str, Any],
    body: Mapping[str, Any],
) -> dict[str, Any]:
    conversation_id, user = _identity.get()
    return {
        "messages": messages,
        "model": model,
        "conversation_id": conversation_id or ours.get(CONVERSATION_HEADER),
        "user": user or ours.get(USER_HEADER) or body.get("user"),
        "tools": tools,
        "max_tokens": max_tokens,
    }


def _raw_mode(ours: Mapping[str, Any]) -> str | None:
    mode = ours.get(RAW_HEADER)
    return mode if mode in ("true", "stream", RELAY) else None
