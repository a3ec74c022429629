"""``context-trimmer serve``: an OpenAI-compatible gateway with trimming built in.

Any app, in any language, gets the savings by changing its base URL. Each
``POST /v1/chat/completions`` (JSON or SSE) is authenticated with a gateway key,
prepared (summary, window, system prompt, max_tokens), governed (rate-limit budget,
quotas, fallback) and forwarded to the upstream with the upstream key, which never
leaves the gateway. ``GET /v1/models`` is passed through, ``GET /healthz`` answers,
``GET /v1/savings`` (admin keys) returns the savings report.

Identity: the key's user is the tenant. ``X-User-Id`` (or the request's ``user``) names
an end user within it (stored as ``tenant:end-user``, the tenant's ``\\`` and ``:``
escaped so that no tenant can name another's end users); ``X-Conversation-Id`` names the
conversation, else it is inferred from the messages. Conversations are
content-addressed per user, so no tenant can reach another's history.

Configuration: a :class:`GatewayConfig` (in ``gateway._config``). Summaries and
prompt rewrites go to the upstream, with the upstream key, unless the operator names
another endpoint; nothing is sent to a host the operator did not configure.

Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``, upstream
errors keep their status, bad requests are 4xx (refused before anything is stored), a
store outage is a 503 with ``Retry-After`` (or, with ``on_store_error="passthrough"``,
the request goes upstream untrimmed); see ``gateway._guard``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._reports.report import GROUPS
from .._store.keys import KeyInfo
from .._store.ratelimit import UserQuota
from .._trimmer import Trimmer
from .._trimming.summarizers import OpenAISummarizer
from .._trimming.system_prompt import Mode, PromptRewriter
from ._config import (
    CONFIG_ENV,
    Endpoints,
    GatewayConfig,
    endpoints,
    public_url,
)
from ._guard import (
    EXCEPTION_HANDLERS,
    KeyCache,
    StoreHealth,
    check_chat_body,
    check_reply_caps,
    error_response,
    identity,
    read_json_body,
)
from ._headers import RefuseControlCharacters
from ._metrics import Metrics, Observe, note
from ._passthrough import Passthrough
from ._routes import (
    api_routes,
    model_call_error,
    relay_to_upstream,
    unauthorized,
)
from ._upstreams import pool_clients

__all__ = ["GatewayConfig", "app_from_env", "create_app", "error_response"]

log = logging.getLogger("context_trimmer.gateway")


def app_from_env() -> Starlette:
    """The app configured by ``$CONTEXT_TRIMMER_GATEWAY_CONFIG`` (a
    :meth:`GatewayConfig.to_json` object, as ``serve --workers N`` hands it to its
    workers), else the defaults; for ``uvicorn --factory``."""
    text = os.environ.get(CONFIG_ENV)
    return create_app(GatewayConfig.from_json(text) if text else GatewayConfig())


def create_app(
    config: GatewayConfig | None = None, *, environ: Mapping[str, str] | None = None
) -> Starlette:
    """The ASGI app (run it with uvicorn, or ``context-trimmer serve``). The keys are
    read from ``environ`` (default: ``os.environ``), in the variables ``config`` names."""
    config = config or GatewayConfig()
    ends = endpoints(config, os.environ if environ is None else environ)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        trimmer = _trimmer(config, ends)
        pool = pool_clients(ends.upstreams)  # one client per upstream, wrapped together
        upstream = pool[0].client
        quota = None
        if config.user_tokens_per_minute or config.user_tokens_per_day:
            quota = UserQuota(config.user_tokens_per_minute, config.user_tokens_per_day)
        app.state.trimmer = trimmer
        app.state.upstream = upstream
        app.state.client = trimmer.wrap(
            *pool, fallback_model=config.fallback_model, user_quota=quota
        )
        app.state.config = config
        app.state.keys = KeyCache(trimmer.keys.authenticate, config.key_cache_seconds)
        app.state.health = StoreHealth(trimmer.schema_revision)
        app.state.metrics = metrics
        app.state.passthrough = Passthrough(
            ends.upstream_url,
            ends.upstream_key,
            trimmer.objects,
            enabled=config.passthrough == "on",
        )
        if ends.calls_a_model or config.system_prompt == "llm":
            await _check_summary_endpoint(ends)
        yield
        await app.state.passthrough.aclose()
        for member in pool:
            await member.client.close()
        trimmer.close()

    metrics = Metrics()
    return Starlette(
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/savings", savings, methods=["GET"]),
            *api_routes(_key, metrics_public=config.metrics_public),
        ],
        middleware=[Middleware(Observe, metrics=metrics), Middleware(RefuseControlCharacters)],
    )


def _trimmer(config: GatewayConfig, ends: Endpoints) -> Trimmer:
    """The Trimmer, its model calls (summaries, prompt rewrites) bound to the endpoint and
    key in ``ends``: never the openai client's own defaults."""
    url, key = ends.summary_url, ends.summary_key
    summarizer: str | OpenAISummarizer = "extractive"
    if ends.calls_a_model:
        summarizer = OpenAISummarizer(config.summary_model, base_url=url, api_key=key)
    rewriter = None
    if config.system_prompt == "llm":
        rewriter = PromptRewriter(config.summary_model, base_url=url, api_key=key)
    return Trimmer(
        config.db_url,
        keep_last=config.keep_last,
        fold_every=config.fold_every,
        summarizer=summarizer,
        summary_tokens=config.summary_tokens,
        summary_share=config.summary_share,
        recall_tokens=config.recall_tokens,
        recall_share=config.recall_share,
        max_tokens=config.max_tokens,
        system_prompt=cast(Mode, config.system_prompt),
        prompt_rewriter=rewriter,
        on_store_error=config.on_store_error,
        folds=config.folds,
    )


