"""The OpenAI Agents SDK with context-trimmer: hand the agent's model a wrapped client.

    pip install '.[agents]'           # from the checkout
    OPENAI_API_KEY=... python examples/agents_sdk.py

Both of the SDK's models work: OpenAIResponsesModel (its default) and
OpenAIChatCompletionsModel. Each run's history is stored, summarized and windowed, and
max_tokens / max_output_tokens are set by the trimmer. Settings: CONTEXT_TRIMMER_DB
(default: the local SQLite file), OPENAI_BASE_URL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
from agents import Agent, OpenAIResponsesModel, Runner

from context_trimmer import Trimmer


async def ask(trimmer: Trimmer, history: list[Any], question: str, conversation: str) -> str:
    """One agent run over ``history`` (Responses input items); returns the answer."""
    async with trimmer.wrap(openai.AsyncOpenAI()) as client:
        agent = Agent(
            name="planner",
            instructions="You plan food trips.",
            model=OpenAIResponsesModel(model="gpt-4o", openai_client=client),
        )
        with trimmer.conversation(conversation):
            result = await Runner.run(
                agent, input=[*history, {"role": "user", "content": question}]
            )
    return str(result.final_output)


if __name__ == "__main__":
    with Trimmer() as trimmer:
        print(asyncio.run(ask(trimmer, [], "Where should I eat in Lisbon tonight?", "trip-1")))
