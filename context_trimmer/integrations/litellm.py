"""The LiteLLM proxy: ``TrimmerHook(trimmer)`` as one of its ``callbacks``.

Its ``async_pre_call_hook`` prepares ``data["messages"]`` with the Trimmer (summary,
recent turns, compressed system prompt) and sets ``max_tokens`` (or
``max_completion_tokens``, as the model takes) by the Trimmer's policy; its
``async_log_success_event`` records the usage the provider reported. The conversation
is ``metadata["conversation_id"]`` when the request carries one; the user is the
request's ``user``, else the proxy key's ``user_id``. Install with
``pip install '.[litellm]'`` from the checkout.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from .._prepared import Prepared
from .._trimmer import Trimmer

__all__ = ["TrimmerHook"]

REQUEST_KEY = "context_trimmer_request_id"
_CHAT_CALLS = frozenset({"completion", "acompletion"})
_PENDING_LIMIT = 10_000  # requests prepared whose outcome has not been logged yet


class TrimmerHook(CustomLogger):
    """A LiteLLM callback that trims each chat completion before the proxy sends it.

    ``model``: the model name to count tokens and cap replies for (default: the
    request's, without its provider prefix, ``openai/gpt-4o`` -> ``gpt-4o``).
    """

    def __init__(self, trimmer: Trimmer, *, model: str | None = None):
        super().__init__()
        self.trimmer = trimmer
        self.model = model
        self._pending: OrderedDict[str, Prepared] = OrderedDict()

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        if call_type not in _CHAT_CALLS or not data.get("messages"):
            return data
        metadata = data.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        max_tokens = data.pop("max_completion_tokens", None) or data.pop("max_tokens", None)
        prepared = await self.trimmer.aprepare(
            data["messages"],
            model=self.model or str(data.get("model", "gpt-4o")).split("/")[-1],
            conversation_id=metadata.get("conversation_id"),
            user=data.get("user") or getattr(user_api_key_dict, "user_id", None),
            tools=data.get("tools"),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        )
        data["messages"] = prepared.messages
        data[prepared.max_tokens_param] = prepared.max_tokens
        data["metadata"] = {**metadata, REQUEST_KEY: str(prepared.request_id)}
        self._remember(prepared)
        return data

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        prepared = self._pending.pop(_request_id(kwargs), None)
        if prepared is not None:
            await self.trimmer.arecord(prepared, response_obj)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._pending.pop(_request_id(kwargs), None)

    def _remember(self, prepared: Prepared) -> None:
        self._pending[str(prepared.request_id)] = prepared
        while len(self._pending) > _PENDING_LIMIT:
            self._pending.popitem(last=False)


def _request_id(kwargs: dict[str, Any]) -> str:
    """The id the pre-call hook put in the request's metadata ("" when absent)."""
    params = kwargs.get("litellm_params") or {}
    for source in (params.get("metadata"), kwargs.get("metadata")):
        if isinstance(source, dict) and REQUEST_KEY in source:
            return str(source[REQUEST_KEY])
    return ""
