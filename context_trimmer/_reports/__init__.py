"""The savings report: exact figures from the ledger, the API's usage and prices.

- ``report``: the figures per day, model, conversation, user or upstream, summed by
  the database (``sums``), with each request's prompt-cache figures computed once and
  stored (``cache_figures``);
- ``formats``: the terminal table and the machine formats (JSON, JSONL, CSV);
- ``html``: one self-contained HTML page with inline SVG charts.

May import: ``_store``, ``_text`` and the top-level basics.
"""
