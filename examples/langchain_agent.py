"""A LangChain 1.x agent whose every model call goes through context-trimmer.

    pip install '.[langchain]'        # from the checkout
    OPENAI_API_KEY=... python examples/langchain_agent.py

The agent's thread id is the conversation id: each turn the model sees the system
prompt, the rolling summary and the recent turns, with max_tokens set by the trimmer.
Settings: CONTEXT_TRIMMER_DB (default: the local SQLite file), OPENAI_BASE_URL.
"""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from context_trimmer import Trimmer
from context_trimmer.integrations.langchain import TrimmerMiddleware


@tool
def opening_hours(place: str) -> str:
    """When a restaurant is open."""
    return f"{place} is open 12:00-15:00 and 19:00-23:00."


def ask(trimmer: Trimmer, history: list[Any], question: str, thread: str) -> str:
    """One agent turn over ``history``; returns the answer."""
    agent = create_agent(
        ChatOpenAI(model="gpt-4o"),
        tools=[opening_hours],
        system_prompt="You plan food trips.",
        middleware=[TrimmerMiddleware(trimmer)],
    )
    result = agent.invoke(
        {"messages": [*history, ("user", question)]},
        config={"configurable": {"thread_id": thread}},
    )
    return str(result["messages"][-1].content)


if __name__ == "__main__":
    with Trimmer() as trimmer:
        print(ask(trimmer, [], "Where should I eat in Lisbon tonight?", thread="trip-1"))
