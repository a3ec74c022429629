"""Optional integrations with agent frameworks, each behind its own extra:
``langchain`` (``pip install '.[langchain]'``) and ``litellm`` (``'.[litellm]'``).
The OpenAI Agents SDK needs none: hand it a wrapped client (see the README)."""
