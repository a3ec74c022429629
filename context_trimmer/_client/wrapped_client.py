"""``trimmer.wrap(client)``: the client, of its own class, with every chat completion
and Responses call made lighter.

The wrapped client is an instance of a subclass of the client's own class (made once
per class), so ``isinstance(w, openai.OpenAI)`` holds, type checkers see an ``OpenAI``,
and every resource is the SDK's own. The subclass overrides one method, the client's
``post``: every way of calling the model ends there with the JSON body the SDK built
(``chat.completions.create`` / ``parse`` / ``stream``, their ``with_raw_response`` and
``with_streaming_response`` forms, ``responses.create`` / ``parse`` / ``stream``, and
libraries handed ``w.chat.completions``). A POST to ``/chat/completions`` or
``/responses`` goes through the trimmer's send path (:mod:`._wrap`), which sends with
the SDK's own ``post`` (retries off: the trimmer retries); anything else is untouched.
``copy`` / ``with_options`` return wrapped copies sharing the same trimmer.

``trimmer.wrap(client_a, client_b, ...)`` makes a pool (:mod:`._upstreams`): the wrapped
client is a copy of the first, the others ride along as plain copies of their own
classes, and each trimmed call may go to any of them. ``with_options`` gives them the
same ``timeout``, ``max_retries`` and headers (never another URL or key).

A Responses call that uses server-side state (``previous_response_id``,
``conversation``) or items the conversion does not know passes through untouched, with
one log line per reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import openai

from .._exceptions import ConfigurationError
from .calls import RAW_HEADER, RELAY, Call, chat_call, responses_call, split_headers
from .direct_post import direct_sender
from .upstreams import Client, CoolDown, Pool, Upstream, members
from .wrap import Sender, Target, run_async, run_sync

log = logging.getLogger("context_trimmer")
_SHARED_OPTIONS = ("timeout", "max_retries", "default_headers", "set_default_headers")
_CALLS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any] | None], Call | str]] = {
    "/chat/completions": chat_call,
    "/responses": responses_call,
}
_classes: dict[type, type] = {}
_logged: set[str] = set()


def pool_of(given: Sequence[Any], cooldown: CoolDown | None = None) -> tuple[Pool, list[Any]]:
    """The pool of ``given`` clients (bare or as :class:`Upstream`) and the clients, in
    order; all sync or all async (checked here: the type checker sees one ``Client``)."""
    upstreams = [item if isinstance(item, Upstream) else Upstream(item) for item in given]
    clients = [upstream.client for upstream in upstreams]
    for client in clients:
        if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
            raise ConfigurationError(
                f"wrap() takes openai.OpenAI or openai.AsyncOpenAI clients, "
                f"got {type(client).__name__}"
            )
    if len({isinstance(client, openai.AsyncOpenAI) for client in clients}) > 1:
        raise ConfigurationError(
            "wrap() takes clients of one kind: all openai.OpenAI (or AzureOpenAI), or all "
            "openai.AsyncOpenAI (or AsyncAzureOpenAI)"
        )
    specs = [(u.name, str(u.client.base_url), u.models, u.limits) for u in upstreams]
    return Pool(members(specs), cooldown), clients


def wrap_client(client: Client, sender: Sender, others: Sequence[Any] = ()) -> Client:
    """A copy of ``client`` (same options, same HTTP connection pool) whose chat
    completions and Responses calls go through ``sender``, to it or to one of
    ``others`` (the rest of ``sender``'s pool, in order)."""
    wrapped = client.copy()
    wrapped.__class__ = trimmed_class(type(client))
    setattr(wrapped, "_context_trimmer", sender)  # noqa: B010 (not an attribute of the SDK's type)
    setattr(wrapped, "_context_trimmer_others", tuple(_plain(c) for c in others))  # noqa: B010
    return wrapped


def _plain(client: Any, **options: Any) -> Any:
    """A copy of ``client`` of its SDK class (never trimmed twice)."""
    copied = client.copy(**options)
    copied.__class__ = getattr(type(client), "_context_trimmer_base", type(client))
    return copied


def trimmed_class(base: type) -> type:
    """The subclass of ``base`` whose POSTs to the model go through the trimmer."""
    base = getattr(base, "_context_trimmer_base", base)
    cls = _classes.get(base)
    if cls is None:
        make = _async_methods if issubclass(base, openai.AsyncOpenAI) else _sync_methods
        namespace = {
            **make(base),
            "_context_trimmer_base": base,
            "__module__": __name__,
            "__doc__": f"{base.__name__}, with chat completions and responses trimmed.",
        }
        cls = _classes[base] = type(f"Trimmed{base.__name__}", (base,), namespace)
    return cls


def _sync_methods(base: Any) -> dict[str, Any]:
    def post(self: Any, path: str, **kwargs: Any) -> Any:
        call = _call_of(self, path, kwargs)
        if call is None:
            return base.post(self, path, **_without_ours(kwargs))
        return run_sync(self._context_trimmer, call, _targets(self, base, path, kwargs))

    return {"post": post, **_copy_methods(base)}


def _async_methods(base: Any) -> dict[str, Any]:
    async def post(self: Any, path: str, **kwargs: Any) -> Any:
        call = _call_of(self, path, kwargs)
        if call is None:
            return await base.post(self, path, **_without_ours(kwargs))
        return await run_async(self._context_trimmer, call, _targets(self, base, path, kwargs))

    return {"post": post, **_copy_methods(base)}


def _copy_methods(base: Any) -> dict[str, Any]:
    def copy(self: Any, **kwargs: Any) -> Any:
        copied = base.copy(self, **kwargs)  # an instance of type(self): the SDK copies so
        copied._context_trimmer = getattr(self, "_context_trimmer", None)
        shared = {name: value for name, value in kwargs.items() if name in _SHARED_OPTIONS}
        others = getattr(self, "_context_trimmer_others", ())
        copied._context_trimmer_others = tuple(_plain(c, **shared) for c in others)
        return copied

    copy.__doc__ = base.copy.__doc__
    return {"copy": copy, "with_options": copy}


def _call_of(client: Any, path: str, kwargs: Mapping[str, Any]) -> Call | None:
    """The call to trim, or None when this POST passes through."""
    make = _CALLS.get(path)
    body = kwargs.get("body")
    if make is None or not isinstance(body, Mapping) or kwargs.get("files"):
        return None
    if getattr(client, "_context_trimmer", None) is None:
        return None
    options = kwargs.get("options") or {}
    headers = options.get("headers")
    call = make(body, headers)
    extra = options.get("extra_json")  # extra_body=: sent too, so it may forbid trimming
    if not isinstance(call, str) and isinstance(extra, Mapping) and extra:
        merged = make({**body, **extra}, headers)
        call = merged if isinstance(merged, str) else call
    if isinstance(call, str):
        _log_once(f"context-trimmer: POST {path} passes through untrimmed: {call}")
        return None
    return call


def _targets(client: Any, base: Any, path: str, kwargs: Mapping[str, Any]) -> list[Target]:
    """Where this call may go: the wrapped client, then the rest of its pool."""
    others = getattr(client, "_context_trimmer_others", ())
    return [_target(client, base, path, kwargs)] + [
        _target(other, type(other), path, kwargs) for other in others
    ]


def _target(client: Any, base: Any, path: str, kwargs: Mapping[str, Any]) -> Target:
    options = dict(kwargs.get("options") or {})
    relay = (options.get("headers") or {}).get(RAW_HEADER) == RELAY
    direct = direct_sender(client, path) if relay and set(options) <= {"headers"} else None
    if direct is not None:  # the gateway: its JSON as it came, its answer as bytes
        return Target(str(client.base_url), str(client.api_key), client.max_retries, direct)

    def send(body: dict[str, Any], headers: dict[str, Any]) -> Any:
        once = {**options, "headers": headers, "max_retries": 0}
        return base.post(client, path, **{**kwargs, "body": body, "options": once})

    return Target(str(client.base_url), str(client.api_key), client.max_retries, send)


def _without_ours(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A passthrough's arguments, less the conversation and user headers."""
    options = kwargs.get("options")
    if not options or not options.get("headers"):
        return kwargs
    forward, ours = split_headers(options["headers"])
    if "x-stainless-raw-response" in ours:
        forward["X-Stainless-Raw-Response"] = ours["x-stainless-raw-response"]
    return {**kwargs, "options": {**options, "headers": forward}}


def _log_once(line: str) -> None:
    if line not in _logged:
        _logged.add(line)
        log.warning(line)
