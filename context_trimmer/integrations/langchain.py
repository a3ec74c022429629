"""LangChain 1.x agents: ``create_agent(model, tools, middleware=[TrimmerMiddleware(trimmer)])``.

Before each model call the middleware prepares the agent's messages (system message
included) with the Trimmer: the model sees ``[system][summary][recent turns]`` and gets
``max_tokens`` by the Trimmer's policy; after it, the usage the model reported is
recorded. The conversation is the agent's thread (``configurable.thread_id``) when the
run has one. Messages prepare() keeps verbatim reach the model as the very same
LangChain objects. Install with ``pip install '.[langchain]'`` from the checkout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    SystemMessage,
    convert_to_messages,
    convert_to_openai_messages,
)
from langchain_core.utils.function_calling import convert_to_openai_tool

from .._prepared import Prepared
from .._trimmer import Trimmer
from ._messages import chat_usage, restore

__all__ = ["TrimmerMiddleware"]

Handler = Callable[[ModelRequest], ModelResponse]
AsyncHandler = Callable[[ModelRequest], Awaitable[ModelResponse]]


class TrimmerMiddleware(AgentMiddleware):
    """Agent middleware that sends each model call through ``trimmer.prepare()``.

    ``model``: the name to count tokens and cap replies for (default: the chat
    model's own ``model_name``). ``conversation_id`` / ``user``: fixed ones (default:
    the run's ``thread_id``, else inferred from the messages).
    """

    def __init__(
        self,
        trimmer: Trimmer,
        *,
        model: str | None = None,
        conversation_id: str | None = None,
        user: str | None = None,
    ):
        super().__init__()
        self.trimmer = trimmer
        self.model = model
        self.conversation_id = conversation_id
        self.user = user

    def wrap_model_call(self, request: ModelRequest, handler: Handler) -> Any:
        prepared, chat, originals = self._prepare(request)
        response = handler(self._trimmed(request, prepared, chat, originals))
        self.trimmer.record(prepared, usage_of(response, prepared))
        return response

    async def awrap_model_call(self, request: ModelRequest, handler: AsyncHandler) -> Any:
        prepared, chat, originals = await asyncio.to_thread(self._prepare, request)
        response = await handler(self._trimmed(request, prepared, chat, originals))
        await self.trimmer.arecord(prepared, usage_of(response, prepared))
        return response

    def _prepare(
        self, request: ModelRequest
    ) -> tuple[Prepared, list[dict[str, Any]], list[BaseMessage]]:
        originals: list[BaseMessage] = list(request.messages)
        if request.system_message is not None:
            originals.insert(0, request.system_message)
        chat: list[dict[str, Any]] = convert_to_openai_messages(originals)
        tools = [convert_to_openai_tool(tool) for tool in request.tools]
        max_tokens = request.model_settings.get(
            "max_tokens", getattr(request.model, "max_tokens", None)
        )
        prepared = self.trimmer.prepare(
            chat,
            model=self.model or model_name(request.model),
            conversation_id=self.conversation_id or thread_id(),
            user=self.user,
            tools=tools or None,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        )
        return prepared, chat, originals

    def _trimmed(
        self,
        request: ModelRequest,
        prepared: Prepared,
        chat: list[dict[str, Any]],
        originals: list[BaseMessage],
    ) -> ModelRequest:
        restored = restore(prepared.messages, chat, originals, _to_langchain)
        messages = cast("list[AnyMessage]", restored)
        system = None
        if request.system_message is not None and isinstance(messages[0], SystemMessage):
            system = cast(SystemMessage, messages.pop(0))
        settings = {**request.model_settings, "max_tokens": prepared.max_tokens}
        return request.override(messages=messages, system_message=system, model_settings=settings)


def _to_langchain(message: Mapping[str, Any]) -> BaseMessage:
    return convert_to_messages([dict(message)])[0]


def model_name(model: Any) -> str:
    """The model name a LangChain chat model calls (``model_name`` or ``model``)."""
    for attribute in ("model_name", "model", "model_id"):
        name = getattr(model, attribute, None)
        if isinstance(name, str) and name:
            return name
    return "gpt-4o"


def thread_id() -> str | None:
    """The running graph's ``configurable.thread_id``, if any."""
    try:
        from langgraph.config import get_config

        configurable = get_config().get("configurable") or {}
    except (ImportError, RuntimeError):
        return None
    value = configurable.get("thread_id")
    return str(value) if value is not None else None


def usage_of(response: Any, prepared: Prepared) -> dict[str, Any]:
    """The model's ``usage_metadata`` in the recorder's shape (estimated when absent)."""
    messages = response.result if isinstance(response, ModelResponse) else [response]
    answer = next((m for m in messages if isinstance(m, AIMessage)), None)
    usage = answer.usage_metadata if answer is not None else None
    model = (answer.response_metadata.get("model_name") if answer is not None else None) or (
        prepared.model
    )
    if not usage:
        text = answer.text if answer is not None else ""
        return {"model": model, "choices": [{"message": {"content": text}}]}
    details: Mapping[str, Any] = usage.get("input_token_details") or {}
    return chat_usage(
        model, usage.get("input_tokens"), usage.get("output_tokens"), details.get("cache_read")
    )
