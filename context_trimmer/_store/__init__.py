"""The store: everything context-trimmer keeps in SQL (SQLite or PostgreSQL).

- ``db``: the engine holder, bounded waits (``deadlines``), the request path's
  driver-cursor statements (``fastsql``), the SQLite lane thread (``lane``), the schema
  (``schema``) and its Alembic migrations run in process (``migrate``).
- ``history``: the append-only, content-addressed messages and their token counts;
  ``recall_index``: their full-text index.
- ``summaries``: stored summaries and summarizer failures; ``leases``: at most one
  worker per piece of work.
- ``ledger``: one row per prepared request and the usage the API reported;
  ``prompt_cache``: OpenAI's prompt cache replayed over it.
- ``ratelimit``: rate-limit budgets and per-user quotas shared through SQL;
  ``keys``: gateway API keys.
- ``ownership``: which tenant created each upstream object (files, stored responses...);
  ``tenants``: how a tenant and its end users are named; ``sessions``: the heads of
  Agents SDK sessions.
- ``outage``: a store known to be down fails at once while one probe pays the waits.
- ``erasure`` and ``export``: a user's (or a tenant's) data out of the store, or gone.

May import: ``_text`` and the top-level basics. Never the trimming policy, the client,
the gateway or the CLI: the store knows rows, not why they are written.
"""
