"""The OpenAI Agents SDK with context-trimmer: a session stored and trimmed by the trimmer.

    pip install '.[agents]'           # from the checkout
    OPENAI_API_KEY=... python examples/agents_sdk.py

``chat()`` keeps the agent's memory in a :class:`TrimmerSession`: every item goes to the
store, and each run reads back the summary of the older turns, the stored turns that
match the new question (the ``session_input_callback``), and the newest turns.
``ask()`` is the other way in: hand the agent's model a wrapped client and pass the
whole history as input; each request is stored, summarized and windowed on its way out.

Tracing: the SDK exports traces to api.openai.com with ``OPENAI_API_KEY``. When
``OPENAI_BASE_URL`` points elsewhere (a gateway, another provider, a local server) that
is the wrong place for the key and each export waits on a host it may not reach, so
:func:`tracing_for` turns tracing off there. Settings: CONTEXT_TRIMMER_DB (default: the
local SQLite file), OPENAI_BASE_URL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, set_tracing_disabled

from context_trimmer import Trimmer
from context_trimmer.integrations.agents import TrimmerSession

OPENAI_API_HOST = "api.openai.com"


def tracing_for(client: openai.AsyncOpenAI) -> None:
    """Keep the SDK's tracing only when the model is OpenAI's own API."""
    if client.base_url.host != OPENAI_API_HOST:
        set_tracing_disabled(True)


def planner(client: openai.AsyncOpenAI) -> Agent[Any]:
    tracing_for(client)
    model = OpenAIResponsesModel(model="gpt-4o", openai_client=client)
    return Agent(name="planner", instructions="You plan food trips.", model=model)


async def chat(trimmer: Trimmer, session_id: str, question: str) -> str:
    """One turn of the conversation ``session_id``; returns the answer."""
    session = TrimmerSession(session_id, trimmer)
    recall = RunConfig(session_input_callback=session.recall)
    async with openai.AsyncOpenAI() as client:
        result = await Runner.run(planner(client), question, session=session, run_config=recall)
    return str(result.final_output)


async def ask(trimmer: Trimmer, history: list[Any], question: str, conversation: str) -> str:
    """One agent run over ``history`` (Responses input items) through a wrapped client."""
    async with trimmer.wrap(openai.AsyncOpenAI()) as client:
        with trimmer.conversation(conversation):
            result = await Runner.run(
                planner(client), input=[*history, {"role": "user", "content": question}]
            )
    return str(result.final_output)


if __name__ == "__main__":
    with Trimmer() as trimmer:
        print(asyncio.run(chat(trimmer, "trip-1", "Where should I eat in Lisbon tonight?")))
