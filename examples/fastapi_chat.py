"""A FastAPI chat endpoint that sends every request through context-trimmer.

The app's clients post the whole conversation each turn; the trimmer stores it,
sends the summary + recent turns with a tight max_tokens, keeps the shared rate-limit
budget and per-user quotas, and records the savings.

    pip install context-trimmer fastapi uvicorn
    OPENAI_API_KEY=... uvicorn examples.fastapi_chat:app

    curl -N localhost:8000/chat -H 'content-type: application/json' \\
        -d '{"conversation_id": "c1", "user": "ann", "stream": true,
             "messages": [{"role": "user", "content": "Hello!"}]}'

Settings come from the environment: CONTEXT_TRIMMER_DB (default: the local SQLite
file), OPENAI_API_KEY and OPENAI_BASE_URL, CHAT_MODEL (default gpt-4o).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import openai
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from context_trimmer import QuotaExceeded, RateLimitBudgetExceeded, Trimmer, TrimmerError, UserQuota


class ChatRequest(BaseModel):
    messages: list[dict[str, Any]]
    conversation_id: str | None = None
    user: str | None = None
    stream: bool = False


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    trimmer = Trimmer(keep_last=20)
    client = openai.AsyncOpenAI()
    app.state.trimmer = trimmer
    app.state.client = trimmer.wrap(
        client, fallback_model="gpt-4o-mini", user_quota=UserQuota(tokens_per_day=200_000)
    )
    yield
    await client.close()
    trimmer.close()


app = FastAPI(lifespan=lifespan)


def wrapped_client(request: Request) -> Any:
    return request.app.state.client


Client = Annotated[Any, Depends(wrapped_client)]


@app.post("/chat")
async def chat(body: ChatRequest, client: Client, request: Request) -> Any:
    trimmer: Trimmer = request.app.state.trimmer
    model = os.environ.get("CHAT_MODEL", "gpt-4o")
    try:
        with trimmer.conversation(body.conversation_id, user=body.user):
            if not body.stream:
                response = await client.chat.completions.create(model=model, messages=body.messages)
                return {"reply": response.choices[0].message.content, "model": response.model}
            stream = await client.chat.completions.create(
                model=model,
                messages=body.messages,
                stream=True,
                stream_options={"include_usage": True},
            )
    except QuotaExceeded as error:
        headers = {"retry-after": str(int(error.retry_after))}
        raise HTTPException(429, str(error), headers) from error
    except RateLimitBudgetExceeded as error:
        raise HTTPException(503, str(error)) from error
    except TrimmerError as error:
        raise HTTPException(400, str(error)) from error
    return StreamingResponse(_sse(stream), media_type="text/event-stream")


async def _sse(stream: Any) -> AsyncIterator[str]:
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                yield f"data: {json.dumps({'delta': choice.delta.content})}\n\n"
    yield "data: [DONE]\n\n"


@app.get("/savings")
async def savings(request: Request) -> dict[str, Any]:
    return request.app.state.trimmer.report(group_by="user").as_dict()