async def _check_summary_endpoint(ends: Endpoints) -> None:
    """Log once, at start-up, when the endpoint for summaries cannot be reached or
    refuses its key (each failed fold is recorded in the ledger, not logged again here)."""
    probe = openai.AsyncOpenAI(
        base_url=ends.summary_url, api_key=ends.summary_key, timeout=5.0, max_retries=0
    )
    where = public_url(ends.summary_url)
    try:
        await probe.models.list()
    except openai.APIConnectionError as error:
        log.warning(
            "the endpoint for summaries, %s, cannot be reached (%s): summaries will fail "
            "until it answers",
            where,
            error,
        )
    except openai.AuthenticationError:
        log.warning(
            "the endpoint for summaries, %s, refused the key in $%s", where, ends.summary_key_env
        )
    except openai.APIStatusError:
        pass  # it answered: reachable, even if it has no /models
    finally:
        await probe.close()


async def healthz(request: Request) -> Response:
    """200 when the store answers, else 503 naming it; the summarizer's breaker and the
    upstreams cooling down either way."""
    trimmer: Trimmer = request.app.state.trimmer
    store = await request.app.state.health.check()
    body: dict[str, Any] = {
        "status": "ok" if store.ok else "unavailable",
        "schema": store.revision,
        "store": "ok" if store.ok else "unavailable",
        "failing": [] if store.ok else ["store"],
        "summarizer": trimmer.summarizer_status(),
        "passthrough_requests": trimmer.passthrough_requests,
    }
    sender = getattr(request.app.state.client, "_context_trimmer", None)
    if sender is not None:  # the upstreams, and those skipped for a cool-down now
        pool = sender.pool
        body["upstreams"] = [member.label for member in pool.members]
        body["upstreams_cooling"] = pool.cooling()
    return JSONResponse(body, status_code=200 if store.ok else 503)


async def _key(request: Request) -> KeyInfo | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    keys: KeyCache = request.app.state.keys
    return await keys.lookup(token.strip())


async def models(request: Request) -> Response:
    if await _key(request) is None:
        return unauthorized()
    try:
        raw = await request.app.state.upstream.models.with_raw_response.list()
    except openai.APIError as error:
        return model_call_error(error, "messages")
    return Response(raw.content, status_code=raw.status_code, media_type="application/json")


async def savings(request: Request) -> Response:
    key = await _key(request)
    if key is None:
        return unauthorized()
    if not key.admin:
        return error_response(
            403,
            "the savings report needs an admin key "
            "(context-trimmer keys create --user NAME --admin)",
            kind="permission_error",
        )
    group_by = request.query_params.get("group_by")
    if group_by is not None and group_by not in GROUPS:
        return error_response(400, f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
    report = await asyncio.to_thread(request.app.state.trimmer.report, group_by=group_by)
    return JSONResponse(report.as_dict())


async def chat_completions(request: Request) -> Response:
    key = await _key(request)
    if key is None:
        return unauthorized()
    body = await read_json_body(request, request.app.state.config.max_body_bytes)
    if isinstance(body, Response):
        return body
    refused = check_chat_body(body) or check_reply_caps(request, body)
    if refused is not None:
        return refused
    who = identity(request, key.user, body)
    if isinstance(who, Response):
        return who
    conversation, user = who
    note(request, model=body.get("model"), user=key.user)
    return await relay_to_upstream(
        request,
        "/chat/completions",
        body,
        (conversation, user),
        (ChatCompletion, openai.AsyncStream[ChatCompletionChunk]),
        "messages",
    )
