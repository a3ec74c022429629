"""Trimming: what to send instead of the whole history.

- ``window``: which messages go out verbatim (tool calls never split from results).
- ``hashing``: the chain cache (what a conversation's last list hashed to);
  ``path``: one call's view of its stored conversation.
- ``plan``: the request to send, as pure functions; ``recall``: the earlier turns the
  newest question needs; ``recording``: the ledger row of a prepared request.
- ``folding``: the rolling summary, with ``summarizers`` (the LLM one, via
  ``chat_model``), ``extractive`` (local), the ``breaker`` and the ``background``
  thread; ``queue``: folds deferred as procrastinate jobs.
- ``system_prompt``: system and developer messages compressed once per prompt.

May import: ``_store``, ``_text`` and the top-level basics.
"""
