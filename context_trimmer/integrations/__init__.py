"""Optional integrations with agent frameworks, each behind its own extra:
``langchain`` (``pip install '.[langchain]'``), ``litellm`` (``'.[litellm]'``) and
``agents`` (``'.[agents]'``): an OpenAI Agents SDK session stored and trimmed by the
trimmer (``docs/agents.md``); the SDK also works with a wrapped client alone."""
