"""Work that drives a whole :class:`~context_trimmer.Trimmer`: the fold worker of the
task queue (``worker``), compaction through OpenAI's Batch API (``batch``), and replays
of logged conversations (``replay``).

May import: the facade (``_trimmer``) and everything below it. Used by the CLI.
"""
